"""A tenant created under a deleted tenant's name is another tenant: end to end on the real service with keys in
a real OpenBao, it never reads what the deleted one left in memory, in the shared tier (a real redis-server) or
in the warm-restart snapshot."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from onboarding.admin_client import AdminClient
from onboarding.auditing import OnboardingAudit
from onboarding.tenants import Onboarder
from service import server
from service.security.admin_token import new_admin_token
from service.security.apikeys import IssuedKey, hash_key
from service.security.vault_keys import VaultKeyAdmin, service_policy
from service.tenancy import TenantQuota, TenantSpec
from tests import servers
from tests.security.helpers import unique
from tests.servers import OpenBao
from tests.service.harness import RunningService, running_service
from tests.tlsutil import PKI

MOUNT = "fs-incarnations"
SERVICE_POLICY = "fs-incarnations-service"


@pytest.fixture(scope="module")
def vault_admin(openbao: OpenBao) -> VaultKeyAdmin:
    root = openbao.client()
    if f"{MOUNT}/" not in root.sys.list_mounted_secrets_engines()["data"]:  # not setup(): its policies are shared
        root.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
    root.sys.create_or_update_policy(SERVICE_POLICY, service_policy(MOUNT))
    return VaultKeyAdmin(root, MOUNT)


@pytest.fixture
def no_periodic_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's own reload of every tenant waits for the test's `periodic_refresh`."""
    monkeypatch.setattr(server, "TENANT_REFRESH_S", 3600.0)


@pytest.fixture
def settings(openbao: OpenBao, vault_admin: VaultKeyAdmin, pki: PKI, tmp_path: Path) -> dict[str, Any]:
    """A production service's: TLS, keys in Vault, the admin API, and an encrypted snapshot in its data dir."""
    token_file = tmp_path / "vault-token"
    token_file.write_text(vault_admin.client.auth.token.create(policies=[SERVICE_POLICY], ttl="1h")["auth"]
                          ["client_token"])
    token_file.chmod(0o600)
    admin_token = new_admin_token()
    return dict(tls_cert_file=pki.cert, tls_key_file=pki.key, vault_addr=openbao.addr, vault_token_file=token_file,
                vault_kv_mount=MOUNT, admin_token_hash=hash_key(admin_token), auth_cache_ttl_s=0.5,
                prefetcher="none", data_dir=tmp_path / "data", kms_provider="local",
                kms_key_id=str(tmp_path / "keyring.json"), admin_token=admin_token)


@contextmanager
def service(settings: dict[str, Any]) -> Iterator[RunningService]:
    with running_service(**{k: v for k, v in settings.items() if k != "admin_token"}) as svc:
        yield svc


@pytest.fixture
def tenant(vault_admin: VaultKeyAdmin) -> Iterator[str]:
    name = unique("acme")
    vault_admin.create_tenant(TenantSpec(name=name))
    yield name
    vault_admin.delete_tenant(name)


def https(svc: RunningService, pki: PKI) -> httpx.Client:
    return httpx.Client(base_url=svc.endpoints.http_url, verify=ssl.create_default_context(cafile=str(pki.ca_cert)))


def bearer(key: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.secret}"}


def created_again(admin: VaultKeyAdmin, name: str) -> IssuedKey:
    """`tenants delete` and `tenants create` of one name: a new customer, with a key of its own."""
    admin.delete_tenant(name)
    admin.create_tenant(TenantSpec(name=name))
    return admin.issue_key(name)


def periodic_refresh(svc: RunningService) -> None:
    """What the service's own reload of every tenant does (every few seconds), with the list read now."""
    source = svc.state.authenticator.source
    svc.call(svc.state.reload_tenants(lambda: source.tenants(fresh=True)))


def eventually(check: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.02)


@pytest.mark.usefixtures("no_periodic_refresh")
def test_a_tenant_created_again_between_two_refreshes_gets_an_empty_cache(
        settings: dict[str, Any], vault_admin: VaultKeyAdmin, pki: PKI, tenant: str) -> None:
    """No admin refresh between the delete and the create (onboarding without an admin API, or a node the admin
    call did not reach): the periodic refresh that finds the new tenant must not hand it the old one's cache."""
    old = vault_admin.issue_key(tenant)
    with service(settings) as svc, https(svc, pki) as http:
        assert http.put("/v1/keys/payroll", content=b"the old tenant's", headers=bearer(old)).status_code == 204
        new = created_again(vault_admin, tenant)
        periodic_refresh(svc)
        assert http.get("/v1/keys/payroll", headers=bearer(new)).status_code == 404
        resp = redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(pki.ca_cert), password=new.secret)
        assert resp.get("payroll") is None


@pytest.mark.usefixtures("no_periodic_refresh")
def test_a_key_reaches_only_the_cache_of_the_tenant_it_was_issued_to(
        settings: dict[str, Any], vault_admin: VaultKeyAdmin, pki: PKI, tenant: str) -> None:
    """Until a refresh, the new tenant's key would find the old tenant's cache under the name, and after it, a
    session of the old tenant's key still cached (auth_cache_ttl_s) would find the new one's."""
    old = vault_admin.issue_key(tenant)
    with service({**settings, "auth_cache_ttl_s": 30}) as svc, https(svc, pki) as http:
        assert http.put("/v1/keys/payroll", content=b"the old tenant's", headers=bearer(old)).status_code == 204
        new = created_again(vault_admin, tenant)
        assert http.get("/v1/keys/payroll", headers=bearer(new)).status_code == 401  # not served yet
        resp = redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(pki.ca_cert), password=new.secret)
        with pytest.raises(redis.AuthenticationError):
            resp.get("payroll")
        periodic_refresh(svc)
        assert http.put("/v1/keys/planted", content=b"by the old tenant", headers=bearer(old)).status_code == 401
        assert http.get("/v1/keys/planted", headers=bearer(new)).status_code == 404


def test_a_tenant_created_again_while_the_service_is_down_gets_none_of_the_snapshot(
        settings: dict[str, Any], vault_admin: VaultKeyAdmin, pki: PKI, tenant: str) -> None:
    old = vault_admin.issue_key(tenant)
    other = unique("globex")
    vault_admin.create_tenant(TenantSpec(name=other))
    try:
        neighbour = vault_admin.issue_key(other)
        with service(settings) as svc, https(svc, pki) as http:
            assert http.put("/v1/keys/payroll", content=b"the old tenant's", headers=bearer(old)).status_code == 204
            assert http.put("/v1/keys/kept", content=b"globex's", headers=bearer(neighbour)).status_code == 204
        new = created_again(vault_admin, tenant)  # during a rolling restart, say
        with service(settings) as svc, https(svc, pki) as http:
            assert http.get("/v1/keys/payroll", headers=bearer(new)).status_code == 404
            assert http.get("/v1/keys/kept", headers=bearer(neighbour)).content == b"globex's"  # the rest restored
    finally:
        vault_admin.delete_tenant(other)


def test_a_tenant_created_again_never_reads_the_deleted_ones_keys_in_the_shared_tier(
        settings: dict[str, Any], vault_admin: VaultKeyAdmin, pki: PKI, tmp_path: Path) -> None:
    name = unique("acme")
    with servers.redis_server() as tier, service({**settings, "shared_tier_url": f"redis://127.0.0.1:{tier.port}"}) \
            as svc, https(svc, pki) as http:
        stored = redis.Redis(port=tier.port)
        admin = AdminClient(svc.endpoints.http_url, settings["admin_token"], ca_cert=pki.ca_cert)
        onboard = Onboarder(vault_admin, admin, OnboardingAudit(tmp_path / "onboarding.jsonl"))
        try:
            first = onboard.create_tenant(name, TenantQuota()).key
            assert http.put("/v1/keys/payroll", content=b"the old tenant's", headers=bearer(first)).status_code == 204
            eventually(lambda: stored.keys(f"fs:{name}*"), "the write reaching the tier")
            assert onboard.delete_tenant(name).warnings == []
            eventually(lambda: stored.keys(f"fs:{name}*") == [], "the deleted tenant's keys leaving the tier")
            second = onboard.create_tenant(name, TenantQuota()).key
            assert http.get("/v1/keys/payroll", headers=bearer(second)).status_code == 404

            # Deleted and created again in Vault only, then one refresh: the tenant is replaced, not updated.
            assert http.put("/v1/keys/payroll", content=b"the second's", headers=bearer(second)).status_code == 204
            eventually(lambda: stored.keys(f"fs:{name}*"), "the write reaching the tier")
            third = created_again(vault_admin, name)
            assert admin.refresh_tenant(name)
            assert http.get("/v1/keys/payroll", headers=bearer(third)).status_code == 404
            eventually(lambda: stored.keys(f"fs:{name}*") == [], "the replaced tenant's keys leaving the tier")
        finally:
            vault_admin.delete_tenant(name)
            admin.close()
