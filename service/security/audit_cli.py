"""`foresight audit`: check the hash-chained audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.security.audit import verify_files

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def audit() -> None:
    """Verify the hash-chained audit log."""


@app.command()
def verify(
    files: Annotated[
        list[Path],
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Audit log files in chain order, oldest first (rotated files, then the live one).",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as one JSON object.")] = False,
    head: Annotated[
        str | None,
        typer.Option(help="The head hash recorded elsewhere; catches lines dropped from the end of the log."),
    ] = None,
) -> None:
    """Exit 0 if every line is intact and in order; exit 1 naming the first bad line and why."""
    bad_file, verdict = verify_files(files, expect_head=head)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": verdict.ok,
                    "file": str(bad_file) if bad_file else None,
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
        typer.echo(f"tampered: {bad_file}:{verdict.bad_line}: {verdict.reason}", err=True)
    raise typer.Exit(0 if verdict.ok else 1)
