"""`foresight audit`: check and read the hash-chained audit log."""

from __future__ import annotations

import json
import posixpath
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service.cli_failure import fail
from service.security.audit import EncryptedArchive, is_archive, verify_files, write_plaintext
from service.security.envelope import TamperedEnvelope

if TYPE_CHECKING:
    from service.security.envelope import EnvelopeCipher

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

EXIT_TAMPERED = 1
EXIT_BAD_INPUT = 2
EXIT_CANNOT_VERIFY = 3  # an encrypted archive, and no KMS that can decrypt it now (none, down, refusing, retired)
_HASH = re.compile(r"[0-9a-fA-F]{64}")
_KMS_HINT = ("set the service's FORESIGHT_KMS_PROVIDER and FORESIGHT_KMS_KEY_ID (and FORESIGHT_VAULT_* for "
             "vault-transit), or pass its --config")


class _VerifyError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@app.callback()
def audit() -> None:
    """Verify and read the hash-chained audit log."""


@app.command()
def verify(
    files: Annotated[
        list[str],
        typer.Argument(
            help="Audit log files in chain order, oldest first (rotated files, then the live one). A URL "
            "(s3://, gs://, az://, file://) of a folder that FORESIGHT_AUDIT_SHIP_URL filled stands for its files, "
            "in name order (which is time order).",
            show_default=False,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as one JSON object.")] = False,
    head: Annotated[
        str | None,
        typer.Option(help="The head hash recorded elsewhere; catches lines dropped from the end of the log."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="The service's settings file, for the KMS that decrypts archives."),
    ] = None,
) -> None:
    """Exit 0 if every line is intact and in order; exit 1 naming the first bad line and why.

    Rotated files the service archived (audit.<time>.log.fse, envelope-encrypted) are decrypted in memory with
    the service's KMS: its FORESIGHT_KMS_* settings (and FORESIGHT_VAULT_* for vault-transit) from the
    environment or --config. Exit 2: bad input; exit 3: an archive that cannot be decrypted here (no KMS
    configured, the KMS unreachable, overloaded or refusing this caller, or its key version retired) or a URL that
    cannot be read, which says nothing about tampering.
    """
    try:
        if head is not None and not _HASH.fullmatch(head):
            raise _VerifyError(f"--head {head!r}: not a hash (expected 64 hex characters, the `head` that "
                                "`audit verify --json` prints)", EXIT_BAD_INPUT)
        with _local_files(files) as (paths, shown), _archive_cipher(paths, config) as cipher:
            bad_file, verdict = verify_files(paths, expect_head=head.lower() if head else None, cipher=cipher)
            bad_name = shown.get(str(bad_file), str(bad_file)) if bad_file else None
    except _VerifyError as err:
        raise fail(str(err), as_json, err.exit_code) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": verdict.ok,
                    "file": bad_name,
                    "line": verdict.bad_line,
                    "reason": verdict.reason,
                    "lines_verified": verdict.lines,
                    "head": verdict.head,
                    "closed": verdict.closed,
                }
            )
        )
    elif verdict.ok:
        state = "closed" if verdict.closed else "open (live file)"
        typer.echo(f"ok: {verdict.lines} lines verified, {state}, head {verdict.head}")
    else:
        typer.echo(f"tampered: {bad_name}:{verdict.bad_line}: {verdict.reason}", err=True)
    raise typer.Exit(0 if verdict.ok else EXIT_TAMPERED)


@app.command(epilog="Example: foresight audit show /var/lib/foresight/audit.*.log.fse /var/lib/foresight/audit.log "
               "| jq -c 'select(.action == \"auth\" and .outcome == \"failure\")'")
def show(
    files: Annotated[
        list[str],
        typer.Argument(help="Audit log files: rotated, archived (audit.<time>.log.fse) or the live one; or the URL "
                       "of a shipped folder, for its files in name order.", show_default=False),
    ],
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="The service's settings file, for the KMS that decrypts archives."),
    ] = None,
) -> None:
    """Print the lines of audit files in the order given, as JSON lines for jq; archives are decrypted (with the
    service's KMS, as for verify) and decompressed. Nothing is verified here: `audit verify` does that.

    Exit 1: an archive fails authentication (altered; nothing of it is printed); exit 2: bad input; exit 3: an
    archive that cannot be decrypted here.
    """
    out = sys.stdout.buffer
    tampered = None
    try:
        with _local_files(files) as (paths, shown), _archive_cipher(paths, config) as cipher:
            for path in paths:
                try:
                    write_plaintext(path, out, cipher)
                except TamperedEnvelope:
                    tampered = shown.get(str(path), str(path))
                    break
            out.flush()
    except _VerifyError as err:
        raise fail(str(err), False, err.exit_code) from None
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        raise typer.Exit(0) from None
    if tampered is not None:
        typer.echo(f"tampered: {tampered}: encrypted archive fails authentication (altered, or not encrypted with "
                   "the key given)", err=True)
        raise typer.Exit(EXIT_TAMPERED)


@contextmanager
def _local_files(items: list[str]) -> Iterator[tuple[list[Path], dict[str, str]]]:
    """`items` as local files: paths as they are, and URLs (a shipped folder, or one file) copied into a private
    temporary folder first; with each copy's URL by its local path, for messages. Removed on exit."""
    paths: list[Path] = []
    shown: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="foresight-audit-") as scratch:  # mode 0700
        for item in items:
            if "://" not in item:
                path = Path(item)
                if path.is_dir():
                    raise _VerifyError(f"{item}: a folder; give its files oldest first (audit.*.log.fse, then "
                                       f"audit.log), or file://{path.resolve()}/ for a folder the shipper filled",
                                       EXIT_BAD_INPUT)
                if not path.is_file():
                    raise _VerifyError(f"{item}: no such file", EXIT_BAD_INPUT)
                paths.append(path)
                continue
            for remote, local in _fetch(item, Path(scratch) / str(len(paths))):
                shown[str(local)] = remote
                paths.append(local)
        try:
            yield paths, shown
        except _VerifyError as err:  # name what was given, not the temporary copy
            message = str(err)
            for copy, given in shown.items():
                message = message.replace(copy, given)
            raise _VerifyError(message, err.exit_code) from None


def _fetch(url: str, into: Path) -> list[tuple[str, Path]]:
    """Copy the file at `url`, or every file of the folder there in name order, into `into`."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:  # an unknown scheme, or its filesystem package not installed
        raise _VerifyError(f"{url}: {err}", EXIT_BAD_INPUT) from None
    try:
        if fs.isdir(root):
            remote = sorted((p for p in fs.ls(root, detail=False) if fs.isfile(p)), key=posixpath.basename)
        elif fs.isfile(root):
            remote = [root]
        else:
            raise _VerifyError(f"{url}: no such file or folder", EXIT_BAD_INPUT)
        if not remote:
            raise _VerifyError(f"{url}: an empty folder", EXIT_BAD_INPUT)
        into.mkdir()
        copies = []
        for name in remote:
            local = into / posixpath.basename(name)
            fs.get_file(name, str(local))
            copies.append((fs.unstrip_protocol(name), local))
        return copies
    except _VerifyError:
        raise
    except Exception as err:  # no route, no permission: nothing was checked, so nothing is said about tampering
        raise _VerifyError(f"{url} could not be read ({type(err).__name__}: {err}); this says nothing about "
                           "tampering", EXIT_CANNOT_VERIFY) from None


@contextmanager
def _archive_cipher(files: list[Path], config: Path | None) -> Iterator[EnvelopeCipher | None]:
    """The service's cipher where an archive is among `files` and a KMS is configured, else None; the KMS's
    failures (and verify_files' EncryptedArchive) become _VerifyError."""
    from service.bootstrap import check_local_keyring, offline_cipher
    from service.config import ConfigError, load_settings
    from service.security.envelope import EnvelopeError
    from service.security.kms import KmsError

    if not any(is_archive(path) for path in files):
        yield None
        return
    try:
        settings = load_settings(config)
    except ConfigError as err:
        raise _VerifyError(str(err), EXIT_BAD_INPUT) from None
    try:
        check_local_keyring(settings)
    except ConfigError as err:
        raise _VerifyError(str(err), EXIT_CANNOT_VERIFY) from None
    try:
        with offline_cipher(settings) as cipher:
            yield cipher
    except EncryptedArchive as err:
        raise _VerifyError(f"{err}; {_KMS_HINT}", EXIT_CANNOT_VERIFY) from None
    except (ConfigError, KmsError, EnvelopeError) as err:
        raise _VerifyError(f"cannot decrypt the archives: {err}", EXIT_CANNOT_VERIFY) from None
    except BrokenPipeError:  # raised in the caller's body (`show | head`), which handles it: not the KMS's
        raise
    except Exception as err:  # e.g. a KMS SDK's own error: exit 1 would say "tampered", and nothing says it is
        raise _VerifyError(f"verifying the archives could not finish ({type(err).__name__}); this says nothing "
                           "about tampering", EXIT_CANNOT_VERIFY) from None
