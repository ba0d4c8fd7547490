"""`foresight ... --help` as people read it: a flag (`--json`, `--yes`, `--scripting/--no-scripting`, `--help`)
takes no value, so it shows no type; an option that takes one still shows its type."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _help(*args: str) -> str:
    result = subprocess.run([sys.executable, "-c", "from service.cli import main; main()", *args, "--help"],
                            capture_output=True, text=True, timeout=60, env=os.environ | {"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def _line(text: str, option: str) -> str:
    """The help line of `option` (the first thing on it; other lines may name it in their text)."""
    return next(line for line in text.splitlines() if line.lstrip("│ ").startswith(f"{option} "))


@pytest.mark.parametrize(("args", "flags"), [
    ((), ["--version", "--help"]),
    (("tenants", "create"), ["--json", "--scripting", "--help"]),
    (("tenants", "delete"), ["--yes", "--json"]),
    (("keys", "issue"), ["--json", "--help"]),
    (("metrics-token", "rotate"), ["--json"]),
    (("audit", "verify"), ["--help"]),
])
def test_flags_show_no_value_placeholder(args: tuple[str, ...], flags: list[str]) -> None:
    text = _help(*args)
    assert "<bool>" not in text
    for flag in flags:
        assert "<" not in _line(text, flag), _line(text, flag)


def test_options_that_take_a_value_still_show_its_type() -> None:
    text = _help("tenants", "create")
    assert "<path>" in _line(text, "--state-dir") and "<int>" in _line(text, "--memory")
