"""How the service's own commands (`foresight bench`, `kms rewrap`, `audit`, `snapshot`) refuse: the reason as one
`error:` line on stderr and, under `--json`, the `{"error", "exit_code"}` object on stdout that every command's
`--json` prints (onboarding's do too, with redaction and Rich: onboarding/output.py), so a script reads one shape."""

from __future__ import annotations

import json

import typer

EXIT_USAGE = 2


def fail(message: str, as_json: bool, code: int = EXIT_USAGE) -> typer.Exit:
    """The exit to raise, once the refusal is said."""
    if as_json:
        typer.echo(json.dumps({"error": message, "exit_code": code}))
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)
