"""What `tenants` and `keys` print, as scripts and people read it: a key's state as the service sees it, no
field that claims what was never read, ids and names whole in tables at 80 columns, and the `--json` contract
kept for Typer's own usage errors and for a confirmation read from stdin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onboarding import output
from onboarding.errors import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_USAGE
from tests.onboarding.conftest import invoke
from tests.onboarding.test_cli import one_line_error
from tests.security.helpers import unique


def created(name: str) -> dict[str, str]:
    result = invoke("tenants", "create", name, "--json")
    assert result.exit_code == 0, result.output
    reply: dict[str, str] = json.loads(result.stdout)
    return reply


def test_a_key_past_its_expiry_is_expired_in_lists_tables_and_show(vault_env: Path) -> None:
    """Vault stores only active or revoked; a rotated key past its overlap is refused by the service, so calling
    it active sent operators to a key that no longer works."""
    name = unique("expired")
    first = created(name)["key_id"]
    rotated = invoke("keys", "rotate", first, "--overlap", "0s", "--json")
    assert rotated.exit_code == 0, rotated.output
    successor = json.loads(rotated.stdout)["key_id"]

    listed = json.loads(invoke("keys", "list", name, "--json").stdout)["keys"]
    assert {k["key_id"]: k["state"] for k in listed} == {first: "expired", successor: "active"}
    shown = json.loads(invoke("tenants", "show", name, "--json").stdout)["keys"]
    assert {k["key_id"]: k["state"] for k in shown} == {first: "expired", successor: "active"}
    for table in (invoke("keys", "list", name).stdout, invoke("tenants", "show", name).stdout):
        row = next(line for line in table.splitlines() if line.startswith(f"│ {first}"))
        assert "expired" in row and "active" not in row


def test_tenants_list_json_claims_no_keys_it_did_not_read(vault_env: Path) -> None:
    name = unique("listed")
    key_id = created(name)["key_id"]
    listed = json.loads(invoke("tenants", "list", "--json").stdout)["tenants"]
    mine = next(t for t in listed if t["tenant"] == name)
    assert "keys" not in mine  # it used to say "keys": [] for every tenant
    assert [k["key_id"] for k in json.loads(invoke("tenants", "show", name, "--json").stdout)["keys"]] == [key_id]


def test_tables_at_80_columns_keep_key_ids_and_tenant_names_whole(vault_env: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipe (`keys list acme | cat`) is 80 columns to Rich, which cut ids to `gsli2jysd6…`."""
    monkeypatch.setattr(output.out, "width", 80)
    name = unique("n" * 46)  # 63 characters, the longest name there is
    first = created(name)["key_id"]
    successor = json.loads(invoke("keys", "rotate", first, "--json").stdout)["key_id"]
    for args in (("keys", "list", name), ("tenants", "show", name), ("tenants", "list")):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "…" not in result.stdout, result.stdout
        assert name in result.stdout
        if args[0] == "keys" or args[1] == "show":
            assert first in result.stdout and successor in result.stdout
            assert result.stdout.count(successor) == 2  # its own row, and the old key's "rotated to"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tenants", "create", "q2", "--memory", "abc"], "Invalid value for '--memory'"),
        (["tenants", "create"], "Missing argument 'name'"),
        (["tenants", "show", "x", "--bogus"], "No such option: --bogus"),
        (["keys", "list"], "Missing argument 'tenant'"),
    ],
)
def test_usage_errors_with_json_are_the_json_error_object_too(state_dir: Path, args: list[str],
                                                             message: str) -> None:
    result = invoke(*args, "--json")
    assert result.exit_code == EXIT_USAGE, result.output
    line = one_line_error(result.stderr)
    assert message in line
    assert json.loads(result.stdout) == {"error": line[len("error: "):], "exit_code": EXIT_USAGE}


def test_a_y_on_stdin_confirms_a_delete_with_json(vault_env: Path) -> None:
    name = unique("del-json")
    created(name)
    unanswered = invoke("tenants", "delete", name, "--json", input="")
    assert unanswered.exit_code == EXIT_FAILURE
    assert json.loads(unanswered.stdout)["error"] == f"delete tenant {name!r}: not confirmed (pass --yes)"
    confirmed = invoke("tenants", "delete", name, "--json", input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert json.loads(confirmed.stdout)["deleted"] is True
    assert invoke("tenants", "show", name).exit_code == EXIT_NOT_FOUND
