"""How the onboarding commands talk to people and to scripts.

People get Rich tables and a spinner on stderr; `--json` prints exactly one JSON object on stdout. A failure
is one line on stderr, `error: <what failed>: <why>`, and the exit code of its type (`errors.py`); with
`--json` the same goes to stdout as `{"error": ..., "exit_code": ...}`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import typer
from rich.console import Console

from onboarding.errors import EXIT_FAILURE, OnboardingError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOption = typer.Option("--json", help="Print one JSON object (for scripts) instead of tables.")


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def warn(warnings: list[str]) -> None:
    for line in warnings:
        err.print(f"[yellow]warning:[/] {line}", markup=True)


def progress(message: str, as_json: bool) -> Any:
    """A spinner on stderr for people (nothing for scripts or when stderr is not a terminal)."""
    if as_json or not err.is_terminal:
        return nullcontext()
    return err.status(message)


@contextmanager
def reported(as_json: bool) -> Iterator[None]:
    """Turn failures into one line and an exit code."""
    try:
        yield
    except OnboardingError as failure:
        _fail(str(failure), failure.exit_code, as_json)
    except KeyboardInterrupt:
        _fail("interrupted", 130, as_json)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as unexpected:  # a bug: still one line, the type names it
        _fail(f"unexpected {type(unexpected).__name__}: {unexpected}", EXIT_FAILURE, as_json)


def _fail(message: str, code: int, as_json: bool) -> None:
    if as_json:
        emit_json({"error": message, "exit_code": code})
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)
