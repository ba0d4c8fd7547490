"""How the onboarding commands talk to people and to scripts.

People get Rich tables and a spinner on stderr; `--json` prints exactly one JSON object on stdout. A failure
is one line on stderr, `error: <what failed>: <why>`, and the exit code of its type (`errors.py`); with
`--json` the same goes to stdout as `{"error": ..., "exit_code": ...}`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from types import FrameType
from typing import Any

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from typer.core import TyperGroup

from onboarding.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED, OnboardingError, Terminated
from onboarding.state import STATE_DIR_ENV
from service.security.apikeys import redact_keys

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_UNBOUNDED = 100_000  # a width no table reaches, to measure the narrowest it can be

JsonOption = typer.Option("--json", help="Print one JSON object (for scripts) instead of tables.")
StateDirOption = typer.Option(
    "--state-dir", envvar=STATE_DIR_ENV,
    help="The local deployment's state directory (default: $XDG_STATE_HOME/foresight, else ~/.local/state/foresight).",
)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_table(table: Table) -> None:
    """Print `table` without cutting a value: each `no_wrap` column (ids, names: what people copy) is as wide
    as its widest value, every other column as wide as its longest word. Rich fits a table to the terminal, or
    to 80 columns in a pipe, by ellipsizing cells (`gsli2jysd6…`); a table that cannot fit without that is
    printed wider than the terminal instead."""
    for column in table.columns:
        cells = [str(cell) for cell in column.cells]
        words = [word for text in (str(column.header), *cells) for word in text.split()]
        column.min_width = max(map(cell_len, cells if column.no_wrap else words), default=0)
    needed = Measurement.get(out, out.options.update_width(_UNBOUNDED), table).minimum
    if needed > out.width:
        table.width = needed
    out.print(table, crop=False)


class UsageErrorGroup(TyperGroup):
    """A command group whose usage errors (a bad option value, a missing argument, an unknown option: exit 2)
    read as every other error of the CLI: one `error:` line, and with `--json` the error object on stdout too.
    Typer reports them while parsing, before the command and its `reported()` run, in a box of its own.
    `foresight` itself is one (service/cli.py), so every group's commands answer so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _hide_flag_types(self)

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)  # with --help and Typer's completion flags, added after __init__
        for param in params:
            if getattr(param, "is_flag", False):
                _untyped(param)
        return params

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:  # each command's --help is made when first asked for: after _hide_flag_types ran
            _hide_help_types(command, ctx)
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:  # Any: Typer's own copy of click.Context, which it does not export
        as_json = "--json" in ctx.args  # the command's arguments, parsed only inside super().invoke
        try:
            return super().invoke(ctx)
        except typer.TyperException as usage:  # Typer's base of click's UsageError and its kin
            context = getattr(usage, "ctx", None)  # click's UsageError names its command; its kin may not
            command = context.command_path if context is not None else "foresight"
            _fail(f"{usage.format_message()} (see `{command} --help`)", usage.exit_code, as_json)


def _hide_flag_types(command: Any) -> None:
    """A flag (`--json`, `--yes`, `--scripting/--no-scripting`) takes no value, but Typer's rich help gives every
    option its type (`--json <bool>`): an empty metavar shows none. For the group's options, its commands' and its
    subgroups' (Typer makes them before the group that holds them)."""
    for param in command.params:
        if getattr(param, "is_flag", False):
            _untyped(param)
    for sub in getattr(command, "commands", {}).values():
        _hide_flag_types(sub)


def _hide_help_types(command: Any, ctx: Any) -> None:
    """The same for the --help of a command and of everything under it (made now, with the names `ctx` gives it)."""
    _untyped(command.get_help_option(ctx))
    for sub in getattr(command, "commands", {}).values():
        _hide_help_types(sub, ctx)


def _untyped(flag: Any) -> Any:
    """The flag, with no type shown in the help."""
    if flag is not None and flag.metavar is None:
        flag.metavar = ""
    return flag


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
    """Turn failures into one line and an exit code; SIGTERM interrupts like Ctrl-C (and exits 143)."""
    try:
        with _terminate_as_interrupt():
            yield
    except OnboardingError as failure:
        _fail(str(failure), failure.exit_code, as_json)
    except Terminated:
        _fail("terminated", EXIT_TERMINATED, as_json)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED, as_json)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as unexpected:  # a bug: still one line, the type names it
        _fail(f"unexpected {type(unexpected).__name__}: {unexpected}", EXIT_FAILURE, as_json)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the command runs, SIGTERM raises `Terminated` so that its clean-up (`finally`, rollbacks) runs; the
    default would end the process on the spot, leaving what it had started (OpenBao, half a tenant) behind. Later
    SIGTERMs are ignored so that they cannot cut that clean-up short (SIGKILL still can)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str, code: int, as_json: bool) -> None:
    message = redact_keys(message)  # a key pasted where the parser did not expect it is quoted back
    if as_json:
        emit_json({"error": message, "exit_code": code})
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)
