"""`foresight` as people and scripts run it: every group's usage errors (a bad option value, a missing argument,
an unknown option or command) are one `error:` line naming the command's --help, exit 2, and with --json the
error object on stdout, as the CLI's other errors are (Typer's own box used to say them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from service.security.apikeys import new_key


def _foresight(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from service.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "line"), [
    (["bench", "resp", "--pipeline", "0"], "error: Invalid value for '--pipeline': Input should be greater than or "
     "equal to 1 (see `foresight bench resp --help`)"),
    (["kms", "rewrap", "/nonexistent"], "error: Invalid value for 'paths': path '/nonexistent' does not exist. (see "
     "`foresight kms rewrap --help`)"),
    (["tenants", "create"], "error: Missing argument 'name'. (see `foresight tenants create --help`)"),
    (["marketplace", "aws", "meter", "--bogus"], "error: No such option: --bogus (see `foresight marketplace aws "
     "meter --help`)"),
    (["nosuch"], "error: No such command 'nosuch'. (see `foresight --help`)"),
])
def test_usage_errors_are_one_line_naming_the_commands_help(args: list[str], line: str) -> None:
    result = _foresight(*args)
    assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", "")
    with_json = _foresight(*args, "--json")
    assert with_json.returncode == 2
    assert json.loads(with_json.stdout) == {"error": line.removeprefix("error: "), "exit_code": 2}


def test_a_key_quoted_back_by_the_parser_is_not_shown() -> None:
    """`keys revoke Bearer fsk_...` unquoted: the key is an extra argument, which Click quotes in its error."""
    key = new_key().secret
    result = _foresight("keys", "revoke", "Bearer", key, "--json")
    assert result.returncode == 2
    assert key not in result.stdout + result.stderr and key[4:20] not in result.stdout + result.stderr
    assert json.loads(result.stdout)["error"].startswith("Got unexpected extra argument(s) (fsk_(a key, not shown))")
