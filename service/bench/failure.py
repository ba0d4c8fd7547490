"""How every `foresight bench` command refuses: exit 2 with the reason on stderr and, under `--json`, the same
`{"error", "exit_code"}` object on stdout that the other commands' `--json` print, so a script reads one shape."""

from __future__ import annotations

import json

import typer

EXIT_USAGE = 2


def fail(message: str, as_json: bool) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    if as_json:
        typer.echo(json.dumps({"error": message, "exit_code": EXIT_USAGE}))
    return typer.Exit(EXIT_USAGE)
