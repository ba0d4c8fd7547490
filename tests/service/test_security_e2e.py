"""Issue 3's acceptance, end to end on the real service: Vault-held keys on a real OpenBao, TLS on both
listeners, Vault-transit envelope encryption of the snapshot, a hash-chained audit log and the admin API."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import hvac
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.security.admin_token import new_admin_token
from service.security.apikeys import IssuedKey, hash_key, new_key
from service.security.vault_keys import VaultKeyAdmin, service_policy
from service.snapshot import FILENAME as SNAPSHOT
from service.tenancy import TenantSpec
from tests.servers import OpenBao
from tests.service.harness import RawClient, RunningService, running_service
from tests.tlsutil import PKI

MOUNT = "fs-e2e"
TRANSIT_KEY = "fs-e2e-snapshots"
PKI_MOUNT, PKI_ROLE = "fs-e2e-pki", "foresight-server"
SERVICE_POLICY = "fs-e2e-service"  # its own name: other suites set up the default policy for another mount
NO_RETRY = Retry(NoBackoff(), 0)


@dataclass
class Deployment:
    svc: RunningService
    admin: VaultKeyAdmin
    keys: dict[str, IssuedKey]
    pki: PKI
    admin_token: str
    data_dir: Path
    settings: dict[str, object]

    def redis(self, key: str, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.svc.resp_port, ssl=True, ssl_ca_certs=str(self.pki.ca_cert), password=key,
                           retry=NO_RETRY, **kwargs)  # type: ignore[arg-type]

    def http(self) -> httpx.Client:
        import ssl

        return httpx.Client(base_url=self.svc.endpoints.http_url,
                            verify=ssl.create_default_context(cafile=str(self.pki.ca_cert)))


@pytest.fixture(scope="module")
def vault_admin(openbao: OpenBao) -> VaultKeyAdmin:
    root = openbao.client()
    if "transit/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("transit", path="transit")
    root.secrets.transit.create_key(TRANSIT_KEY, mount_point="transit")
    if f"{PKI_MOUNT}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("pki", path=PKI_MOUNT, config={"max_lease_ttl": "87600h"})
        root.secrets.pki.generate_root("internal", "Foresight e2e Root", mount_point=PKI_MOUNT)
        root.secrets.pki.create_or_update_role(
            PKI_ROLE, {"allowed_domains": "localhost", "allow_localhost": True, "allow_bare_domains": True,
                       "allow_ip_sans": True, "max_ttl": "72h", "key_type": "ec", "key_bits": 256},
            mount_point=PKI_MOUNT)
    admin = VaultKeyAdmin(root, MOUNT)
    admin.setup(transit=("transit", TRANSIT_KEY))
    root.sys.create_or_update_policy(
        SERVICE_POLICY, service_policy(MOUNT, transit=("transit", TRANSIT_KEY), pki=(PKI_MOUNT, PKI_ROLE)))
    return admin


@pytest.fixture
def deployment(openbao: OpenBao, vault_admin: VaultKeyAdmin, pki: PKI, tmp_path: Path) -> Iterator[Deployment]:
    keys = {}
    for tenant in ("acme", "globex"):
        name = f"{tenant}-{tmp_path.name[-6:].lower().replace('_', '-')}".strip("-")
        vault_admin.create_tenant(TenantSpec(name=name))
        keys[tenant] = vault_admin.issue_key(name)
    root: hvac.Client = vault_admin.client
    token = root.auth.token.create(policies=[SERVICE_POLICY], ttl="1h")["auth"]
    token_file = tmp_path / "vault-token"
    token_file.write_text(token["client_token"])
    token_file.chmod(0o600)
    admin_token = new_admin_token()
    data_dir = tmp_path / "data"
    settings: dict[str, object] = dict(
        tls_cert_file=pki.cert, tls_key_file=pki.key, vault_addr=openbao.addr, vault_token_file=token_file,
        vault_kv_mount=MOUNT, kms_provider="vault-transit", kms_key_id=TRANSIT_KEY, data_dir=data_dir,
        admin_token_hash=hash_key(admin_token), auth_cache_ttl_s=0.5,
    )
    with running_service(**settings) as svc:
        yield Deployment(svc, vault_admin, keys, pki, admin_token, data_dir, settings)
    for key in keys.values():
        tenant = vault_admin.get_key(key.key_id).tenant
        vault_admin.delete_tenant(tenant)


def _tenant_of(deployment: Deployment, who: str) -> str:
    return deployment.admin.get_key(deployment.keys[who].key_id).tenant


def _cached_for(deployment: Deployment) -> float:
    """The longest a changed key record can go unseen: the authenticator's cache plus the Vault source's, which
    the service sets to half of auth_cache_ttl_s."""
    ttl = float(deployment.settings["auth_cache_ttl_s"])  # type: ignore[arg-type]
    return ttl + ttl / 2


def test_vault_keys_work_over_resp_and_https_and_isolate_tenants(deployment: Deployment) -> None:
    acme, globex = deployment.redis(deployment.keys["acme"].secret), deployment.redis(deployment.keys["globex"].secret)
    acme.set("order:1", "acme-only")
    assert globex.get("order:1") is None
    with deployment.http() as http:
        auth = {"Authorization": f"Bearer {deployment.keys['globex'].secret}"}
        assert http.get("/v1/keys/order:1", headers=auth).status_code == 404
        assert http.put("/v1/keys/order:1", content=b"globex-only", headers=auth).status_code == 204
        # A tenant's figures are its own: globex missed twice and holds one key; acme's read is not in them.
        mine = http.get("/v1/stats", headers=auth).json()
        assert mine["tenant"] == _tenant_of(deployment, "globex")
        assert (mine["stats"]["keyspace_hits"], mine["stats"]["keyspace_misses"]) == (0, 2)
        assert 0 < mine["memory"]["used_memory"] < mine["memory"]["maxmemory"]
        assert mine["prefetch"]["prefetcher"] == "none"  # no origin to prefetch from
        assert http.get("/v1/stats").status_code == 401
    assert acme.get("order:1") == b"acme-only"
    assert globex.get("order:1") == b"globex-only"
    assert acme.info("stats")["keyspace_hits"] == 1 and acme.info("server")["tenant"] == _tenant_of(deployment, "acme")


def test_scopes_issued_in_vault_are_enforced(deployment: Deployment) -> None:
    tenant = _tenant_of(deployment, "acme")
    deployment.redis(deployment.keys["acme"].secret).set("report", "q3")
    reader = deployment.admin.issue_key(tenant, ["read"])
    owner = deployment.admin.issue_key(tenant, ["read", "write", "admin"])
    read_only = deployment.redis(reader.secret)
    assert read_only.get("report") == b"q3"
    with pytest.raises(redis.exceptions.NoPermissionError, match="'set' command: it needs the 'write' scope"):
        read_only.set("report", "defaced")
    with pytest.raises(redis.exceptions.NoPermissionError, match="needs the 'admin' scope"):
        deployment.redis(deployment.keys["acme"].secret).flushdb()
    with deployment.http() as http:
        assert http.delete("/v1/keys/report", headers={"Authorization": f"Bearer {reader.secret}"}).status_code == 403
    assert deployment.redis(owner.secret).flushdb() is True
    assert read_only.get("report") is None


def test_redis_cli_tls_auth_with_vault_key(deployment: Deployment) -> None:
    key = deployment.keys["acme"].secret
    out = subprocess.run(["redis-cli", "--tls", "--cacert", str(deployment.pki.ca_cert), "-p",
                          str(deployment.svc.resp_port), "--no-auth-warning", "-a", key, "PING"],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout == "PONG\n"


def test_revoked_key_is_refused_within_the_cache_ttls_on_every_listener(deployment: Deployment) -> None:
    key = deployment.keys["acme"]
    connected = deployment.redis(key.secret)
    assert connected.set("k", "v") is True
    deployment.admin.revoke_key(key.key_id)
    revoked_at = time.monotonic()
    bound = _cached_for(deployment) + 2.0  # 2 s for the Vault reads and a loaded machine
    refused_resp = refused_http = None
    with deployment.http() as http:
        while time.monotonic() - revoked_at < bound + 1 and (refused_resp is None or refused_http is None):
            try:
                connected.get("k")
            except redis.AuthenticationError:
                refused_resp = refused_resp or time.monotonic() - revoked_at
            status = http.get("/v1/keys/k", headers={"Authorization": f"Bearer {key.secret}"}).status_code
            if status == 401:
                refused_http = refused_http or time.monotonic() - revoked_at
            time.sleep(0.02)
    assert refused_resp is not None and refused_resp <= bound, (refused_resp, bound)
    assert refused_http is not None and refused_http <= bound, (refused_http, bound)
    with pytest.raises(redis.AuthenticationError):
        deployment.redis(key.secret).ping()


def test_rotation_keeps_old_key_for_the_overlap_then_refuses_it(deployment: Deployment) -> None:
    old = deployment.keys["globex"]
    overlap = 3.0  # rotate_key starts the overlap before its Vault writes: room for them and the pings below
    new = deployment.admin.rotate_key(old.key_id, overlap=dt.timedelta(seconds=overlap))
    assert deployment.redis(new.secret).ping() is True
    assert deployment.redis(old.secret).ping() is True  # still inside the overlap window
    time.sleep(overlap + _cached_for(deployment) + 0.5)  # the old key has expired and no cache still trusts it
    with pytest.raises(redis.AuthenticationError):
        deployment.redis(old.secret).ping()
    assert deployment.redis(new.secret).ping() is True


def test_admin_api_needs_the_admin_token_never_a_tenant_key(deployment: Deployment) -> None:
    with deployment.http() as http:
        assert http.get("/admin/v1/tenants").status_code == 401
        tenant_key = {"Authorization": f"Bearer {deployment.keys['acme'].secret}"}
        assert http.get("/admin/v1/tenants", headers=tenant_key).status_code == 403
        assert http.get("/admin/v1/tenants", headers={"Authorization": "Bearer fsadm_wrong"}).status_code == 401
        admin = {"Authorization": f"Bearer {deployment.admin_token}"}
        new_tenant = f"late-{int(time.time() * 1000) % 10**8}"
        deployment.admin.create_tenant(TenantSpec(name=new_tenant))
        key = deployment.admin.issue_key(new_tenant)
        one = http.post(f"/admin/v1/tenants/{new_tenant}/refresh", headers=admin)
        assert one.json() == {"tenant": new_tenant, "served": True}
        assert deployment.redis(key.secret).set("x", "1") is True  # usable at once, no periodic wait
        refreshed = http.post("/admin/v1/tenants/refresh", headers=admin)
        assert refreshed.status_code == 200 and new_tenant in refreshed.json()["tenants"]
        usage = {t["name"]: t for t in http.get("/admin/v1/tenants", headers=admin).json()}
        assert usage[new_tenant]["keys"] == 1
        purged = http.delete(f"/admin/v1/tenants/{new_tenant}/data", headers=admin)
        assert purged.json() == {"tenant": new_tenant, "keys_removed": 1}
        assert http.delete("/admin/v1/tenants/nope/data", headers=admin).status_code == 404
        deployment.admin.delete_tenant(new_tenant)
        gone = http.post(f"/admin/v1/tenants/{new_tenant}/refresh", headers=admin)
        assert gone.json() == {"tenant": new_tenant, "served": False}
        with pytest.raises(redis.AuthenticationError):
            deployment.redis(key.secret).ping()


def test_a_tenant_list_read_before_a_tenant_refresh_never_undoes_it(deployment: Deployment) -> None:
    """The race behind a new tenant's first login being refused now and then: the periodic (or an admin) list
    read starts, the tenant is created and refreshed, then the older list is applied. The list is held open
    here so the order is certain."""
    source = deployment.svc.state.authenticator.source  # type: ignore[union-attr]
    listed, release = threading.Event(), threading.Event()
    read_list = source.tenants

    def slow_list(fresh: bool = False) -> list[TenantSpec]:
        specs = read_list(fresh)  # read before the new tenant exists
        listed.set()
        release.wait(30)
        return specs

    new_tenant = f"raced-{int(time.time() * 1000) % 10**8}"
    admin = {"Authorization": f"Bearer {deployment.admin_token}"}
    source.tenants = slow_list  # type: ignore[method-assign]
    try:
        with deployment.http() as http, ThreadPoolExecutor(2) as pool:
            full = pool.submit(http.post, "/admin/v1/tenants/refresh", headers=admin)
            assert listed.wait(30)
            deployment.admin.create_tenant(TenantSpec(name=new_tenant))
            key = deployment.admin.issue_key(new_tenant)
            one = pool.submit(http.post, f"/admin/v1/tenants/{new_tenant}/refresh", headers=admin, timeout=30)
            time.sleep(0.5)  # time for the tenant's refresh to overtake the list, were reloads not one at a time
            release.set()
            assert full.result().status_code == 200
            assert one.result().json() == {"tenant": new_tenant, "served": True}
        assert deployment.redis(key.secret).ping()
    finally:
        release.set()
        del source.tenants
        deployment.admin.delete_tenant(new_tenant)


def test_audit_log_records_auth_and_verifies(deployment: Deployment) -> None:
    key = deployment.keys["acme"]
    deployment.redis(key.secret).ping()
    with pytest.raises(redis.AuthenticationError):
        deployment.redis(key.secret[:-3] + "xyz").ping()
    audit = deployment.data_dir / "audit.log"
    text = audit.read_text()
    assert f'"key_id":"{key.key_id}"' in text.replace(" ", "")
    assert '"outcome":"failure"' in text.replace(" ", "")
    assert key.secret not in text
    verify = subprocess.run([sys.executable, "-c", "from service.cli import main; main()", "audit", "verify",
                             str(audit)], capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _count_lookups(deployment: Deployment) -> list[int]:
    """How many keys the service asked Vault about from now on (one or two KV reads each)."""
    source = deployment.svc.state.authenticator.source  # type: ignore[union-attr]
    asked = [0]
    authenticate = source.authenticate

    def counting(api_key: str) -> object:
        asked[0] += 1
        return authenticate(api_key)

    source.authenticate = counting
    return asked


def _audit_lines(deployment: Deployment) -> list[dict[str, object]]:
    return [json.loads(line) for line in (deployment.data_dir / "audit.log").read_text().splitlines()]


def _resp_from(deployment: Deployment, address: str) -> ssl.SSLSocket:
    """A TLS connection to the RESP port whose client address is `address` (any of 127/8 on Linux)."""
    raw = socket.create_connection(("127.0.0.1", deployment.svc.resp_port), timeout=10, source_address=(address, 0))
    context = ssl.create_default_context(cafile=str(deployment.pki.ca_cert))
    return context.wrap_socket(raw, server_hostname="localhost")


def _auth(connection: ssl.SSLSocket, key: str) -> bytes:
    connection.sendall(RawClient.encode("AUTH", key))
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += connection.recv(4096)
    return reply


def test_a_flood_of_random_keys_costs_bounded_vault_reads_and_audit_lines(deployment: Deployment) -> None:
    """Each unauthenticated request with a well-formed random key cost a Vault read and an audit line: 1500
    requests, 1502 reads and 600 KB of audit. After the burst (20 failures, then 2 a second) an address is
    answered 429 with no read and no line each; one summary line counts them."""
    asked = _count_lookups(deployment)
    audit_before = len(_audit_lines(deployment))
    tls = ssl.create_default_context(cafile=str(deployment.pki.ca_cert))

    async def flood() -> list[int]:
        async with httpx.AsyncClient(base_url=deployment.svc.endpoints.http_url, verify=tls) as client:
            turns = asyncio.Semaphore(16)

            async def one() -> int:
                async with turns:
                    headers = {"Authorization": f"Bearer {new_key().secret}"}
                    return (await client.get("/v1/keys/x", headers=headers)).status_code

            return await asyncio.gather(*(one() for _ in range(1000)))

    started = time.monotonic()
    statuses = asyncio.run(flood())
    elapsed = time.monotonic() - started
    bound = 20 + 2 * elapsed + 2
    assert set(statuses) == {401, 429}
    assert statuses.count(401) <= bound and asked[0] <= bound, (statuses.count(401), asked[0], elapsed)
    failures = [line for line in _audit_lines(deployment)[audit_before:] if line["outcome"] == "failure"]
    assert len(failures) <= bound

    valid = {"Authorization": f"Bearer {deployment.keys['acme'].secret}"}
    elsewhere = httpx.HTTPTransport(verify=tls, local_address="127.0.0.2")
    with httpx.Client(base_url=deployment.svc.endpoints.http_url, transport=elsewhere) as other:
        started = time.monotonic()
        assert other.get("/v1/keys/x", headers=valid).status_code == 404  # logged in: the key does not exist
        assert time.monotonic() - started < 2.0  # no wait for the flooding address's refusals
    with deployment.http() as http:
        # The bucket refills at 2 tokens a second, so a token can come back between the flood and the first guess:
        # that guess is then let through (401). The next ones come too soon after it for another token.
        guesses: list[httpx.Response] = []
        while len(guesses) < 3 and (not guesses or guesses[-1].status_code != 429):
            guesses.append(http.get("/v1/keys/x", headers={"Authorization": f"Bearer {new_key().secret}"}))
        limited = guesses[-1]
        assert limited.status_code == 429 and limited.headers["retry-after"] == "1", [g.status_code for g in guesses]
        assert all(g.status_code == 401 for g in guesses[:-1]), [g.status_code for g in guesses]
        time.sleep(0.6)  # a token back: the flooding address logs in with a valid key
        assert http.get("/v1/keys/x", headers=valid).status_code == 404

    deployment.svc.call(deployment.svc.state.authenticator.write_summary())
    summaries = [line for line in _audit_lines(deployment) if line["action"] == "auth.throttled"]
    assert len(summaries) == 1 and summaries[0]["source"] == "127.0.0.1"
    refused = statuses.count(429) + sum(g.status_code == 429 for g in guesses)
    assert summaries[0]["details"] == {"refused": refused, "listeners": ["http"],
                                       "reason": "too many failed logins from this address"}


def test_failed_resp_auths_are_limited_per_address(deployment: Deployment) -> None:
    asked = _count_lookups(deployment)
    started = time.monotonic()
    with _resp_from(deployment, "127.0.0.1") as guesser:
        replies = [_auth(guesser, new_key().secret) for _ in range(60)]
        elapsed = time.monotonic() - started
        guesser.sendall(RawClient.encode("PING"))
        assert guesser.recv(100).startswith(b"-NOAUTH")
    wrong = [r for r in replies if r.startswith(b"-WRONGPASS")]
    refused = [r for r in replies if r.startswith(b"-ERR too many failed logins from this address: try again in")]
    assert len(wrong) + len(refused) == 60 and 20 <= len(wrong) <= 20 + 2 * elapsed + 1 and asked[0] == len(wrong)
    with _resp_from(deployment, "127.0.0.2") as other:
        assert _auth(other, deployment.keys["globex"].secret) == b"+OK\r\n"
        other.sendall(RawClient.encode("PING"))
        assert other.recv(100) == b"+PONG\r\n"


def test_a_full_audit_disk_refuses_new_logins_on_both_listeners_and_they_resume_once_it_has_room(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    """A login the audit log cannot record is refused with a clear answer, not let in unrecorded and not an
    'internal error' with a traceback each; sessions made before keep working."""
    audit = deployment.svc.state.audit
    assert audit is not None
    before = deployment.redis(deployment.keys["acme"].secret)
    assert before.set("held", "1")
    full = os.open("/dev/full", os.O_WRONLY)  # the kernel's own ENOSPC on every write
    with audit._lock:
        saved, audit._fd = audit._fd, full
    try:
        with caplog.at_level(logging.ERROR), deployment.http() as http:
            bearer = {"Authorization": f"Bearer {deployment.keys['globex'].secret}"}
            response = http.get("/v1/keys/held", headers=bearer)
            assert response.status_code == 503 and response.headers["Retry-After"] == "5"
            assert "the audit log cannot be written, so logins are refused" in response.text
            replies = []
            for key in (deployment.keys["acme"].secret, new_key().secret, deployment.keys["globex"].secret):
                with _resp_from(deployment, "127.0.0.3") as connection:
                    replies.append(_auth(connection, key))
            assert replies == [b"-ERR the audit log cannot be written, so logins are refused: try again in 5 s\r\n"] * 3
            assert before.get("held") == b"1"  # logged in before: no login, no audit line needed
        errors = [r.getMessage() for r in caplog.records if "audit log cannot be written" in r.getMessage()]
        assert len(errors) == 1 and errors[0].startswith("refused 1 login(s)")  # once a minute, not once a login
        assert "Traceback" not in caplog.text
    finally:
        with audit._lock:
            audit._fd = saved
        os.close(full)
    with _resp_from(deployment, "127.0.0.3") as connection:
        assert _auth(connection, deployment.keys["acme"].secret) == b"+OK\r\n"
    verify = subprocess.run([sys.executable, "-c", "from service.cli import main; main()", "audit", "verify",
                             str(deployment.data_dir / "audit.log")], capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0, verify.stderr  # nothing half-written while the disk was full


def test_snapshot_is_encrypted_and_restores_after_restart(deployment: Deployment) -> None:
    key = deployment.keys["acme"]
    deployment.redis(key.secret).set("warm", "plaintext-marker-value", ex=600)
    deployment.svc.call(deployment.svc.service.stop())
    snapshot = deployment.data_dir / SNAPSHOT
    raw = snapshot.read_bytes()
    assert b"plaintext-marker-value" not in raw and b"warm" not in raw
    with running_service(**deployment.settings) as svc:
        client = redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(deployment.pki.ca_cert),
                             password=key.secret)
        assert client.get("warm") == b"plaintext-marker-value"
        assert 590 < client.ttl("warm") <= 600
    assert (deployment.data_dir / SNAPSHOT).exists()  # written again on this clean stop


def test_tampered_snapshot_is_rejected_and_service_starts_cold(deployment: Deployment,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    key = deployment.keys["acme"]
    deployment.redis(key.secret).set("warm", "v")
    deployment.svc.call(deployment.svc.service.stop())
    snapshot = deployment.data_dir / SNAPSHOT
    raw = bytearray(snapshot.read_bytes())
    raw[-20] ^= 0x01
    snapshot.write_bytes(bytes(raw))
    with caplog.at_level(logging.ERROR), running_service(**deployment.settings) as svc:
        client = redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(deployment.pki.ca_cert),
                             password=key.secret)
        assert client.get("warm") is None
    assert "failed verification" in caplog.text
    assert snapshot.with_suffix(".rejected").exists()


def test_no_issued_key_appears_in_logs(deployment: Deployment, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        for who in ("acme", "globex"):
            deployment.redis(deployment.keys[who].secret).set("k", "v")
        deployment.admin.revoke_key(deployment.keys["acme"].key_id)
        time.sleep(0.8)
        with pytest.raises(redis.AuthenticationError):
            deployment.redis(deployment.keys["acme"].secret).ping()
        with deployment.http() as http:
            http.get("/v1/keys/k", headers={"Authorization": f"Bearer {deployment.keys['globex'].secret}"})
    captured = caplog.text + (deployment.data_dir / "audit.log").read_text()
    assert deployment.keys["acme"].key_id in captured  # the public id is there, so the scan looks at the right text
    for key in deployment.keys.values():
        assert key.secret not in captured
        assert key.secret.split("_", 2)[2] not in captured  # the secret part may itself hold "_"
    assert deployment.admin_token not in captured


def test_certificate_from_vault_pki(deployment: Deployment, tmp_path: Path) -> None:
    settings = {k: v for k, v in deployment.settings.items() if k not in ("tls_cert_file", "tls_key_file")}
    settings.update(tls_vault_pki_role=PKI_ROLE, tls_vault_pki_mount=PKI_MOUNT, tls_common_name="localhost",
                    tls_alt_names=["127.0.0.1"], data_dir=tmp_path / "pki-data")
    with running_service(**settings) as svc:
        ca = tmp_path / "pki-data" / "tls" / "ca.crt"
        client = redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(ca),
                             password=deployment.keys["acme"].secret)
        assert client.ping() is True
        with pytest.raises(redis.ConnectionError):  # the file-based test CA does not vouch for it
            redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(deployment.pki.ca_cert),
                        password=deployment.keys["acme"].secret, retry=NO_RETRY).ping()


def test_certificate_rotation_keeps_established_connections(deployment: Deployment, tmp_path: Path) -> None:
    import shutil

    from tests.tlsutil import make_pki

    cert_dir = tmp_path / "live"
    cert_dir.mkdir()
    shutil.copy(deployment.pki.cert, cert_dir / "server.pem")
    shutil.copy(deployment.pki.key, cert_dir / "server.key")
    settings = dict(deployment.settings, tls_cert_file=cert_dir / "server.pem", tls_key_file=cert_dir / "server.key",
                    tls_reload_interval_s=0.1, data_dir=tmp_path / "rot-data")
    with running_service(**settings) as svc:
        key = deployment.keys["acme"].secret
        before = redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(deployment.pki.ca_cert), password=key,
                             single_connection_client=True)
        assert before.set("k", "v") is True
        rotated = make_pki(tmp_path / "rotated")
        shutil.copy(rotated.key, cert_dir / "server.key")
        shutil.copy(rotated.cert, cert_dir / "server.pem")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(rotated.ca_cert), password=key,
                            retry=NO_RETRY).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("the rotated certificate was never served")
        assert before.get("k") == b"v"  # the connection made before the rotation is still up
        import ssl

        for ca, works in ((rotated.ca_cert, True), (deployment.pki.ca_cert, False)):  # HTTPS moved over too
            with httpx.Client(verify=ssl.create_default_context(cafile=str(ca))) as http:
                if works:
                    assert http.get(svc.endpoints.http_url + "/healthz").status_code == 200
                else:
                    with pytest.raises(httpx.ConnectError):
                        http.get(svc.endpoints.http_url + "/healthz")


def test_mutual_tls_refuses_clients_without_a_certificate(deployment: Deployment, tmp_path: Path) -> None:
    from service.security.local_ca import CertificateAuthority

    client_ca = CertificateAuthority.create("e2e client CA")
    (tmp_path / "client-ca.pem").write_bytes(client_ca.cert_pem)
    client_cert = client_ca.issue("app-1", client=True)
    client_cert.write(tmp_path / "client.pem", tmp_path / "client.key")
    settings = dict(deployment.settings, tls_client_ca_file=tmp_path / "client-ca.pem", tls_require_client_cert=True,
                    data_dir=tmp_path / "mtls-data")
    with running_service(**settings) as svc:
        key = deployment.keys["acme"].secret
        with_cert = redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(deployment.pki.ca_cert), password=key,
                                ssl_certfile=str(tmp_path / "client.pem"), ssl_keyfile=str(tmp_path / "client.key"))
        assert with_cert.ping() is True
        without = redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(deployment.pki.ca_cert), password=key,
                              retry=NO_RETRY)
        with pytest.raises(redis.ConnectionError):
            without.ping()
