"""The /metrics scrape token kept in Vault: `foresight metrics-token rotate` writes it to the deployment's KV mount
and a service whose keys come from that Vault (logged in with the stacks' node policy, read-only) lets Prometheus
scrape with it from anywhere, takes a rotation within its refresh interval, and keeps the last token while Vault
is away. The token shows in no log or audit line. Real OpenBao, real service, real HTTPS clients."""

from __future__ import annotations

import json
import logging
import secrets
import ssl
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest
import typer
from typer.testing import CliRunner, Result

from onboarding import metrics_token_cli
from onboarding.state import StatePaths
from service.config import ConfigError
from service.security.admin_token import new_admin_token
from service.security.apikeys import hash_key
from service.security.vault_keys import VaultKeyAdmin, onboarding_policy
from service.tenancy import TenantSpec
from stacks.vault import VaultLayout
from tests import servers
from tests.security.helpers import unique
from tests.servers import OpenBao
from tests.service.harness import RunningService, running_service, write_tenants_file
from tests.tlsutil import PKI

REFRESH_S = 0.2  # the service reads the token again this often; polls below wait for it, no sleeps
REMOTE = {"X-Forwarded-For": "203.0.113.9"}  # a remote client, as the proxy on this host (forwarded_allow_ips) names it


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Deployment:
    """One stack's Vault side as `pulumi up` leaves it (KV mount, node policy), a tenant, and an operator."""

    def __init__(self, bao: OpenBao, tmp_path: Path) -> None:
        self.bao = bao
        self.stack = unique("mt")
        name = f"foresight-{self.stack}"
        self.layout = VaultLayout(kv_mount=name, pki_mount=f"{name}-pki", pki_role=f"{name}-endpoint",
                                  auth_mount=f"{name}-test", role=f"{name}-node", policy=f"{name}-node",
                                  stack=self.stack)
        root = bao.client()
        root.sys.enable_secrets_engine("kv", path=self.layout.kv_mount, options={"version": "2"})
        root.sys.create_or_update_policy(self.layout.policy, self.layout.node_policy_hcl())
        operator_policy = f"foresight-{self.stack}-operator"
        root.sys.create_or_update_policy(operator_policy, onboarding_policy(self.layout.kv_mount))
        self.operator_token = _token(root, operator_policy)
        self.tenant = unique("acme")
        VaultKeyAdmin(root, self.layout.kv_mount).create_tenant(TenantSpec(name=self.tenant))
        self.node_token_file = tmp_path / "vault-token"
        self.node_token_file.write_text(_token(root, self.layout.policy))
        self.node_token_file.chmod(0o600)
        self.state_dir = tmp_path / "state"
        self.service_audit = tmp_path / "service-audit.log"

    def rotate(self, *args: str) -> Result:
        """`foresight metrics-token rotate --stack <stack>` as an operator runs it (VAULT_ADDR, VAULT_TOKEN)."""
        root = typer.Typer()
        root.add_typer(metrics_token_cli.app, name="metrics-token")
        env = {"VAULT_ADDR": self.bao.addr, "VAULT_TOKEN": self.operator_token, "FORESIGHT_VAULT_KV_MOUNT":
               self.layout.kv_mount, "FORESIGHT_STATE_DIR": str(self.state_dir), "VAULT_CACERT": None,
               "BAO_CACERT": None, "FORESIGHT_ADMIN_URL": None, "FORESIGHT_AUDIT_LOG": None}
        result = CliRunner().invoke(root, ["metrics-token", "rotate", "--stack", self.stack, *args], env=env)
        assert result.exit_code == 0, result.output
        return result

    def settings(self, pki: PKI, **overrides: Any) -> dict[str, Any]:
        """A production node's: TLS, keys from this Vault with the node's token, the stack's metrics path."""
        return dict(tls_cert_file=pki.cert, tls_key_file=pki.key, vault_addr=self.bao.addr,
                    vault_token_file=self.node_token_file, vault_kv_mount=self.layout.kv_mount,
                    vault_metrics_path=self.layout.metrics_path, vault_metrics_refresh_s=REFRESH_S,
                    audit_log=self.service_audit, prefetcher="none", forwarded_allow_ips=["127.0.0.1"], **overrides)

    def written(self) -> str:
        return "\n".join(path.read_text() for path in (self.service_audit, StatePaths(self.state_dir).onboarding_audit)
                         if path.exists())


def _token(root: hvac.Client, policy: str) -> str:
    token: str = root.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"]
    return token


@pytest.fixture
def deployment(openbao: OpenBao, tmp_path: Path) -> Deployment:
    return Deployment(openbao, tmp_path)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record of every thread (the service's, hvac's, urllib3's), at every level."""
    caplog.set_level(logging.DEBUG)
    return caplog


def https(svc: RunningService, pki: PKI) -> httpx.Client:
    return httpx.Client(base_url=svc.endpoints.http_url, verify=ssl.create_default_context(cafile=str(pki.ca_cert)))


def scrapes(http: httpx.Client, token: str) -> bool:
    return http.get("/metrics", headers={**REMOTE, **bearer(token)}).status_code == 200


def test_a_rotated_token_scrapes_from_anywhere_and_the_next_rotation_replaces_it(
    deployment: Deployment, pki: PKI, logs: pytest.LogCaptureFixture
) -> None:
    admin_token = new_admin_token()
    with running_service(**deployment.settings(pki, admin_token_hash=hash_key(admin_token))) as svc, \
            https(svc, pki) as http:
        assert http.get("/metrics", headers=REMOTE).status_code == 401  # no secret yet: loopback and admin only
        assert http.get("/metrics").status_code == 200

        first = deployment.rotate("--json")
        token = json.loads(first.stdout)["token"]
        vault_path = f"{deployment.layout.kv_mount}/{deployment.layout.metrics_path}"
        assert json.loads(first.stdout) == {"token": token, "vault_path": vault_path, "version": 1}
        assert len(token) == 64 and int(token, 16) >= 0  # 256 bits, hex

        servers.wait_until(lambda: scrapes(http, token), "the service reading the token from Vault", timeout=10)
        scraped = http.get("/metrics", headers={**REMOTE, **bearer(token)})
        assert f'tenant="{deployment.tenant}"' in scraped.text
        for wrong in (secrets.token_hex(32), token[:-1], token + "0"):
            refused = http.get("/metrics", headers={**REMOTE, **bearer(wrong)})
            assert refused.status_code == 401 and deployment.tenant not in refused.text
        assert http.get("/metrics").status_code == 401  # a token in force binds loopback clients too
        assert http.get("/metrics", headers={**REMOTE, **bearer(admin_token)}).status_code == 200

        second = deployment.rotate()
        rotated = second.stdout.strip()
        assert second.stdout == rotated + "\n" and rotated != token  # plain: the token alone on stdout
        servers.wait_until(lambda: scrapes(http, rotated), "the service reading the rotated token", timeout=10)
        assert not scrapes(http, token)

    everything = "\n".join([logs.text, deployment.written(), first.stderr, second.stderr])
    assert "metrics-token.rotate" in deployment.written()
    for secret in (token, rotated):
        assert secret not in everything


def test_vault_going_away_keeps_the_last_token(pki: PKI, tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    with ExitStack() as vault:
        bao = vault.enter_context(servers.openbao_dev_server())  # its own: this test stops it
        deployment = Deployment(bao, tmp_path)
        with running_service(**deployment.settings(pki)) as svc, https(svc, pki) as http:
            token = deployment.rotate().stdout.strip()
            servers.wait_until(lambda: scrapes(http, token), "the service reading the token from Vault", timeout=10)

            vault.close()
            servers.wait_until(  # scrapes go on while the service finds Vault gone (one read an interval)
                lambda: scrapes(http, token) and "cannot be used (Vault unavailable" in logs.text,
                "the service failing to read the token from Vault", timeout=10)
            assert scrapes(http, token)
            assert not scrapes(http, secrets.token_hex(32))
            assert http.get("/metrics").status_code == 401  # still in force for loopback clients
    assert token not in logs.text


def test_a_token_file_wins_over_vault(deployment: Deployment, pki: PKI, tmp_path: Path) -> None:
    in_vault = deployment.rotate().stdout.strip()
    token_file = tmp_path / "metrics-token"
    in_file = secrets.token_hex(32)
    token_file.write_text(in_file)
    with running_service(**deployment.settings(pki, metrics_token_file=token_file)) as svc, https(svc, pki) as http:
        assert scrapes(http, in_file)
        assert not scrapes(http, in_vault)


def test_a_vault_token_path_needs_keys_from_vault(tmp_path: Path, pki: PKI) -> None:
    tenants_file = tmp_path / "tenants.json"
    write_tenants_file(tenants_file, {"acme": {}})
    with pytest.raises(ConfigError, match="FORESIGHT_VAULT_METRICS_PATH"), \
            running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants_file,
                            vault_metrics_path="deployments/x/metrics"):
        pass
