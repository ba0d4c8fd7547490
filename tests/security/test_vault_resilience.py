"""Vault trouble the service must live through without a restart, against a real OpenBao: a revoked service
token, a refused KV mount, a failed certificate write, and reads still running when the service stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from pydantic import SecretStr

from service.config import ConfigError, load_settings
from service.security.vault_auth import VaultAuthSettings, VaultSession, VaultSessionStopped
from service.security.vault_keys import SERVICE_POLICY, VaultKeyAdmin, VaultKeyStoreError
from service.security.vault_pki import VaultPkiCertificates
from service.security.vault_source import VaultKeySource
from service.tenancy import TenantSpec
from tests.security.helpers import unique
from tests.servers import OpenBao


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def approle_settings(openbao: OpenBao, bao_root: hvac.Client) -> VaultAuthSettings:
    """AppRole login with the service policy and hour-long tokens: nothing here is due for renewal."""
    if "approle/" not in bao_root.sys.list_auth_methods()["data"]:
        bao_root.sys.enable_auth_method("approle")
    bao_root.auth.approle.create_or_update_approle("foresight-resilience", token_policies=[SERVICE_POLICY],
                                                   token_ttl="1h", token_max_ttl="2h")
    role_id = bao_root.auth.approle.read_role_id("foresight-resilience")["data"]["role_id"]
    secret_id = bao_root.auth.approle.generate_secret_id("foresight-resilience")["data"]["secret_id"]
    return VaultAuthSettings(addr=openbao.addr, method="approle", role_id=role_id, secret_id=SecretStr(secret_id))


@pytest.fixture
def tenant(key_admin: VaultKeyAdmin) -> str:
    name = unique("res")
    key_admin.create_tenant(TenantSpec(name=name))
    return name


async def until(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Wait for `condition`; the limit only keeps a broken build from hanging."""
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.02)


# -- a revoked service token ---------------------------------------------------------------------------------


def test_revoked_service_token_is_replaced_at_the_next_call_not_on_the_renewal_timer(
    approle_settings: VaultAuthSettings, bao_root: hvac.Client, key_admin: VaultKeyAdmin, tenant: str
) -> None:
    key = key_admin.issue_key(tenant)
    session = VaultSession(approle_settings)
    session.login()  # no renewal thread: only the refused call itself can bring the new login
    source = VaultKeySource(session.client)
    assert source.authenticate(key.secret) is not None
    bao_root.auth.token.revoke(session.client.token)
    source.forget()
    principal = source.authenticate(key.secret)
    assert principal is not None and principal.tenant == tenant
    assert session.logins == 2
    assert source.vault_reachable  # the refusal never reached the key source as an outage


def test_a_path_the_policy_forbids_logs_in_again_at_most_once_per_interval(
    approle_settings: VaultAuthSettings,
) -> None:
    clock = FakeClock()
    session = VaultSession(approle_settings, relogin_interval=10.0, clock=clock)
    session.login()

    def read_forbidden_path() -> None:
        with pytest.raises(hvac.exceptions.Forbidden):
            session.client.sys.read_policy("root")  # the service policy may not read policies

    read_forbidden_path()
    assert session.logins == 2  # the token might have been revoked: one new login, and the retry still refused
    for _ in range(5):
        read_forbidden_path()
    clock.now += 5
    read_forbidden_path()
    assert session.logins == 2
    clock.now += 5
    read_forbidden_path()
    assert session.logins == 3


def test_a_token_given_as_a_value_is_not_logged_in_again(openbao: OpenBao, bao_root: hvac.Client) -> None:
    token = bao_root.auth.token.create(policies=[SERVICE_POLICY], ttl="1h")["auth"]["client_token"]
    session = VaultSession(VaultAuthSettings(addr=openbao.addr, token=SecretStr(token)))
    session.login()
    with pytest.raises(hvac.exceptions.Forbidden):
        session.client.sys.read_policy("root")
    assert session.logins == 1  # presenting the same token again could not help


# -- a refused KV mount --------------------------------------------------------------------------------------


def test_a_wrong_kv_mount_is_reported_as_forbidden_not_as_unreachable(
    service_client: hvac.Client, onboarding_client: hvac.Client
) -> None:
    with pytest.raises(ConnectionError, match=r"forbidden \(check FORESIGHT_VAULT_KV_MOUNT / the policy\)") as info:
        VaultKeySource(service_client, mount="no-such-mount").tenants()
    assert "unreachable" not in str(info.value)
    with pytest.raises(ConnectionError, match=r"forbidden \(check FORESIGHT_VAULT_KV_MOUNT / the policy\)"):
        VaultKeySource(service_client, mount="no-such-mount").tenant("acme")
    with pytest.raises(VaultKeyStoreError, match=r"forbidden \(check FORESIGHT_VAULT_KV_MOUNT / the policy\)"):
        VaultKeyAdmin(onboarding_client, mount="no-such-mount").list_tenants()


# -- certificate renewal -------------------------------------------------------------------------------------


async def test_pki_renewal_outlives_a_failed_write_and_issues_once_the_cause_is_gone(
    service_client: hvac.Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = VaultPkiCertificates(service_client, role="foresight-server", common_name="localhost",
                               directory=tmp_path, ttl="1h")
    blocker = tmp_path / ".server.key.tmp"
    blocker.mkdir()  # the key cannot be written, as on a full or read-only disk
    with caplog.at_level(logging.ERROR, logger="service.security.vault_pki"):
        task = asyncio.create_task(pki.keep_fresh(check_interval=0.05))
        await until(lambda: "renewal failed" in caplog.text or task.done(), "the failure logged")
        assert not task.done(), "the renewal task ended"
        assert "IsADirectoryError" in caplog.text and str(blocker) in caplog.text
        blocker.rmdir()
        await until(pki.cert_file.exists, "a certificate issued")
    assert not pki.needs_renewal()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()  # cancelling still stops it


# -- stopping ------------------------------------------------------------------------------------------------


def test_a_tenant_listing_running_when_the_session_stops_ends_with_its_current_read(
    approle_settings: VaultAuthSettings, key_admin: VaultKeyAdmin, tenant: str
) -> None:
    """A listing is one read per tenant; abandoned at shutdown, it kept reading and the exit waited for it."""
    key_admin.create_tenant(TenantSpec(name=unique("res")))
    session = VaultSession(approle_settings)
    session.login()
    reads: list[str] = []

    class StoppedDuringListing(VaultKeySource):
        def _read(self, path: str) -> dict[str, Any] | None:
            record = super()._read(path)
            reads.append(path)
            session.stop()  # the service stops while the listing is under way
            return record

    with pytest.raises(ConnectionError, match="unreachable"):
        StoppedDuringListing(session.client).tenants()
    assert len(reads) == 1
    with pytest.raises(VaultSessionStopped):
        session.client.auth.token.lookup_self()


# -- configuration -------------------------------------------------------------------------------------------


def test_plain_http_to_a_remote_vault_is_refused_unless_explicitly_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORESIGHT_VAULT_ALLOW_INSECURE_HTTP", raising=False)
    with pytest.raises(ConfigError, match=r"vault\.internal is not loopback, so Vault must be reached over https://"):
        load_settings(vault_addr="http://vault.internal:8200")
    with pytest.raises(ConfigError, match="must look like https://"):
        load_settings(vault_addr="vault.internal:8200")
    lab = load_settings(vault_addr="http://vault.internal:8200", vault_allow_insecure_http=True)
    assert lab.vault_addr == "http://vault.internal:8200"
    for addr in ("https://vault.internal:8200", "http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200"):
        assert load_settings(vault_addr=addr).vault_addr == addr
