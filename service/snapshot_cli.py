"""`foresight snapshot`: see what the warm-restart snapshot and the files set aside beside it hold, and put entries
set aside back into the snapshot, so the next start restores them with everything else (service/snapshot.py says
when a file is set aside)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.cli_failure import fail
from service.offline import (
    Refused,
    failure_reason,
    offline_envelope_cipher,
    offline_settings,
    service_stopped,
)

if TYPE_CHECKING:
    from service.security.envelope import EnvelopeCipher

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

EXIT_UNREADABLE = 1  # a file did not open (the KMS, tampering): nothing was written
EXIT_REFUSED = 2  # bad settings, the service running, bad arguments: nothing was attempted

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="The service's settings file (the one `foresight serve` uses).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.callback()
def snapshot() -> None:
    """The warm-restart snapshot: what it and the files set aside beside it hold, and merging those back."""


@app.command()
def show(
    files: Annotated[list[Path] | None, typer.Argument(
        exists=True, dir_okay=False, metavar="FILE",
        help="Snapshot files to read (default: every one in the data dir).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each snapshot file's tenants, with their incarnation, entries and bytes.

    By default every snapshot file in the service's data dir: `snapshot.fse`
    (restored at the next start), `snapshot.fse.unrestored-<time>` (one the
    KMS could not open at a start), `snapshot.unclaimed-<time>.fse` (the
    entries of tenants missing from the tenant list at a start). Reading
    needs the service's KMS, not a stopped service.

    Exit 0: every file read; 1: some file did not open; 2: bad settings.
    """
    try:
        settings = offline_settings(config)
        paths = files or _snapshot_files(settings.data_dir)
        with offline_envelope_cipher(settings) as cipher:
            shown = [_describe(path, cipher) for path in paths]
    except Refused as err:
        raise fail(str(err), as_json, EXIT_REFUSED) from None
    if as_json:
        typer.echo(json.dumps({"files": shown}))
    elif not shown:
        typer.echo(f"no snapshot files in {settings.data_dir}")
    for item in [] if as_json else shown:
        typer.echo(f"{item['path']}: " + (f"does not open: {item['error']}" if "error" in item else
                                          f"{len(item['tenants'])} tenants"))
        for tenant in item.get("tenants", []):
            typer.echo(f"  {tenant['name']:<24} incarnation {tenant['incarnation'] or '-':<14} "
                       f"{tenant['entries']:>10,} entries {tenant['bytes']:>14,} bytes")
    raise typer.Exit(EXIT_UNREADABLE if any("error" in item for item in shown) else 0)


@app.command()
def merge(
    source: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, metavar="SOURCE",
        help="The file whose entries to put back: a snapshot.unclaimed-*.fse or a snapshot.fse.unrestored-* "
        "(`foresight snapshot show` lists them).")],
    tenant: Annotated[list[str] | None, typer.Option(
        "--tenant", "-t", metavar="NAME",
        help="Only this tenant's entries (repeatable; default: every tenant in SOURCE).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Put the entries of SOURCE into the snapshot the next start restores.

    A key the snapshot holds keeps its value there (it is the newer); the
    others are added as their tenant's coldest entries, so under a budget the
    start keeps the snapshot's own first. Entries past their deadline, and
    sections of another incarnation than the snapshot's tenant of that name
    (another tenant by now), are left out. A key deleted after SOURCE was
    written comes back: merge a tenant only if that is what you want.

    Unlike renaming SOURCE to snapshot.fse, no other tenant starts cold. The
    snapshot is replaced atomically or not at all, and SOURCE is left as it
    was: delete it once the service has started. The service must be stopped
    (it writes the snapshot when it stops).

    Exit 0: merged (or nothing to add); 1: SOURCE or the snapshot did not
    open (the KMS, tampering); 2: nothing was attempted (bad settings or
    arguments, the service running, a start cut short).
    """
    from service import snapshot as snapshots

    try:
        settings = offline_settings(config)
        if settings.data_dir is None:
            raise Refused("no data dir: set the service's FORESIGHT_DATA_DIR (or pass --config)")
        with service_stopped(settings), offline_envelope_cipher(settings) as cipher:
            try:
                merged = snapshots.merge(settings.data_dir, source, cipher, tenant)
            except snapshots.MergeRefused as err:
                raise Refused(str(err)) from None
    except Refused as err:
        raise fail(str(err), as_json, EXIT_REFUSED) from None
    except Exception as err:  # the KMS or the file: nothing was written
        raise fail(f"nothing merged: {failure_reason(err)}", as_json, EXIT_UNREADABLE) from None
    snapshot_path = settings.data_dir / snapshots.FILENAME
    if as_json:
        typer.echo(json.dumps({"snapshot": str(snapshot_path), "source": str(source), **merged._asdict()}))
        return
    for name in sorted(merged.added):
        typer.echo(f"{name}: {merged.added[name]:,} entries added, {merged.kept[name]:,} already in the snapshot "
                   "(kept its value)")
    for name, why in sorted(merged.skipped.items()):
        typer.echo(f"{name}: skipped: {why}")
    if any(merged.added.values()):
        typer.echo(f"{snapshot_path} now holds them; the next start restores them. {source} is unchanged: delete "
                   "it once the service has started")
    else:
        typer.echo(f"nothing to add: {snapshot_path} unchanged")


def _snapshot_files(data_dir: Path | None) -> list[Path]:
    from service import snapshot as snapshots

    if data_dir is None:
        raise Refused("no data dir: set the service's FORESIGHT_DATA_DIR (or pass --config), or name the files")
    patterns = (snapshots.FILENAME, snapshots.RESTORING, snapshots.UNRESTORED.format("*"),
                snapshots.UNCLAIMED.format("*"))
    return sorted({path for pattern in patterns for path in data_dir.glob(pattern) if path.is_file()})


def _describe(path: Path, cipher: EnvelopeCipher) -> dict[str, Any]:
    from service import snapshot as snapshots

    try:
        sections = snapshots.read(path, cipher)
    except Exception as err:  # the KMS or the file; reported per file
        return {"path": str(path), "error": failure_reason(err)}
    return {"path": str(path), "tenants": [
        {"name": name, "incarnation": section.incarnation, "entries": len(section.entries),
         "bytes": sum(len(key) + len(value) for key, value, _deadline in section.entries)}
        for name, section in sorted(sections.items())]}
