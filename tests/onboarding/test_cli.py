"""The `tenants` and `keys` commands as scripts and people see them: JSON on stdout, one-line errors on
stderr, documented exit codes. Vault is reached through the standard VAULT_ADDR/VAULT_TOKEN variables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from onboarding.errors import EXIT_CONFLICT, EXIT_FAILURE, EXIT_LOCAL, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_VAULT
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


def test_keys_rotate_json_gives_every_time_in_one_format(vault_env: Path) -> None:
    name = unique("rot-fmt")
    first = json.loads(invoke("tenants", "create", name, "--json").stdout)
    rotated = json.loads(invoke("keys", "rotate", first["key_id"], "--overlap", "1h", "--json").stdout)
    iso_utc = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"
    assert re.fullmatch(iso_utc, rotated["created"]), rotated["created"]
    assert re.fullmatch(iso_utc, rotated["replaces"]["expires"]), rotated["replaces"]["expires"]


def test_rotating_a_key_again_is_a_conflict_naming_its_successor(vault_env: Path) -> None:
    first = json.loads(invoke("tenants", "create", unique("rot-twice"), "--json").stdout)
    rotated = json.loads(invoke("keys", "rotate", first["key_id"], "--json").stdout)
    again = invoke("keys", "rotate", first["key_id"], "--json")  # a retry, after output that was lost
    assert again.exit_code == EXIT_CONFLICT
    assert f"already rotated to {rotated['key_id']}" in json.loads(again.stdout)["error"]


@pytest.mark.parametrize("flag", ["--resp-port", "--http-port", "--vault-port"])
@pytest.mark.parametrize("port", ["70000", "-1"])
def test_local_up_refuses_a_port_out_of_range_and_creates_nothing(state_dir: Path, flag: str, port: str) -> None:
    result = invoke("local", "up", "--no-demo", flag, port, "--json")
    assert result.exit_code == EXIT_USAGE, result.output
    assert one_line_error(result.stderr) == f"error: {flag} {port}: must be 0-65535 (0 picks a free one)"
    assert json.loads(result.stdout)["exit_code"] == EXIT_USAGE
    assert not state_dir.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--origin-latency-ms", "-5"], "--origin-latency-ms -5: must be a number of milliseconds, 0 or more"),
        (["--origin-latency-ms", "nan"], "--origin-latency-ms nan: must be a number of milliseconds, 0 or more"),
        (["--set", "tls_require_client_cert=true"],
         "--set tls_require_client_cert: the service refuses it: tls_require_client_cert needs tls_client_ca_file"),
    ],
)
def test_local_up_checks_every_option_before_starting_or_saving_anything(state_dir: Path, args: list[str],
                                                                          message: str) -> None:
    """A value the service would refuse used to start OpenBao first, fail with exit 7 naming a FORESIGHT_*
    variable, and stay saved in deployment.json for every later `up`."""
    result = invoke("local", "up", "--no-demo", "--resp-port", "0", "--http-port", "0", "--vault-port", "0", *args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert one_line_error(result.stderr) == f"error: {message}"
    assert not state_dir.exists()  # nothing started, nothing saved


def test_down_and_status_leave_a_directory_that_is_not_a_state_directory_untouched(state_dir: Path,
                                                                                   tmp_path: Path) -> None:
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    down = invoke("local", "down", "--state-dir", str(mine))
    assert down.exit_code == 0 and "No deployment" in down.stdout
    status = invoke("local", "status", "--state-dir", str(mine))
    assert status.exit_code == EXIT_NOT_FOUND
    purge = invoke("local", "down", "--purge", "--state-dir", str(mine), "--json")
    assert purge.exit_code == EXIT_USAGE
    assert "not a Foresight state directory" in one_line_error(purge.stderr)
    assert json.loads(purge.stdout)["exit_code"] == EXIT_USAGE
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # no .lock dropped in it


def test_down_with_no_deployment_has_nothing_to_do(state_dir: Path) -> None:
    plain = invoke("local", "down", "--purge")
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.strip() == f"No deployment in {state_dir}; nothing to stop or delete."
    as_json = invoke("local", "down", "--purge", "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == {"stopped": [], "purged": False, "state_dir": str(state_dir)}
    assert not state_dir.exists()


def test_status_without_a_deployment_exits_3(state_dir: Path) -> None:
    result = invoke("local", "status", "--json")
    assert result.exit_code == EXIT_NOT_FOUND, result.output
    assert "start one with `foresight local up`" in one_line_error(result.stderr)
    assert json.loads(result.stdout)["exit_code"] == EXIT_NOT_FOUND


def test_a_state_dir_that_is_a_file_or_holds_a_damaged_deployment_is_one_line(state_dir: Path,
                                                                             tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for command in (["local", "status"], ["local", "down"], ["local", "up"], ["tenants", "list"]):
        result = invoke(*command, "--state-dir", str(a_file))
        assert result.exit_code == EXIT_USAGE, (command, result.output)
        assert one_line_error(result.stderr) == f"error: state directory {a_file}: is not a directory"
    state_dir.mkdir()
    (state_dir / ".foresight-state").touch()
    (state_dir / "deployment.json").write_text('{"version": 1, "oops": ')
    for command in (["local", "status"], ["tenants", "list"], ["keys", "list", "acme"]):
        result = invoke(*command)
        assert result.exit_code == EXIT_LOCAL, (command, result.output)
        line = one_line_error(result.stderr)
        assert f"deployment {state_dir}/deployment.json: damaged (Invalid JSON" in line
        # As printed, the way out purges this directory, not the default one (the hint named none).
        assert f"foresight local down --purge --state-dir {state_dir}` and `foresight local up --state-dir" in line
    assert invoke("local", "down", "--purge").exit_code == 0  # the way out works
    assert not state_dir.exists()


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"VAULT_CACERT": "/nonexistent"}, [], "VAULT_CACERT /nonexistent: no such file"),
        ({"BAO_CACERT": "/"}, [], "BAO_CACERT /: not a file"),
        ({"VAULT_ADDR": "not-a-url"}, [], "VAULT_ADDR 'not-a-url': expected a URL like https://"),
        ({"VAULT_ADDR": "https://vault:99999"}, [], "VAULT_ADDR 'https://vault:99999': expected a URL"),
        ({"FORESIGHT_ADMIN_TOKEN": "t"}, ["--admin-url", "notaurl"], "admin URL (--admin-url, FORESIGHT_ADMIN_URL) "
         "'notaurl': expected a URL like https://"),
        ({"FORESIGHT_ADMIN_TOKEN": "t", "FORESIGHT_ADMIN_CA": "/nonexistent"}, [],
         "FORESIGHT_ADMIN_CA /nonexistent: no such file"),
    ],
)
def test_bad_vault_and_admin_settings_are_input_errors(vault_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                       env: dict[str, str], args: list[str], message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if "FORESIGHT_ADMIN_TOKEN" in env and not args:
        monkeypatch.setenv("FORESIGHT_ADMIN_URL", "https://127.0.0.1:1")
    result = invoke("tenants", "list", *args, "--json")
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in one_line_error(result.stderr)
    assert json.loads(result.stdout)["exit_code"] == EXIT_USAGE


@pytest.mark.parametrize(
    ("origin", "why"),
    [("notaproto://bucket/x", "protocol 'notaproto' is not an origin Foresight reads"),
     ("relative/dir", "must be an absolute path")],
)
def test_an_origin_the_service_cannot_open_is_refused_before_anything_is_written(vault_env: Path, origin: str,
                                                                                 why: str) -> None:
    name = unique("origin")
    result = invoke("tenants", "create", name, "--origin", origin)
    assert result.exit_code == EXIT_USAGE, result.output
    assert why in one_line_error(result.stderr)
    assert invoke("tenants", "show", name).exit_code == EXIT_NOT_FOUND
    assert invoke("tenants", "create", name, "--origin", "s3://bucket/prefix", "--json").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tenants", "create", "Bad_Name"], "invalid tenant name 'Bad_Name'"),
        (["tenants", "create", "ok-name", "--scopes", "READ"], "--scopes: unknown scope 'READ'"),
        (["tenants", "create", "ok-name", "--origin", "notaproto://x"], "protocol 'notaproto' is not an origin"),
        (["tenants", "show", "Bad_Name"], "invalid tenant name 'Bad_Name'"),
        (["tenants", "suspend", "a_b"], "invalid tenant name 'a_b'"),
        (["tenants", "delete", "a_b", "--yes"], "invalid tenant name 'a_b'"),
        (["keys", "issue", "Bad_Name"], "invalid tenant name 'Bad_Name'"),
        (["keys", "issue", "ok-name", "--scopes", "read,root"], "--scopes: unknown scope 'root'"),
        (["keys", "issue", "ok-name", "--ttl", "soon"], "not a duration"),
        (["keys", "list", "Bad_Name"], "invalid tenant name 'Bad_Name'"),
        (["keys", "rotate", "NOPE"], "'NOPE' is not a key id"),
        (["keys", "revoke", "NOPE"], "'NOPE' is not a key id"),
    ],
)
def test_input_is_checked_before_looking_for_a_deployment(state_dir: Path, args: list[str], message: str) -> None:
    """With no deployment at all, a typo is still reported as the typo (exit 2), not as 'no deployment' (exit 3)."""
    result = invoke(*args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in one_line_error(result.stderr)


def test_delete_with_no_answer_is_not_confirmed_and_leaves_stdout_empty(state_dir: Path) -> None:
    result = invoke("tenants", "delete", "acme", input="")  # stdin at its end, as with </dev/null or in CI
    assert result.exit_code == EXIT_FAILURE
    assert one_line_error(result.stderr) == "error: delete tenant 'acme': not confirmed (pass --yes)"
    assert result.stdout == ""


def test_tenants_and_keys_act_on_the_state_dir_they_are_given(vault_env: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    name = unique("elsewhere")
    created = invoke("tenants", "create", name, "--state-dir", str(other), "--json")
    assert created.exit_code == 0, created.output
    issued = invoke("keys", "issue", name, "--state-dir", str(other), "--json")
    assert issued.exit_code == 0, issued.output
    audit = (other / "audit" / "onboarding.jsonl").read_text()  # that directory's audit log, not the default's
    assert f'"tenant":"{name}"' in audit and '"action":"key.issue"' in audit
    assert not (vault_env / "audit" / "onboarding.jsonl").exists()


def test_local_commands_take_a_relative_state_dir_as_absolute(state_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The service runs in the state directory: a relative path in its settings named a file that was not there
    (`up --state-dir st` failed: cannot read the token file st/secrets/service.token)."""
    monkeypatch.chdir(tmp_path)
    result = invoke("local", "down", "--state-dir", "st", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state_dir"] == str(tmp_path / "st")
