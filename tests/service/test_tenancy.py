"""Tenants are isolated: keys, memory budgets and rate quotas never cross from one tenant to another."""

from __future__ import annotations

import json
import socket
import ssl
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.store.memory import ENTRY_OVERHEAD
from tests import servers
from tests.service.conftest import ProductionService
from tests.service.harness import RawClient, running_service, write_tenants_file
from tests.tlsutil import PKI

NO_RETRY = Retry(NoBackoff(), 0)  # an auth failure must surface at once, not after redis-py's backoff


def _client(prod: ProductionService, tenant: str) -> redis.Redis:
    return redis.Redis(port=prod.svc.resp_port, ssl=True, ssl_ca_certs=str(prod.pki.ca_cert),
                       password=prod.keys[tenant].secret)


def test_tenant_key_cannot_read_other_tenant(prod_service: ProductionService) -> None:
    acme, globex = _client(prod_service, "acme"), _client(prod_service, "globex")
    acme.set("plan", "acme-secret-plan")
    assert globex.get("plan") is None
    assert globex.exists("plan") == 0
    globex.set("plan", "globex-plan")
    assert acme.get("plan") == b"acme-secret-plan"
    assert acme.dbsize() == 1 and globex.dbsize() == 1


def test_scripts_and_their_cache_are_the_tenants_own(prod_service: ProductionService) -> None:
    acme, globex = _client(prod_service, "acme"), _client(prod_service, "globex")
    acme.set("plan", "acme-plan")
    sha = acme.script_load("return redis.call('GET', KEYS[1])")
    assert acme.evalsha(sha, 1, "plan") == b"acme-plan"
    assert globex.script_exists(sha) == [False]
    with pytest.raises(redis.exceptions.NoScriptError):
        globex.evalsha(sha, 1, "plan")
    assert globex.eval("return redis.call('GET', KEYS[1])", 1, "plan") is None
    globex.script_flush()
    assert acme.script_exists(sha) == [True]


def test_client_ids_say_nothing_of_other_tenants_connections(prod_service: ProductionService) -> None:
    """With Redis's counter, two CLIENT IDs of one tenant would count the connections others opened between them."""
    acme = [_client(prod_service, "acme") for _ in range(3)]
    ids = [int(acme[0].client_id())]
    for _ in range(5):
        _client(prod_service, "globex").ping()
    ids += [int(client.client_id()) for client in acme[1:]]
    assert len(set(ids)) == 3 and all(0 < i < 2**53 for i in ids)
    assert min(abs(a - b) for a in ids for b in ids if a != b) > 1000  # no sequence to read (chance: ~1e-12)


def test_a_failed_tls_handshake_keeps_no_client_id(prod_service: ProductionService) -> None:
    """Drawn once connected: a connection whose TLS handshake fails never reaches connection_lost to give it back."""
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", prod_service.svc.resp_port), timeout=5) as raw:
            raw.sendall(b"PING\r\n" * 100)  # no TLS: the handshake fails
            raw.recv(100)
    client = _client(prod_service, "acme")
    assert client.ping()
    assert prod_service.svc.state._client_ids == {int(client.client_id())}


def test_info_counts_the_callers_own_traffic_only(prod_service: ProductionService) -> None:
    """A tenant's INFO never reveals how busy the others are: connections and commands are its own."""
    acme, globex = _client(prod_service, "acme"), _client(prod_service, "globex")
    for _ in range(3):
        _client(prod_service, "acme").ping()  # three more acme connections, each AUTH + PING
    pipe = acme.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"k{i}", "v")
    pipe.execute()
    stats = globex.info("stats")
    assert stats["total_connections_received"] == 1
    assert stats["total_commands_processed"] < 10  # its handshake and this INFO; none of acme's 200
    mine = acme.info("stats")
    assert mine["total_connections_received"] == 4 and mine["total_commands_processed"] >= 203


def test_unauthenticated_and_wrong_keys_are_refused(prod_service: ProductionService) -> None:
    anon = redis.Redis(port=prod_service.svc.resp_port, ssl=True, ssl_ca_certs=str(prod_service.pki.ca_cert),
                       retry=NO_RETRY)
    with pytest.raises(redis.AuthenticationError):
        anon.get("x")
    secret = prod_service.keys["acme"].secret
    forged = secret[:-4] + ("BBBB" if secret.endswith("AAAA") else "AAAA")
    bad = redis.Redis(port=prod_service.svc.resp_port, ssl=True, ssl_ca_certs=str(prod_service.pki.ca_cert),
                      password=forged, retry=NO_RETRY)
    with pytest.raises(redis.AuthenticationError, match="invalid username-password"):
        bad.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=prod_service.svc.resp_port, ssl=True, ssl_ca_certs=str(prod_service.pki.ca_cert),
                    password="not-a-key", retry=NO_RETRY).ping()


def test_auth_with_tenant_username(prod_service: ProductionService) -> None:
    key = prod_service.keys["acme"].secret
    ok = redis.Redis(port=prod_service.svc.resp_port, ssl=True, ssl_ca_certs=str(prod_service.pki.ca_cert),
                     username="acme", password=key)
    assert ok.ping() is True
    wrong_user = redis.Redis(port=prod_service.svc.resp_port, ssl=True, ssl_ca_certs=str(prod_service.pki.ca_cert),
                             username="globex", password=key, retry=NO_RETRY)
    with pytest.raises(redis.AuthenticationError):
        wrong_user.ping()


def test_http_tenant_isolation_and_auth(prod_service: ProductionService) -> None:
    url = prod_service.svc.endpoints.http_url
    with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(prod_service.pki.ca_cert))) as http:
        acme = {"Authorization": f"Bearer {prod_service.keys['acme'].secret}"}
        globex = {"Authorization": f"Bearer {prod_service.keys['globex'].secret}"}
        assert http.put("/v1/keys/doc", content=b"acme-data", headers=acme).status_code == 204
        assert http.get("/v1/keys/doc", headers=acme).content == b"acme-data"
        assert http.get("/v1/keys/doc", headers=globex).status_code == 404
        missing = http.get("/v1/keys/doc")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert http.get("/v1/keys/doc", headers={"Authorization": "Bearer fsk_nope"}).status_code == 401
    # and the same key is visible over RESP to the same tenant only
    assert _client(prod_service, "acme").get("doc") == b"acme-data"


def test_memory_budget_evicts_only_own_keys(tmp_path: Path, pki: PKI) -> None:
    tenants = tmp_path / "tenants.json"
    keys = write_tenants_file(tenants, {"small": {"memory_bytes": 64 * 1024}, "steady": {"memory_bytes": 1 << 20}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants) as svc:
        def client(name: str) -> redis.Redis:
            return redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(pki.ca_cert), password=keys[name].secret)

        steady, small = client("steady"), client("small")
        steady.mset({f"hot{i}": "x" * 100 for i in range(200)})
        pipe = small.pipeline(transaction=False)
        for i in range(5000):  # a cold scan far larger than the small tenant's budget
            pipe.set(f"cold{i}", "y" * 200)
        pipe.execute()
        state = svc.state
        assert state.tenants.get("small").store.used <= 64 * 1024
        assert state.tenants.get("small").store.stats.evictions > 4000
        assert steady.mget([f"hot{i}" for i in range(200)]) == [b"x" * 100] * 200
        assert state.tenants.get("steady").store.stats.evictions == 0


def test_value_larger_than_budget_is_refused_with_oom(tmp_path: Path, pki: PKI) -> None:
    tenants = tmp_path / "tenants.json"
    keys = write_tenants_file(tenants, {"tiny": {"memory_bytes": 1024}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants) as svc:
        client = redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(pki.ca_cert), password=keys["tiny"].secret)
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="used memory > 'maxmemory'"):
            client.set("big", "z" * 4096)
        assert client.set("small", "ok") is True
        for write_all in (client.mset, client.msetnx):  # all or nothing: the small pair before it is not kept
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                write_all({"first": "a", "big": "z" * 4096})
            assert client.exists("first", "big") == 0


def test_rename_or_copy_to_a_name_that_does_not_fit_is_refused_and_keeps_the_value() -> None:
    """Near the budget a longer name makes the entry too large: RENAME, RENAMENX and COPY answer OOM, and the
    value stays under its old name (it was deleted before the write that failed, and the connection dropped)."""
    oom = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
    size = 4096 - ENTRY_OVERHEAD - 200  # with a one-byte name the entry fits; with a 300-byte one it does not
    with running_service(dev=True, default_tenant_memory_bytes=4096) as svc:
        client = RawClient(svc.resp_port)
        assert client.send(("SET", "a", "v" * size, "EX", "100")) == b"+OK\r\n"
        for command in (("RENAME", "a", "k" * 300), ("RENAMENX", "a", "k" * 300), ("COPY", "a", "k" * 300)):
            assert client.send(command, ("PING",)) == oom + b"+PONG\r\n", command
            assert client.send(("STRLEN", "a"), ("EXISTS", "k" * 300)) == b":%d\r\n:0\r\n" % size
        assert client.send(("TTL", "a")) == b":100\r\n"
        assert client.send(("RENAME", "a", "b")) == b"+OK\r\n"  # a name that fits still moves it
        assert client.send(("STRLEN", "b")) == b":%d\r\n" % size


def test_an_origin_object_larger_than_the_budget_is_refused_unread(tmp_path: Path) -> None:
    """A tenant's read cannot make the server load more than the tenant may hold: the object's size is checked
    before it is read, and the error says so (GET, MGET and HTTP GET alike, the connection kept)."""
    budget = 1024 * 1024
    with open(tmp_path / "big", "wb") as big:  # the dev tenant reads the origin's root
        big.truncate(64 * budget)  # sparse: 64 MiB that take no disk
    with running_service(dev=True, default_tenant_memory_bytes=budget, origin=str(tmp_path)) as svc:
        client = RawClient(svc.resp_port)
        refused = (b"-ERR origin: origin object for key 'big' is 67108864 bytes, over the 1048576 bytes this tenant "
                   b"can load")
        http = httpx.Client()  # made before tracing: its TLS context and CA bundle are not the read's memory
        http.get(f"{svc.endpoints.http_url}/healthz")
        tracemalloc.start()
        try:
            assert client.send(("GET", "big"), ("PING",)) == refused + b"\r\n+PONG\r\n"
            assert client.send(("MGET", "nope", "big"), ("PING",)) == refused + b"\r\n+PONG\r\n"
            response = http.get(f"{svc.endpoints.http_url}/v1/keys/big")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            http.close()
        assert response.status_code == 502 and "over the 1048576 bytes" in response.json()["detail"]
        assert peak < 8 * budget, peak  # reading it would take 64 MiB; the service's own threads allocate some
        tenant = svc.state.tenants.get("default")
        assert "big" not in tenant.store and tenant.too_large_to_cache == 3 and tenant.origin_errors == 0


def test_an_origin_object_that_fits_the_budget_only_without_its_key_is_served_uncached(tmp_path: Path) -> None:
    """Within the budget but not with the entry's key and overhead: it can be read, not cached (each read loads it
    again), rather than an internal error that closed every connection waiting on the load."""
    (tmp_path / "big").write_bytes(b"b" * 4090)
    with running_service(dev=True, default_tenant_memory_bytes=4096, origin=str(tmp_path)) as svc:
        client = RawClient(svc.resp_port)
        assert client.send(("GET", "big"), ("PING",)) == b"$4090\r\n" + b"b" * 4090 + b"\r\n+PONG\r\n"
        assert client.send(("MGET", "big", "nope"), ("PING",)) == (
            b"*2\r\n$4090\r\n" + b"b" * 4090 + b"\r\n$-1\r\n+PONG\r\n")
        response = httpx.get(f"{svc.endpoints.http_url}/v1/keys/big")
        assert (response.status_code, response.content) == (200, b"b" * 4090)
        tenant = svc.state.tenants.get("default")
        assert "big" not in tenant.store and tenant.too_large_to_cache == 3


def test_rate_quota_gives_clear_error_and_recovers(tmp_path: Path, pki: PKI) -> None:
    tenants = tmp_path / "tenants.json"
    keys = write_tenants_file(tenants, {"limited": {"requests_per_second": 50}, "free": {}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants) as svc:
        def client(name: str) -> redis.Redis:
            return redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(pki.ca_cert), password=keys[name].secret)

        limited, free = client("limited"), client("free")
        pipe = limited.pipeline(transaction=False)
        for _ in range(200):
            pipe.get("k")
        results = pipe.execute(raise_on_error=False)
        refused = [r for r in results if isinstance(r, redis.ResponseError)]
        assert 100 <= len(refused) <= 160
        assert "rate limit exceeded: tenant 'limited' allows 50 requests per second" in str(refused[0])
        assert all(free.get("k") is None for _ in range(300))  # the other tenant is unaffected
        time.sleep(0.3)
        assert limited.get("k") is None  # refilled
        verify = ssl.create_default_context(cafile=str(pki.ca_cert))
        with httpx.Client(base_url=svc.endpoints.http_url, verify=verify) as http:
            headers = {"Authorization": f"Bearer {keys['limited'].secret}"}
            codes = [http.get("/v1/keys/k", headers=headers).status_code for _ in range(80)]
            assert 429 in codes


def test_a_tenant_refresh_neither_refills_nor_resets_the_rate_bucket() -> None:
    """The service applies every tenant's spec again every few seconds: the same rate keeps the bucket as it is, a
    new one keeps the tokens left, so a client that keeps its bucket empty gets no extra burst from either."""
    from service.cache import TenantRegistry
    from service.config import Settings
    from service.tenancy import TenantQuota, TenantSpec

    rate = 100
    registry = TenantRegistry(Settings(dev=True))
    spec = TenantSpec(name="t", quota=TenantQuota(requests_per_second=rate))
    registry.sync([spec])
    tenant = registry.get("t")
    assert tenant is not None
    admitted = 0
    started = time.monotonic()
    while time.monotonic() - started < 0.5:
        registry.sync([spec])  # as the refresh loop does, much more often
        admitted += sum(tenant.admit() for _ in range(50))
    elapsed = time.monotonic() - started
    assert admitted <= rate * elapsed * 1.01 + rate + 1, admitted  # one burst, then the rate: no refill per sync
    registry.sync([TenantSpec(name="t", quota=TenantQuota(requests_per_second=2 * rate))])  # the quota doubles
    assert sum(tenant.admit() for _ in range(2 * rate)) <= rate  # the bucket stays nearly empty, not a new full one
    registry.close()


def test_a_tenant_created_again_under_its_name_gets_a_new_cache_and_only_its_own_keys_reach_it() -> None:
    from service.cache import TenantRegistry
    from service.config import Settings
    from service.tenancy import Principal, TenantSpec

    registry = TenantRegistry(Settings(dev=True))
    registry.sync([TenantSpec(name="t", incarnation="a1")])
    old = registry.get("t")
    assert old is not None
    old.store.set(b"payroll", b"the old tenant's")
    registry.sync([TenantSpec(name="t", incarnation="a1")])  # a refresh: the same tenant keeps its data
    assert registry.get("t") is old
    registry.sync([TenantSpec(name="t", incarnation="b2")])  # deleted and created again between two refreshes
    new = registry.get("t")
    assert new is not None and new is not old and new.store.get(b"payroll") is None
    assert registry.serving(Principal("t", "newkey", incarnation="b2")) is new
    assert registry.serving(Principal("t", "oldkey", incarnation="a1")) is None  # a session of the old tenant's
    assert registry.upsert(TenantSpec(name="t", incarnation="c3")) is not new  # a one-tenant refresh, the same
    registry.close()


def test_tenants_file_errors_name_the_field(tmp_path: Path, pki: PKI) -> None:
    from service.config import ConfigError

    bad = tmp_path / "tenants.json"
    bad.write_text(json.dumps({"tenants": [{"name": "Not_A_Label"}]}))
    with pytest.raises(ConfigError, match=r"tenants\.0\.name"), running_service(
        tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=bad
    ):
        pass


def _exchange(port: int, pieces: list[bytes], ca: Path | None = None) -> tuple[bytes, bool]:
    """Send `pieces` one write at a time (a pause between, so the server reads them apart), stopping once the
    server has closed; then everything it answered, and whether it closed the connection."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=2)
    sock = raw if ca is None else ssl.create_default_context(cafile=str(ca)).wrap_socket(
        raw, server_hostname="localhost")
    reply, closed = b"", False
    with sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.01)
        except OSError:  # closed after its error: what it said is still there to read
            pass
        sock.settimeout(0.5)
        try:
            while chunk := sock.recv(65536):
                reply += chunk
            closed = True
        except TimeoutError:
            pass
        except OSError:
            closed = True
    return reply, closed


def _bulks(count: int, size: int) -> list[bytes]:
    return [b"$%d\r\n%b\r\n" % (size, b"x" * size)] * count


def test_unauthenticated_client_cannot_make_the_server_buffer_much(prod_service: ProductionService) -> None:
    """Within Redis's limits on each argument, a request sent in pieces is still cut off at 64 KiB: hiredis
    drops what it has parsed of an array still arriving, so its buffer never shows the request's size."""
    reply, closed = _exchange(prod_service.svc.resp_port, [b"*10\r\n", *_bulks(10, 16_000)], prod_service.pki.ca_cert)
    assert (reply, closed) == (b"-ERR Protocol error: request larger than 65536 bytes\r\n", True)


def test_an_authenticated_request_sent_in_pieces_is_held_to_max_request_bytes() -> None:
    with running_service(dev=True, max_request_bytes=4096) as svc:
        reply, closed = _exchange(svc.resp_port, [b"*100000\r\n", *_bulks(100, 100)])
        assert (reply, closed) == (b"-ERR Protocol error: request larger than 4096 bytes\r\n", True)
        assert RawClient(svc.resp_port).send(("SET", "k", "x" * 4000)) == b"+OK\r\n"  # one request at the limit


UNAUTHENTICATED: dict[str, list[bytes]] = {
    "a_huge_array_sent_in_pieces": [b"*100000\r\n", *_bulks(30, 4000)],
    "eleven_arguments": [b"*11\r\n"],
    "ten_arguments": [b"*10\r\n", *_bulks(10, 10)],
    "an_argument_over_16_kib": [b"*2\r\n$3\r\nGET\r\n$16385\r\n", b"x" * 16385 + b"\r\n"],
    "an_argument_of_16_kib": [b"*2\r\n$3\r\nGET\r\n$16384\r\n", b"x" * 16384 + b"\r\n"],
    "replies_before_the_refusal": [b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n*12\r\n"],
}


def test_unauthenticated_requests_meet_redis_limits(tmp_path: Path, pki: PKI) -> None:
    """Before AUTH, Redis 7.0 refuses a request of more than 10 arguments, or with one longer than 16 KiB, as
    soon as its header arrives, and closes the connection; a request after a pipelined AUTH is no longer held
    to that (Foresight answers what redis-server with `requirepass` answers, byte for byte)."""
    tenants_file = tmp_path / "tenants.json"
    keys = write_tenants_file(tenants_file, {"acme": {}})
    secret = keys["acme"].secret.encode()
    auth_then_long = RawClient.encode("AUTH", secret) + RawClient.encode("SET", "k", "x" * 20_000)
    cases = {**UNAUTHENTICATED, "auth_then_a_long_argument": [auth_then_long]}
    with servers.redis_server(tls=(pki.ca_cert, pki.cert, pki.key), password=secret.decode()) as reference, \
            running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants_file) as svc:
        for case, pieces in cases.items():
            expected = _exchange(reference.port, pieces, pki.ca_cert)
            assert _exchange(svc.resp_port, pieces, pki.ca_cert) == expected, case


def test_a_transaction_cannot_queue_more_than_one_request_may_hold() -> None:
    with running_service(dev=True, max_request_bytes=4096) as svc:
        client = RawClient(svc.resp_port)  # one command a write: each request is within the limit, the queue not
        assert client.send(("MULTI",)) == b"+OK\r\n"
        assert client.send(("SET", "k0", "x" * 1500)) == b"+QUEUED\r\n"
        assert client.send(("SET", "k1", "x" * 1500)) == b"+QUEUED\r\n"
        assert client.send(("SET", "k2", "x" * 1500)).startswith(b"-ERR transaction larger than 4096 bytes")
        assert client.send(("EXEC",)).startswith(b"-EXECABORT")
        assert client.send(("EXISTS", "k0", "k1", "k2")) == b":0\r\n"  # discarded whole
        assert client.send(("MULTI",), ("SET", "k0", "x" * 1500), ("SET", "k1", "x" * 1500), ("EXEC",)).endswith(
            b"*2\r\n+OK\r\n+OK\r\n")  # the limit is per transaction
