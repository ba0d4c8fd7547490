"""`foresight metrics-token rotate` against a real OpenBao: what it writes where, check-and-set against a rotation
racing it, and one-line errors with the onboarding exit codes when Vault is away or the token may not write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hvac
import pytest
import typer
from hvac.api.secrets_engines.kv_v2 import KvV2
from typer.testing import CliRunner, Result

from onboarding import metrics_token_cli
from onboarding.errors import EXIT_CONFLICT, EXIT_LOCAL, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_VAULT
from onboarding.state import StatePaths
from service import cli as foresight_cli
from service.security.vault_keys import DEFAULT_MOUNT
from stacks.vault import VaultLayout
from tests.onboarding.conftest import invoke
from tests.onboarding.test_cli import one_line_error
from tests.security.helpers import unique
from tests.servers import OpenBao, free_port


@pytest.fixture
def vault_env(vault_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test OpenBao, and its one KV mount named (the stacks' own mounts: test_metrics_token_mount.py)."""
    monkeypatch.setenv("FORESIGHT_VAULT_KV_MOUNT", DEFAULT_MOUNT)
    return vault_env


def rotate(*args: str) -> Result:
    root = typer.Typer()
    root.add_typer(metrics_token_cli.app, name="metrics-token")
    return CliRunner().invoke(root, ["metrics-token", "rotate", *args])


def stored(bao: OpenBao, stack: str, path: str | None = None) -> dict[str, Any]:
    reply = bao.client().secrets.kv.v2.read_secret_version(
        path or f"deployments/{stack}/metrics", mount_point=DEFAULT_MOUNT, raise_on_deleted_version=True
    )
    return {"data": reply["data"]["data"], "version": reply["data"]["metadata"]["version"]}


def test_an_audit_log_that_cannot_be_written_stops_the_rotation_before_vault(
        vault_env: Path, bao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = unique("audited")
    assert rotate("--stack", stack).exit_code == 0
    monkeypatch.setenv("FORESIGHT_AUDIT_LOG", str(tmp_path))  # a directory
    refused = rotate("--stack", stack, "--json")
    assert refused.exit_code == EXIT_LOCAL, refused.output
    assert json.loads(refused.stdout)["error"].startswith(f"audit log {tmp_path}: cannot be written (Is a directory)")
    assert stored(bao, stack)["version"] == 1  # no token written that nobody would see audited


def test_rotate_writes_a_fresh_256_bit_token_and_prints_it_once(vault_env: Path, bao: OpenBao) -> None:
    stack = unique("prod")
    first = rotate("--stack", stack, "--json")
    assert first.exit_code == 0, first.output
    token = json.loads(first.stdout)["token"]
    assert json.loads(first.stdout) == {"token": token, "vault_path": f"{DEFAULT_MOUNT}/deployments/{stack}/metrics",
                                        "version": 1}
    assert len(bytes.fromhex(token)) == 32
    assert stored(bao, stack) == {"data": {"token": token}, "version": 1}

    second = rotate("--stack", stack)
    assert second.exit_code == 0, second.output
    assert second.stdout.count("\n") == 1 and second.stdout.strip() != token
    assert stored(bao, stack) == {"data": {"token": second.stdout.strip()}, "version": 2}
    assert token not in second.stderr and second.stdout.strip() not in second.stderr

    audit = StatePaths(vault_env).onboarding_audit.read_text()
    assert audit.count('"metrics-token.rotate"') == 2
    assert token not in audit and second.stdout.strip() not in audit


def test_rotate_json_gives_the_version_written_as_people_get_it(vault_env: Path, bao: OpenBao) -> None:
    stack = unique("versions")
    assert rotate("--stack", stack).exit_code == 0
    second = rotate("--stack", stack, "--json")
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["version"] == stored(bao, stack)["version"] == 2


def test_a_rotation_racing_another_fails_and_leaves_the_others_token(
    vault_env: Path, bao: OpenBao, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = unique("race")
    assert rotate("--stack", stack).exit_code == 0
    theirs = "f" * 64
    write, other_operator = KvV2.create_or_update_secret, bao.client().secrets.kv.v2

    def another_rotation_first(self: KvV2, path: str, secret: dict[str, Any], **kwargs: Any) -> Any:
        """Another rotation writes between this one's read of the version and its write."""
        write(other_operator, path, {"token": theirs}, mount_point=DEFAULT_MOUNT)
        return write(self, path, secret, **kwargs)

    monkeypatch.setattr(KvV2, "create_or_update_secret", another_rotation_first)
    result = rotate("--stack", stack, "--json")
    assert result.exit_code == EXIT_CONFLICT
    assert "another rotation wrote it at the same time" in one_line_error(result.stderr)
    assert set(json.loads(result.stdout)) == {"error", "exit_code"}  # no token printed: it was never stored
    assert stored(bao, stack)["data"] == {"token": theirs}


def test_unreachable_vault_is_one_line_and_exit_5(vault_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    result = rotate("--stack", "prod")
    assert result.exit_code == EXIT_VAULT
    assert "Vault unreachable (ConnectionError)" in one_line_error(result.stderr)
    assert result.stdout == ""


def test_a_token_that_may_not_write_the_path_is_one_line_and_exit_5(
    vault_env: Path, bao: OpenBao, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's own token reads the scrape token but cannot write it."""
    stack = unique("denied")
    layout = VaultLayout(kv_mount=DEFAULT_MOUNT, pki_mount="unused", pki_role="unused", auth_mount="unused",
                         role="unused", policy=f"{stack}-node", stack=stack)
    root = bao.client()
    root.sys.create_or_update_policy(layout.policy, layout.node_policy_hcl())
    node_token = root.auth.token.create(policies=[layout.policy], ttl="10m")["auth"]["client_token"]
    monkeypatch.setenv("VAULT_TOKEN", node_token)
    result = rotate("--stack", stack)
    assert result.exit_code == EXIT_VAULT
    assert "permission denied" in one_line_error(result.stderr)
    assert result.stdout == ""
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.secrets.kv.v2.read_secret_version(layout.metrics_path, mount_point=DEFAULT_MOUNT,
                                               raise_on_deleted_version=True)


def test_a_kv_mount_that_does_not_exist_is_one_line_and_exit_3(
    vault_env: Path, bao: OpenBao, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a token whose policy covers the path (root here), Vault says the mount is missing; a narrower token
    gets 'permission denied' for any path outside its policy, the exit-5 case above."""
    monkeypatch.setenv("VAULT_TOKEN", bao.token)
    monkeypatch.setenv("FORESIGHT_VAULT_KV_MOUNT", unique("nomount"))
    result = rotate("--stack", "prod")
    assert result.exit_code == EXIT_NOT_FOUND
    assert "no KV v2 mount" in one_line_error(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize("stack", ["..", "a/b", "prod stack", ""])
def test_a_stack_name_that_is_no_path_segment_is_a_usage_error(vault_env: Path, stack: str) -> None:
    result = rotate("--stack", stack)
    assert result.exit_code == EXIT_USAGE
    assert "expected the Pulumi stack name" in one_line_error(result.stderr)


def test_path_writes_a_kubernetes_workloads_own_metrics_vault_path(vault_env: Path, bao: OpenBao) -> None:
    path = f"foresight/{unique('eks')}/scrape"
    result = rotate("--path", path, "--json")
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    assert reply["vault_path"] == f"{DEFAULT_MOUNT}/{path}"
    assert stored(bao, "", path) == {"data": {"token": reply["token"]}, "version": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give one: --stack <stack>"),
        (("--stack", "prod", "--path", "a/metrics"), "give one: --stack <stack>"),
        (("--path", "/abs/metrics"), "expected a path inside the KV mount"),
        (("--path", "a/../b"), "expected a path inside the KV mount"),
        (("--path", "a//b"), "expected a path inside the KV mount"),
    ],
)
def test_stack_or_path_exactly_one_and_a_path_inside_the_mount(
    vault_env: Path, bao: OpenBao, args: tuple[str, ...], message: str
) -> None:
    before = bao.client().secrets.kv.v2.list_secrets("", mount_point=DEFAULT_MOUNT)["data"]["keys"]
    result = rotate(*args)
    assert result.exit_code == EXIT_USAGE
    assert message in one_line_error(result.stderr)
    assert bao.client().secrets.kv.v2.list_secrets("", mount_point=DEFAULT_MOUNT)["data"]["keys"] == before


@pytest.mark.parametrize(
    ("path", "reserved"),
    [
        ("tenants/{tenant}/meta", "tenants/"),
        ("tenants/{tenant}/keys/{key_id}", "tenants/"),
        ("keyids/{key_id}", "keyids/"),
        ("tenants", "tenants/"),
        ("deployments/prod/tls", "deployments/"),
        ("deployments/prod/metrics", "deployments/"),
    ],
)
def test_path_refuses_the_mounts_own_records_before_writing(vault_env: Path, bao: OpenBao, path: str,
                                                            reserved: str) -> None:
    """`--path tenants/victim/meta` overwrote the tenant's record, and every `tenants` command then failed."""
    tenant = unique("victim")
    created = invoke("tenants", "create", tenant, "--json")
    assert created.exit_code == 0, created.output
    path = path.format(tenant=tenant, key_id=json.loads(created.stdout)["key_id"])
    kv = bao.client().secrets.kv.v2
    before = kv.list_secrets("", mount_point=DEFAULT_MOUNT)["data"]["keys"]
    meta = kv.read_secret_metadata(f"tenants/{tenant}/meta", mount_point=DEFAULT_MOUNT)["data"]["current_version"]

    result = rotate("--path", path, "--json")
    assert result.exit_code == EXIT_USAGE
    line = one_line_error(result.stderr)
    assert f"{reserved} is reserved" in line
    assert json.loads(result.stdout) == {"error": line[len("error: "):], "exit_code": EXIT_USAGE}
    assert kv.list_secrets("", mount_point=DEFAULT_MOUNT)["data"]["keys"] == before
    assert kv.read_secret_metadata(f"tenants/{tenant}/meta", mount_point=DEFAULT_MOUNT)["data"]["current_version"] \
        == meta
    assert invoke("tenants", "show", tenant).exit_code == 0


def test_the_path_is_the_one_the_stacks_give_the_node() -> None:
    layout = VaultLayout(kv_mount="foresight-aws-prod", pki_mount="k", pki_role="e", auth_mount="a", role="r",
                         policy="p", stack="aws-prod")
    assert metrics_token_cli.vault_path("aws-prod") == layout.metrics_path


def test_help_says_how_prometheus_reads_it() -> None:
    text = rotate("--help").stdout
    assert "credentials_file: /etc/prometheus/foresight-metrics-token" in text
    assert foresight_cli.GROUPS["metrics-token"][0] == metrics_token_cli.__name__
