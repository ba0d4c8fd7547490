"""`foresight kms rewrap`: move every envelope on disk onto the KMS key's current version, so old versions can be
retired.

A KMS key rotation leaves what is already on disk wrapped under the old version, and retiring that version
(transit's `min_decryption_version`, a disabled Cloud KMS or Key Vault version) makes it unreadable: the snapshot
waits unrestored (the service starts cold), checkpoints stop loading, audit archives stop verifying. A rewrap
replaces only each envelope's header (its data key, re-wrapped by the KMS); the encrypted body is copied byte for
byte.

The service must be stopped: it rewrites the snapshot when it stops and deletes old checkpoints, and a rewrap racing
either would put back a stale file. The service holds its audit log's writer lock while it runs, so this command
refuses while that lock is held, and holds it itself until done (a service started meanwhile refuses to start).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from service.cli_failure import fail
from service.offline import Refused, failure_reason, offline_envelope_cipher, offline_settings, service_stopped

if TYPE_CHECKING:
    from service.config import Settings
    from service.security.envelope import EnvelopeCipher

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

EXIT_FAILED = 1  # some file could not be rewrapped (each is left as it was)
EXIT_REFUSED = 2  # bad settings, no KMS, nothing to search, or the service is running

Outcome = Literal["rewrapped", "would-rewrap", "current", "failed"]


@dataclass(frozen=True, slots=True)
class FileResult:
    path: str
    outcome: Outcome
    reason: str | None = None


@app.callback()
def kms() -> None:
    """Maintain what the KMS wrapped: re-wrap data keys after a key rotation."""


@app.command()
def rewrap(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            exists=True,
            help="More files or directories to rewrap besides the service's data dir and audit log directory "
            "(a marketplace node's /etc/foresight/conf, which holds ca.key.enc).",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="The service's settings file (the one `foresight serve` uses)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Ask the KMS which files need it, but write nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Re-wrap every envelope's data key under the KMS key's current version.

    Retire an old KMS key version in this order:

      1. rotate the key (the service wraps new data keys with the new version);

      2. stop the service and run `foresight kms rewrap` until it exits 0;

      3. only then retire the old version (transit: min_decryption_version;
         Cloud KMS, Key Vault: disable it). With FORESIGHT_AUDIT_SHIP_URL
         set, the audit archives already shipped stay under the old version
         (this rewraps only the machine's files): keep it until their
         retention has ended.

    Anything still wrapped under a retired version no longer opens: the
    snapshot is not restored (the service starts cold), checkpoints are
    dropped, audit archives fail verification.

    Only each file's header changes; the encrypted data is copied byte for
    byte. The command uses the service's settings (FORESIGHT_* or --config):
    its KMS, its data dir (snapshot, model checkpoints) and its audit log's
    directory (encrypted archives). It refuses while the service runs. Each
    file is replaced atomically, keeping its mode and owner; a file that
    fails is left as it was. Progress goes to stderr.

    Exit 0: nothing failed; 1: some file failed (fix the cause and run it
    again: files already moved report "current"); 2: nothing was attempted
    (bad settings, no KMS, the service running).
    """
    try:
        settings = offline_settings(config)
        roots = _roots(settings, paths or [])
        with service_stopped(settings), offline_envelope_cipher(settings) as cipher:
            found = _envelopes(roots, paths or [])
            results = []
            for index, (path, unreadable) in enumerate(found, 1):
                typer.echo(f"rewrap: [{index}/{len(found)}] {path}", err=True)
                results.append(_rewrap_one(cipher, path, unreadable, dry_run))
    except Refused as err:
        raise fail(str(err), as_json, EXIT_REFUSED) from None
    _report(results, roots, dry_run, as_json)
    if settings.audit_ship_url and any(r.outcome in ("rewrapped", "would-rewrap") for r in results):
        typer.echo(f"note: the audit archives already shipped to {settings.audit_ship_url} keep the old key version "
                   "(only this machine's files were rewrapped): retire it only once their retention has ended",
                   err=True)
    raise typer.Exit(EXIT_FAILED if any(r.outcome == "failed" for r in results) else 0)


def _roots(settings: Settings, paths: list[Path]) -> list[Path]:
    """The directories the service writes envelopes to, then the paths given."""
    service_dirs = [d for d in (settings.data_dir, settings.audit_path.parent if settings.audit_path else None) if d]
    if not service_dirs and not paths:
        raise Refused("nothing to search: set the service's FORESIGHT_DATA_DIR (or pass --config), or name paths")
    return list(dict.fromkeys([*service_dirs, *paths]))


def _envelopes(roots: list[Path], explicit: list[Path]) -> list[tuple[Path, str | None]]:
    """Every envelope under `roots` (by its first bytes), once each, with a reason where a file cannot be read or a
    file named explicitly is no envelope. Symlinks are not followed; `*.tmp` (an interrupted write) is skipped."""
    from service.security.envelope import MAGIC

    seen: set[Path] = set()
    found: list[tuple[Path, str | None]] = []
    for root in roots:
        for path in _files(root):
            if path.name.endswith(".tmp") or path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                with path.open("rb") as file:
                    head = file.read(len(MAGIC))
            except OSError as err:
                found.append((path, f"cannot read it: {err.strerror}"))
                continue
            if head == MAGIC:
                found.append((path, None))
            elif path in explicit:
                found.append((path, "not a Foresight envelope"))
    return found


def _files(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        if root.is_file() and not root.is_symlink():
            yield root
        return
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                yield path


def _rewrap_one(cipher: EnvelopeCipher, path: Path, unreadable: str | None, dry_run: bool) -> FileResult:
    if unreadable is not None:
        return FileResult(str(path), "failed", unreadable)
    try:
        moved = cipher.rewrap_file(path, dry_run=dry_run)
    except Exception as err:  # report the file and go on
        return FileResult(str(path), "failed", failure_reason(err))
    if not moved:
        return FileResult(str(path), "current")
    return FileResult(str(path), "would-rewrap" if dry_run else "rewrapped")


def _report(results: list[FileResult], roots: list[Path], dry_run: bool, as_json: bool) -> None:
    counts = {outcome: sum(r.outcome == outcome for r in results)
              for outcome in ("rewrapped", "would-rewrap", "current", "failed")}
    if as_json:
        typer.echo(json.dumps({"dry_run": dry_run, "counts": counts, "files": [asdict(r) for r in results]}))
        return
    if not results:
        typer.echo(f"no envelopes found under {', '.join(map(str, roots))}")
        return
    for result in results:
        typer.echo(f"{result.outcome:<12} {result.path}" + (f": {result.reason}" if result.reason else ""))
    moved = f"{counts['would-rewrap']} would be rewrapped" if dry_run else f"{counts['rewrapped']} rewrapped"
    typer.echo(f"{moved}, {counts['current']} already current, {counts['failed']} failed")
