"""VaultKeySource: what the listeners authenticate with, against a real OpenBao and the read-only service policy."""

from __future__ import annotations

import datetime as dt
import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import hvac
import pytest

from service.security.apikeys import MalformedKey, key_id_of
from service.security.vault_keys import VaultKeyAdmin
from service.security.vault_source import VaultKeySource
from service.tenancy import Principal, TenantSpec
from tests.security.helpers import unique
from tests.servers import OpenBao


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tenant(key_admin: VaultKeyAdmin) -> str:
    name = unique("src")
    key_admin.create_tenant(TenantSpec(name=name))
    return name


@pytest.fixture
def service_vault(openbao: OpenBao, service_client: hvac.Client) -> hvac.Client:
    """A service-policy client of its own, so a test may point it at a dead address."""
    return hvac.Client(url=openbao.addr, token=service_client.token, timeout=0.5)


def count_reads(source: VaultKeySource, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    original = source._read

    def counting(path: str):  # type: ignore[no-untyped-def]
        reads.append(path)
        return original(path)

    monkeypatch.setattr(source, "_read", counting)
    return reads


def wait_for_refusal(source: VaultKeySource, secret: str, limit: float = 3.0) -> float:
    start = time.monotonic()
    while source.authenticate(secret) is not None:
        assert time.monotonic() - start < limit, "key still accepted"
        time.sleep(0.01)
    return time.monotonic() - start


def test_valid_key_authenticates_with_its_tenant_and_scopes(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str
) -> None:
    key = key_admin.issue_key(tenant, ["read"])
    incarnation = key_admin.get_key(key.key_id).incarnation
    assert incarnation is not None
    assert VaultKeySource(service_vault).authenticate(key.secret) == Principal(
        tenant, key.key_id, frozenset({"read"}), incarnation)


def test_wrong_secret_malformed_and_unknown_keys_are_refused(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str
) -> None:
    key = key_admin.issue_key(tenant)
    source = VaultKeySource(service_vault)
    assert source.authenticate(key.secret) is not None
    forged = key.secret[:-4] + ("AAAA" if not key.secret.endswith("AAAA") else "BBBB")
    assert source.authenticate(forged) is None
    assert source.authenticate("not-a-key") is None
    assert source.authenticate("fsk_aaaaaaaaaaaa_" + "A" * 43) is None
    assert source.authenticate(key.secret + "\n") is None  # a key's shape is the whole string, not a prefix
    with pytest.raises(MalformedKey):
        key_id_of(key.secret + "\n")


def test_tenant_a_secret_cannot_pass_as_tenant_b_key(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str
) -> None:
    other = unique("src")
    key_admin.create_tenant(TenantSpec(name=other))
    key_a, key_b = key_admin.issue_key(tenant), key_admin.issue_key(other)
    source = VaultKeySource(service_vault)
    assert source.authenticate(key_b.secret).tenant == other  # type: ignore[union-attr]
    secret_a = key_a.secret.split("_", 2)[2]
    assert source.authenticate(f"fsk_{key_b.key_id}_{secret_a}") is None
    assert source.authenticate(key_a.secret).tenant == tenant  # type: ignore[union-attr]


def test_revocation_reaches_every_listener_once_the_default_cache_ttl_passes(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str
) -> None:
    """A listener's cached answer lasts 0.5 s by default: the README's "refused within 1 s" is that and a Vault read,
    timed end to end in test_security_e2e.py. Here on the sources' own clock, which a slow box cannot move."""
    key = key_admin.issue_key(tenant)
    clock = FakeClock()
    listeners = [VaultKeySource(service_vault, clock=clock), VaultKeySource(service_vault, clock=clock)]  # RESP, HTTP
    assert all(s.authenticate(key.secret) for s in listeners)
    key_admin.revoke_key(key.key_id)
    clock.now += 0.5
    assert all(s.authenticate(key.secret) is None for s in listeners)


def test_rotation_overlap_then_old_key_expires(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str
) -> None:
    old = key_admin.issue_key(tenant)
    source = VaultKeySource(service_vault, cache_ttl=0.1)
    # The overlap runs from before rotate_key's Vault writes: 3 s leaves the two checks below over 2 s of it.
    new = key_admin.rotate_key(old.key_id, overlap=dt.timedelta(seconds=3))
    assert source.authenticate(old.secret) is not None
    assert source.authenticate(new.secret) is not None
    wait_for_refusal(source, old.secret, limit=3 + 2)
    assert source.authenticate(new.secret) is not None


def test_suspending_or_deleting_the_tenant_refuses_its_keys(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str
) -> None:
    key = key_admin.issue_key(tenant)
    source = VaultKeySource(service_vault)
    assert source.authenticate(key.secret) is not None
    key_admin.update_tenant(TenantSpec(name=tenant, suspended=True))
    wait_for_refusal(source, key.secret, limit=0.5 + 2)  # the default cache_ttl, and slack for a loaded box
    key_admin.update_tenant(TenantSpec(name=tenant))
    time.sleep(0.6)
    assert source.authenticate(key.secret) is not None
    key_admin.delete_tenant(tenant)
    wait_for_refusal(source, key.secret, limit=1.0)


def test_a_damaged_tenant_record_keeps_the_other_tenants_and_its_last_spec(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, bao_root: hvac.Client, tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record written over (a mistyped `metrics-token rotate --path`) used to fail every tenant refresh."""
    other = unique("src")
    key_admin.create_tenant(TenantSpec(name=other))
    key = key_admin.issue_key(tenant)
    source = VaultKeySource(service_vault)
    assert {tenant, other} <= {spec.name for spec in source.tenants(fresh=True)}
    meta = f"tenants/{tenant}/meta"
    good = bao_root.secrets.kv.v2.read_secret_version(meta, mount_point="foresight",
                                                      raise_on_deleted_version=True)["data"]["data"]
    bao_root.secrets.kv.v2.create_or_update_secret(meta, {"token": "ab" * 32}, mount_point="foresight")
    with caplog.at_level(logging.ERROR, logger="service.security.vault_source"):
        for _ in range(2):
            names = {spec.name for spec in source.tenants(fresh=True)}
            assert {tenant, other} <= names  # its last known spec: dropping it would flush its data
            assert source.tenant(other) is not None  # a refresh of another tenant (keys revoke) between lists
        assert source.tenant(tenant) is not None and source.authenticate(key.secret) is None
    damaged = [r.getMessage() for r in caplog.records if tenant in r.getMessage()]
    assert damaged == [f"tenant {tenant}: foresight/tenants/{tenant}/meta is not a tenant record (spec: Field "
                       "required); restore an earlier version (`bao kv rollback`) or delete the tenant"]
    assert "abab" not in caplog.text
    bao_root.secrets.kv.v2.create_or_update_secret(meta, good, mount_point="foresight")
    time.sleep(0.6)  # the key's cached refusal
    assert source.authenticate(key.secret) is not None


class DeletedAndCreatedMidIssue(VaultKeyAdmin):
    """A writer whose key issue races a `tenants delete` and a `tenants create` of the same name: both run after
    it read the tenant and before it writes the key, so the key lands under the new tenant's name."""

    def __init__(self, client: hvac.Client, other: VaultKeyAdmin) -> None:
        super().__init__(client)
        self.other = other

    def _claim_key_id(self, tenant: str):  # type: ignore[no-untyped-def]
        self.other.delete_tenant(tenant)
        self.other.create_tenant(TenantSpec(name=tenant))
        return super()._claim_key_id(tenant)


def test_a_key_issued_to_an_earlier_tenant_of_the_name_is_refused(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str
) -> None:
    stray = DeletedAndCreatedMidIssue(key_admin.client, key_admin).issue_key(tenant)
    assert key_admin.get_key(stray.key_id).tenant == tenant  # the deletion missed it: it is the new tenant's now
    source = VaultKeySource(service_vault, cache_ttl=0, negative_ttl=0)
    assert source.authenticate(stray.secret) is None
    assert source.authenticate(key_admin.issue_key(tenant).secret) is not None  # the new tenant's own keys work


def test_cache_answers_repeat_auth_without_vault_reads(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = key_admin.issue_key(tenant)
    clock = FakeClock()
    source = VaultKeySource(service_vault, clock=clock)
    reads = count_reads(source, monkeypatch)
    for _ in range(200):
        assert source.authenticate(key.secret) is not None
    assert len(reads) == 3  # index, key record, tenant meta
    clock.now += 0.6
    assert source.authenticate(key.secret) is not None
    assert len(reads) == 5  # after the TTL: key record and tenant meta again; the index never changes


def test_unknown_key_flood_costs_few_vault_reads(service_vault: hvac.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    source = VaultKeySource(service_vault, clock=clock)
    reads = count_reads(source, monkeypatch)
    unknown = "fsk_bbbbbbbbbbbb_" + "B" * 43
    for _ in range(100):
        assert source.authenticate(unknown) is None
    assert len(reads) == 1
    clock.now += 0.6  # negative answers expire quickly
    assert source.authenticate(unknown) is None
    assert len(reads) == 2


def test_vault_outage_serves_recently_confirmed_keys_and_refuses_the_rest(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    good, revoked, never_seen = (key_admin.issue_key(tenant) for _ in range(3))
    key_admin.revoke_key(revoked.key_id)
    clock = FakeClock()
    source = VaultKeySource(service_vault, clock=clock, stale_grace=60)
    assert source.authenticate(good.secret) is not None
    assert source.authenticate(revoked.secret) is None
    service_vault.url = "http://127.0.0.1:9"  # Vault goes away
    clock.now += 5
    with caplog.at_level(logging.WARNING):
        assert source.authenticate(good.secret) is not None
    assert not source.vault_reachable
    assert "Vault unavailable" in caplog.text
    assert source.authenticate(revoked.secret) is None
    assert source.authenticate(never_seen.secret) is None
    clock.now += 56  # confirmed 61 s ago: beyond stale_grace
    assert source.authenticate(good.secret) is None


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP port that accepts connections and never answers, like a Vault behind a dead load balancer."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_hung_vault_bounds_auth_latency(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str, black_hole: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = key_admin.issue_key(tenant)
    clock = FakeClock()
    source = VaultKeySource(service_vault, clock=clock, retry_interval=5)
    assert source.authenticate(key.secret) is not None
    service_vault.url = black_hole
    reads = count_reads(source, monkeypatch)
    clock.now += 1
    start = time.monotonic()
    assert source.authenticate(key.secret) is not None  # waits one client timeout (0.5 s), then the cache
    assert time.monotonic() - start < 0.5 + 2  # bounded by the timeout: the black hole never answers
    assert len(reads) == 1
    clock.now += 1
    for _ in range(50):
        assert source.authenticate(key.secret) is not None  # within retry_interval: no waiting at all
    assert len(reads) == 1  # not one more read of the hung Vault


def test_forbidden_service_token_falls_back_to_cache_and_logs_an_error(
    openbao: OpenBao, bao_root: hvac.Client, key_admin: VaultKeyAdmin, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = key_admin.issue_key(tenant)
    token = bao_root.auth.token.create(policies=["foresight-service"], ttl="1h")["auth"]["client_token"]
    client = hvac.Client(url=openbao.addr, token=token, timeout=1)
    clock = FakeClock()
    source = VaultKeySource(client, clock=clock)
    assert source.authenticate(key.secret) is not None
    bao_root.auth.token.revoke(token)
    clock.now += 1
    with caplog.at_level(logging.ERROR):
        assert source.authenticate(key.secret) is not None
    assert any(r.levelno == logging.ERROR and "Forbidden" in r.getMessage() for r in caplog.records)


def test_tenants_lists_live_tenants_and_survives_an_outage(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str
) -> None:
    gone = unique("src")
    key_admin.create_tenant(TenantSpec(name=gone))
    key_admin.delete_tenant(gone)
    clock = FakeClock()
    source = VaultKeySource(service_vault, clock=clock)
    names = {t.name for t in source.tenants()}
    assert tenant in names and gone not in names
    service_vault.url = "http://127.0.0.1:9"
    clock.now += 10
    assert tenant in {t.name for t in source.tenants()}
    with pytest.raises(ConnectionError):
        VaultKeySource(service_vault).tenants()


def test_a_fresh_tenant_read_during_an_outage_keeps_the_stale_grace(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str
) -> None:
    """An admin refresh asks for a fresh list: forgetting the cached keys before the read failed refused every key
    (and revoked every session) for the rest of the outage."""
    key, revoked = key_admin.issue_key(tenant), key_admin.issue_key(tenant)
    clock = FakeClock()
    source = VaultKeySource(service_vault, clock=clock, stale_grace=60)
    assert source.authenticate(key.secret) is not None and source.authenticate(revoked.secret) is not None
    assert tenant in {t.name for t in source.tenants()}
    address, service_vault.url = service_vault.url, "http://127.0.0.1:9"  # Vault goes away
    clock.now += 5
    assert tenant in {t.name for t in source.tenants(fresh=True)}  # the last known list
    assert source.authenticate(key.secret) is not None  # still within stale_grace
    service_vault.url = address  # back: a fresh read now forgets the cache, so a revocation shows at once
    clock.now += 2  # past retry_interval
    assert source.authenticate(revoked.secret) is not None  # cached within cache_ttl
    key_admin.revoke_key(revoked.key_id)
    source.tenants(fresh=True)
    assert source.authenticate(revoked.secret) is None and source.authenticate(key.secret) is not None


@pytest.fixture
def error_page() -> Iterator[Callable[[int], str]]:
    """A load balancer in front of Vault that answers every request with one status code and no JSON."""
    servers: list[http.server.HTTPServer] = []

    def serve(status: int) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_LIST = do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [504, 501, 401, 400])
def test_any_vault_error_but_not_found_is_an_outage(
    key_admin: VaultKeyAdmin, service_vault: hvac.Client, tenant: str, error_page: Callable[[int], str],
    status: int,
) -> None:
    """A 504 from a load balancer (hvac's UnexpectedError), a 501 (VaultNotInitialized), ... used to escape
    authenticate(): AUTH failed with an internal error instead of using the stale grace."""
    key, never_seen = key_admin.issue_key(tenant), key_admin.issue_key(tenant)
    clock = FakeClock()
    source = VaultKeySource(service_vault, clock=clock, stale_grace=60)
    assert source.authenticate(key.secret) is not None and source.tenants()
    service_vault.url = error_page(status)
    clock.now += 5
    assert source.authenticate(key.secret) is not None
    assert not source.vault_reachable
    assert source.authenticate(never_seen.secret) is None
    assert tenant in {t.name for t in source.tenants(fresh=True)}
    clock.now += 56  # confirmed 61 s ago: beyond stale_grace
    assert source.authenticate(key.secret) is None
