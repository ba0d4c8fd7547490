"""The `tenants` and `keys` commands as scripts and people see them: JSON on stdout, one-line errors on
stderr, documented exit codes. Vault is reached through the standard VAULT_ADDR/VAULT_TOKEN variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onboarding.errors import EXIT_CONFLICT, EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_VAULT
from tests.onboarding.conftest import invoke
from tests.security.helpers import unique
from tests.servers import free_port


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_create_json_prints_tenant_and_its_key_once(vault_env: Path) -> None:
    name = unique("json")
    result = invoke("tenants", "create", name, "--plan", "pro", "--json")
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["tenant"] == name and created["plan"] == "pro"
    assert created["api_key"].startswith(f"fsk_{created['key_id']}_")
    shown = invoke("tenants", "show", name, "--json")
    assert created["api_key"] not in shown.stdout
    assert [k["key_id"] for k in json.loads(shown.stdout)["keys"]] == [created["key_id"]]
    assert "hash" not in json.loads(shown.stdout)["keys"][0]


def test_a_tenants_prefetcher_and_its_bound_are_kept_in_vault(vault_env: Path) -> None:
    name = unique("bound")
    created = invoke("tenants", "create", name, "--prefetcher", "markov", "--prefetch-max-keys", "65536", "--json")
    assert created.exit_code == 0, created.output
    quota = json.loads(invoke("tenants", "show", name, "--json").stdout)["quota"]
    assert (quota["prefetcher"], quota["prefetch_max_keys"]) == ("markov", 65536)
    shown = invoke("tenants", "show", name)
    assert "prefetcher markov, remembering up to 65,536 keys" in shown.stdout


def test_a_tenant_without_scripts_keeps_that_in_vault(vault_env: Path) -> None:
    name = unique("noscripts")
    created = invoke("tenants", "create", name, "--no-scripting", "--json")
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["quota"]["scripting"] is False
    assert json.loads(invoke("tenants", "show", name, "--json").stdout)["quota"]["scripting"] is False
    assert "Lua scripts turned off" in invoke("tenants", "show", name).stdout
    other = unique("scripts")
    assert invoke("tenants", "create", other, "--json").exit_code == 0
    assert json.loads(invoke("tenants", "show", other, "--json").stdout)["quota"]["scripting"] is True


def test_people_get_the_key_and_a_connection_snippet(vault_env: Path) -> None:
    result = invoke("tenants", "create", unique("human"), "--plan", "starter")
    assert result.exit_code == 0, result.output
    assert "shown once" in result.stdout and "fsk_" in result.stdout
    assert "no service admin API configured" in result.stderr  # VAULT_* only: the service is not told


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["tenants", "create", "Bad_Name"], EXIT_USAGE, "invalid tenant name 'Bad_Name'"),
        (["tenants", "create", "ok-name", "--plan", "gold"], EXIT_USAGE, "unknown plan"),
        (["tenants", "create", "ok-name", "--plan", "custom"], EXIT_USAGE, "needs both --memory"),
        (["tenants", "create", "ok-name", "--prefetch-max-keys", "10"], EXIT_USAGE, "--prefetch-max-keys: must be"),
        (["tenants", "show", "no-such-tenant"], EXIT_NOT_FOUND, "no such tenant"),
        (["keys", "revoke", "aaaaaaaaaaaa"], EXIT_NOT_FOUND, "no key aaaaaaaaaaaa"),
        (["keys", "issue", "no-such-tenant"], EXIT_NOT_FOUND, "no tenant"),
        (["keys", "rotate", "aaaaaaaaaaaa", "--overlap", "soon"], EXIT_USAGE, "not a duration"),
    ],
)
def test_bad_input_gets_one_clear_line_and_an_exit_code(vault_env: Path, args: list[str], code: int,
                                                         message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == code, result.output
    assert message in one_line_error(result.stderr)
    assert result.stdout == ""


def test_a_duplicate_name_is_refused(vault_env: Path) -> None:
    name = unique("dup")
    assert invoke("tenants", "create", name).exit_code == 0
    again = invoke("tenants", "create", name, "--json")
    assert again.exit_code == EXIT_CONFLICT
    assert f"tenant '{name}' already exists" in one_line_error(again.stderr)
    assert json.loads(again.stdout) == {"error": one_line_error(again.stderr)[len("error: "):],
                                        "exit_code": EXIT_CONFLICT}
    keys = json.loads(invoke("keys", "list", name, "--json").stdout)["keys"]
    assert len(keys) == 1


def test_vault_unreachable_is_exit_5_and_creates_nothing(vault_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    result = invoke("tenants", "create", unique("novault"))
    assert result.exit_code == EXIT_VAULT
    assert "Vault unreachable" in one_line_error(result.stderr)


def test_without_a_deployment_it_says_what_to_run(state_dir: Path) -> None:
    result = invoke("tenants", "list")
    assert result.exit_code == EXIT_NOT_FOUND
    assert "foresight local up" in one_line_error(result.stderr)


def test_delete_asks_first_and_yes_skips_the_question(vault_env: Path) -> None:
    name = unique("del")
    invoke("tenants", "create", name)
    declined = invoke("tenants", "delete", name, input="n\n")
    assert declined.exit_code == EXIT_FAILURE
    assert "not confirmed" in declined.stderr
    assert invoke("tenants", "show", name).exit_code == 0
    assert invoke("tenants", "delete", name, input="y\n").exit_code == 0
    assert invoke("tenants", "show", name).exit_code == EXIT_NOT_FOUND
    other = unique("del")
    invoke("tenants", "create", other)
    assert invoke("tenants", "delete", other, "--yes", "--json").exit_code == 0


def test_keys_lifecycle_through_the_cli(vault_env: Path) -> None:
    name = unique("cli-keys")
    first = json.loads(invoke("tenants", "create", name, "--json").stdout)
    issued = json.loads(invoke("keys", "issue", name, "--scopes", "read", "--ttl", "30d", "--json").stdout)
    assert issued["scopes"] == ["read"] and issued["expires"] and issued["api_key"].startswith("fsk_")
    rotated = json.loads(invoke("keys", "rotate", first["key_id"], "--overlap", "1h", "--json").stdout)
    assert rotated["replaces"]["key_id"] == first["key_id"] and rotated["key_id"] != first["key_id"]
    revoked = invoke("keys", "revoke", first["api_key"], "--json")  # a pasted key is taken as its id
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["state"] == "revoked"
    assert first["api_key"] not in revoked.stdout
    states = {k["key_id"]: k["state"] for k in json.loads(invoke("keys", "list", name, "--json").stdout)["keys"]}
    assert states == {first["key_id"]: "revoked", issued["key_id"]: "active", rotated["key_id"]: "active"}


def test_suspend_and_resume(vault_env: Path) -> None:
    name = unique("pause")
    invoke("tenants", "create", name)
    assert json.loads(invoke("tenants", "suspend", name, "--json").stdout)["suspended"] is True
    listed = json.loads(invoke("tenants", "list", "--json").stdout)["tenants"]
    assert next(t for t in listed if t["tenant"] == name)["suspended"] is True
    assert invoke("tenants", "resume", name).exit_code == 0
    assert json.loads(invoke("tenants", "show", name, "--json").stdout)["suspended"] is False


def test_actions_land_in_the_audit_log_of_the_state_dir(vault_env: Path) -> None:
    name = unique("aud")
    created = json.loads(invoke("tenants", "create", name, "--json").stdout)
    text = (vault_env / "audit" / "onboarding.jsonl").read_text()
    assert '"action":"tenant.create"' in text and f'"tenant":"{name}"' in text
    assert created["api_key"] not in text
