"""Fixtures for the onboarding suite: an OpenBao of its own (so its policies never race the security
suite's), an operator token with the onboarding policy, and the CLI as `foresight` mounts it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import typer
from typer.testing import CliRunner, Result

from onboarding import keys_cli, local_cli, tenants_cli
from onboarding.state import Deployment, StatePaths, save_deployment, write_secret
from service.security.vault_keys import ONBOARDING_POLICY, VaultKeyAdmin
from tests import servers
from tests.servers import OpenBao


@pytest.fixture(scope="session")
def bao() -> Iterator[OpenBao]:
    with servers.openbao_dev_server() as server:
        VaultKeyAdmin(server.client()).setup()
        yield server


@pytest.fixture(scope="session")
def operator_token(bao: OpenBao) -> str:
    token: str = bao.client().auth.token.create(policies=[ONBOARDING_POLICY], ttl="1h")["auth"]["client_token"]
    return token


@pytest.fixture
def key_admin(bao: OpenBao, operator_token: str) -> VaultKeyAdmin:
    return VaultKeyAdmin(hvac.Client(url=bao.addr, token=operator_token, timeout=2))


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state directory, and none of the caller's Vault or admin settings."""
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_CACERT", "BAO_ADDR", "BAO_TOKEN", "BAO_CACERT",
                 "FORESIGHT_ADMIN_URL", "FORESIGHT_ADMIN_TOKEN", "FORESIGHT_ADMIN_CA", "FORESIGHT_AUDIT_LOG",
                 "FORESIGHT_VAULT_KV_MOUNT", "FORESIGHT_VAULT_ALLOW_INSECURE_HTTP",
                 "FORESIGHT_ADMIN_ALLOW_INSECURE_HTTP"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    monkeypatch.setenv("FORESIGHT_STATE_DIR", str(state))
    return state


@pytest.fixture
def vault_env(bao: OpenBao, operator_token: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The commands pointed at the test OpenBao through the standard variables; no service admin API."""
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", operator_token)
    return state_dir


LOCAL_VAULT = "https://127.0.0.1:8200"
OPERATOR_TOKEN = "s.local-operator-token"


@pytest.fixture
def recorded(state_dir: Path) -> StatePaths:
    """A recorded local deployment (nothing running) in the private state directory."""
    paths = StatePaths(state_dir)
    paths.create()
    write_secret(paths.secrets / "operator.token", OPERATOR_TOKEN)
    write_secret(paths.secrets / "admin.token", "local-admin-token")
    save_deployment(paths, Deployment(
        state_dir=paths.root, resp_host="127.0.0.1", resp_port=6380, http_port=8443,
        http_url="https://127.0.0.1:8443", ca_cert=paths.tls / "ca.crt", vault_addr=LOCAL_VAULT, vault_port=8200,
        vault_cluster_port=8201, vault_kv_mount="local-kv", vault_token_file=paths.secrets / "operator.token",
        admin_token_file=paths.secrets / "admin.token", audit_log=paths.onboarding_audit,
        service_audit_log=paths.service_audit, origin=paths.origin, demo_tenant="demo"))
    return paths


def cli() -> typer.Typer:
    """The groups mounted the way service/cli.py mounts them."""
    root = typer.Typer()
    root.add_typer(tenants_cli.app, name="tenants")
    root.add_typer(keys_cli.app, name="keys")
    root.add_typer(local_cli.app, name="local")
    return root


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli(), list(args), input=input)
