"""Read-through: misses load from the origin once, failures are clear errors, nothing hangs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from service.cache import TenantRegistry
from service.config import Settings
from service.origin import FsspecOrigin, OriginError, OriginTimeout, ReadSlots, SingleFlight, UnmappableKey
from service.tenancy import TenantQuota, TenantSpec
from tests.object_stores import AzureStore, ObjectStore, uncached
from tests.servers import http_server
from tests.service.harness import RawClient, running_service

# Names real buckets and directories hold: each must read the object of exactly that name.
ORDINARY_NAMES = ["hello world.txt", "café.json", "a(1).csv", "100%", "Q1 & Q2!.pdf", "dir with space/x+y=z.txt"]


@pytest.fixture
def origin_dir(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    (root / "default" / "users").mkdir(parents=True)
    (root / "default" / "greeting").write_bytes(b"hello from origin")
    (root / "default" / "users" / "42").write_bytes(b'{"name": "Ada"}')
    return root


def test_miss_reads_through_then_hits_memory(origin_dir: Path) -> None:
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default")) as svc:
        client = redis.Redis(port=svc.resp_port)
        assert client.get("greeting") == b"hello from origin"
        assert client.get("users/42") == b'{"name": "Ada"}'
        assert client.get("nope") is None
        (origin_dir / "default" / "greeting").write_bytes(b"changed")
        assert client.get("greeting") == b"hello from origin"  # now served from memory
        assert client.mget("greeting", "users/42", "nope") == [b"hello from origin", b'{"name": "Ada"}', None]
        tenant = svc.state.tenants.get("default")
        assert tenant.origin_fetches == 4  # greeting, users/42, nope, and nope again from MGET
        assert tenant.store.stats.hits >= 2


def test_a_transaction_reads_through_in_order(origin_dir: Path) -> None:
    """redis-py's default pipeline (MULTI/EXEC): a GET that misses inside it loads from the origin, and the
    commands after it still run, in order, with their replies in place."""
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default"), origin_latency_ms=20) as svc:
        client = redis.Redis(port=svc.resp_port)
        pipe = client.pipeline()
        pipe.set("local", "v").get("users/42").append("local", "+").get("greeting").get("nope").get("local")
        assert pipe.execute() == [True, b'{"name": "Ada"}', 2, b"hello from origin", None, b"v+"]
        assert client.get("users/42") == b'{"name": "Ada"}' and svc.state.tenants.get("default").origin_fetches == 3


def test_getrange_reads_through_then_slices(origin_dir: Path) -> None:
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default")) as svc:
        client = redis.Redis(port=svc.resp_port)
        assert client.getrange("users/42", 2, 5) == b"name"  # a miss: the whole object loaded, then the range
        assert client.get("users/42") == b'{"name": "Ada"}'  # ... and cached whole
        assert client.getrange("missing/object", 0, -1) == b""  # Redis's answer for a key that is nowhere
        assert svc.state.tenants.get("default").origin_fetches == 2


def test_getex_reads_through_like_get_and_sets_the_loaded_keys_expiry(origin_dir: Path) -> None:
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default"), origin_latency_ms=20) as svc:
        client = redis.Redis(port=svc.resp_port)
        assert client.getex("greeting", ex=100) == b"hello from origin"  # a miss: loaded, then given its expiry
        assert 99 <= client.ttl("greeting") <= 100
        assert client.getex("greeting", persist=True) == b"hello from origin"
        assert client.ttl("greeting") == -1
        assert client.getex("nope", ex=10) is None
        with pytest.raises(redis.ResponseError, match="invalid expire time in 'getex' command"):
            client.execute_command("GETEX", "users/42", "EX", "0")  # loaded, but the expiry is refused
        assert svc.state.tenants.get("default").origin_fetches == 3


def test_concurrent_readers_of_one_key_cause_one_fetch(origin_dir: Path) -> None:
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default"), origin_latency_ms=300) as svc:
        results: list[bytes | None] = []
        barrier = threading.Barrier(20)

        def reader() -> None:
            client = redis.Redis(port=svc.resp_port)
            barrier.wait()
            results.append(client.get("greeting"))

        threads = [threading.Thread(target=reader) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [b"hello from origin"] * 20
        tenant = svc.state.tenants.get("default")
        assert tenant.flights.started == 1 and tenant.origin_fetches == 1


def test_pipeline_order_survives_a_read_through(origin_dir: Path) -> None:
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default"), origin_latency_ms=50) as svc:
        pipe = redis.Redis(port=svc.resp_port).pipeline(transaction=False)
        pipe.set("local", "1").get("greeting").incr("local").get("users/42").get("local")
        assert pipe.execute() == [True, b"hello from origin", 2, b'{"name": "Ada"}', b"2"]


def test_origin_timeout_is_a_clear_error_not_a_hang(origin_dir: Path) -> None:
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default"), origin_latency_ms=2000,
                         origin_timeout_s=0.2) as svc:
        client = redis.Redis(port=svc.resp_port, socket_timeout=5)
        started = time.monotonic()
        with pytest.raises(redis.ResponseError, match=r"origin: origin timed out after 0.2s"):
            client.get("greeting")
        assert time.monotonic() - started < 1.5
        assert client.ping() is True  # the connection is still usable
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            assert http.get("/v1/keys/greeting").status_code == 504


def test_origin_failure_is_reported_over_resp_and_http(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with running_service(dev=True, prefetcher="none", origin=str(not_a_dir)) as svc:
        with pytest.raises(redis.ResponseError, match="origin read failed"):
            redis.Redis(port=svc.resp_port).get("child")
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            response = http.get("/v1/keys/child")
            assert response.status_code == 502 and "origin read failed" in response.json()["detail"]
        assert svc.state.tenants.get("default").origin_errors == 2


def test_origin_errors_name_the_key_and_the_error_kind_never_the_servers_path(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The client learns which key failed and how; the origin's root and the backend's text stay in the log."""
    not_a_dir = tmp_path / "secret-origin-root"
    not_a_dir.write_text("x")
    with caplog.at_level(logging.WARNING), \
            running_service(dev=True, prefetcher="none", origin=str(not_a_dir)) as svc:
        reply = RawClient(svc.resp_port).send(("GET", "child"), ("PING",))
        assert reply == b"-ERR origin: origin read failed for key 'child': NotADirectoryError\r\n+PONG\r\n"
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            detail = http.get("/v1/keys/child").json()["detail"]
        assert detail == "origin: origin read failed for key 'child': NotADirectoryError"
    assert f"{not_a_dir}/child: NotADirectoryError" in caplog.text  # the operator still sees where and why


def test_a_key_too_long_for_the_filesystem_is_a_miss_not_an_origin_error(origin_dir: Path) -> None:
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default")) as svc:
        assert RawClient(svc.resp_port).send(("GET", "x" * 300), ("PING",)) == b"$-1\r\n+PONG\r\n"
        assert httpx.get(f"{svc.endpoints.http_url}/v1/keys/{'x' * 300}").status_code == 404
        assert svc.state.tenants.get("default").origin_errors == 0


def test_keys_cannot_escape_the_origin_root(origin_dir: Path) -> None:
    (origin_dir / "secret").write_bytes(b"outside")
    origin = FsspecOrigin(str(origin_dir / "default"))
    for key in (b"../secret", b"/etc/passwd", b"a//b", b"./greeting"):
        with pytest.raises(UnmappableKey, match="path segment"):
            origin.path_for(key)
    with pytest.raises(UnmappableKey, match="a NUL byte"):
        origin.path_for(b"greeting\x00.txt")


def test_object_names_with_spaces_accents_and_symbols_read_through_from_a_directory(origin_dir: Path) -> None:
    root = origin_dir / "default"
    (root / "dir with space").mkdir()
    for name in ORDINARY_NAMES:
        (root / name).write_bytes(f"data of {name}".encode())
    (root / "hello%20world.txt").write_bytes(b"not this one")  # what the key used to be quoted to
    with running_service(dev=True, prefetcher="none", origin=str(root)) as svc:
        _assert_each_name_reads_its_own_object(svc)


def test_a_key_that_is_not_utf8_reads_the_file_of_exactly_those_bytes_from_a_directory(origin_dir: Path) -> None:
    """A directory's names are bytes: the key b'\\xff.bin' reads the file named b'\\xff.bin'."""
    (origin_dir / "default" / os.fsdecode(b"\xff.bin")).write_bytes(b"latin-1 named")
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default")) as svc:
        client = RawClient(svc.resp_port)
        assert client.send(("GET", b"\xff.bin"), ("GET", b"\xfe"), ("PING",)) == (
            b"$13\r\nlatin-1 named\r\n$-1\r\n+PONG\r\n")
        assert svc.state.tenants.get("default").origin_errors == 0
        svc.state.tenants.get("default").store.flush()
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            assert http.get("/v1/keys/%FF.bin").content == b"latin-1 named"
            assert http.get("/v1/keys/%FE").status_code == 404


def test_unmappable_keys_are_not_counted_as_origin_reads(origin_dir: Path) -> None:
    """Refused before anything is read, they must not trip origin-health alerts."""
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default")) as svc:
        client = RawClient(svc.resp_port)
        for key in (b"a//b", b"../x", b"/etc/passwd", b"./y", b"z/"):
            assert client.send(("GET", key)).startswith(b"-ERR origin: key cannot be mapped"), key
        assert client.send(("GET", "greeting")) == b"$17\r\nhello from origin\r\n"
        metrics = httpx.get(f"{svc.endpoints.http_url}/metrics").text
        assert 'foresight_origin_fetches_total{tenant="default"} 1.0' in metrics
        assert 'foresight_origin_errors_total{tenant="default"} 0.0' in metrics


def test_a_key_no_origin_object_could_have_is_the_clients_error_not_the_origins(origin_dir: Path) -> None:
    with running_service(dev=True, prefetcher="none", origin=str(origin_dir / "default")) as svc:
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            refused = http.get("/v1/keys/a//greeting")
            assert refused.status_code == 400 and "path segment" in refused.json()["detail"]
            assert http.get("/v1/keys/greeting").status_code == 200
        with pytest.raises(redis.ResponseError, match=r"^origin: key cannot be mapped"):
            redis.Redis(port=svc.resp_port).get("a//b")


async def test_singleflight_shares_errors_and_survives_cancelled_reader() -> None:
    flights: SingleFlight[bytes] = SingleFlight()
    gate = asyncio.Event()

    async def slow_fail() -> bytes:
        await gate.wait()
        raise OriginTimeout("slow")

    first = asyncio.create_task(flights.do("k", slow_fail()))
    second = asyncio.create_task(flights.do("k", slow_fail()))
    await asyncio.sleep(0)
    first.cancel()  # one reader goes away; the fetch continues for the other
    gate.set()
    with pytest.raises(OriginTimeout):
        await second
    assert flights.started == 1 and "k" not in flights


def test_an_origin_in_each_clouds_object_store_reads_through(object_store: ObjectStore) -> None:
    bucket = f"origin-{secrets.token_hex(4)}"
    object_store.create_bucket(bucket)
    object_store.put(bucket, "data/default/report.csv", b"a,b\n1,2\n")
    with running_service(dev=True, prefetcher="none", origin=object_store.url(bucket, "data/default")) as svc:
        client = redis.Redis(port=svc.resp_port)
        assert client.get("report.csv") == b"a,b\n1,2\n"
        assert client.get("absent.csv") is None
        assert client.get("report.csv") == b"a,b\n1,2\n"
        tenant = svc.state.tenants.get("default")
        assert (tenant.origin_fetches, tenant.origin_errors) == (2, 0)  # absent is a miss, not an origin error


def test_object_names_with_spaces_accents_and_symbols_read_through_from_each_clouds_store(
    object_store: ObjectStore,
) -> None:
    bucket = f"named-{secrets.token_hex(4)}"
    object_store.create_bucket(bucket)
    for name in ORDINARY_NAMES:
        object_store.put(bucket, f"data/default/{name}", f"data of {name}".encode())
    object_store.put(bucket, "data/default/hello%20world.txt", b"not this one")
    object_store.put(bucket, "data/default/empty", b"")  # a range read of it would be refused
    with running_service(dev=True, prefetcher="none", origin=object_store.url(bucket, "data/default")) as svc:
        _assert_each_name_reads_its_own_object(svc)
        assert RawClient(svc.resp_port).send(("GET", "empty")) == b"$0\r\n\r\n"


def test_an_origin_bucket_that_does_not_exist_is_an_origin_error_until_it_is_made(
    object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt bucket must not pass for an origin without those keys: every read would be a silent miss."""
    from service.origin import fsspec_origin

    bucket = f"absent-{secrets.token_hex(4)}"
    with running_service(dev=True, prefetcher="none", origin=object_store.url(bucket, "data/default")) as svc:
        client = RawClient(svc.resp_port)
        assert client.send(("GET", "report.csv")) == (
            b"-ERR origin: origin read failed for key 'report.csv': the origin's bucket does not exist\r\n")
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            assert http.get("/v1/keys/report.csv").status_code == 502
        assert svc.state.tenants.get("default").origin_errors == 2
        assert bucket not in object_store.buckets()  # reading never makes one

        object_store.create_bucket(bucket)
        monkeypatch.setattr(fsspec_origin, "_BUCKET_RECHECK_S", 0.0)  # the next miss asks again
        assert client.send(("GET", "report.csv")) == b"$-1\r\n"  # made, and empty: a miss, not "does not exist"
        object_store.put(bucket, "data/default/report.csv", b"found")
        assert client.send(("GET", "report.csv"), ("GET", "absent.csv")) == b"$5\r\nfound\r\n$-1\r\n"


def test_a_key_that_is_not_utf8_names_no_stored_object_and_the_connection_stays(object_store: ObjectStore) -> None:
    bucket = f"utf8-only-{secrets.token_hex(4)}"
    object_store.create_bucket(bucket)
    object_store.put(bucket, "data/default/plain", b"hello")
    with running_service(dev=True, prefetcher="none", origin=object_store.url(bucket, "data/default")) as svc:
        client = RawClient(svc.resp_port)
        assert client.send(("GET", b"\xff"), ("GET", "plain")) == (
            b"-ERR origin: key cannot be mapped to an origin object (not UTF-8, as object names are)\r\n"
            b"$5\r\nhello\r\n")
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            assert http.get("/v1/keys/%FF").status_code == 400
        tenant = svc.state.tenants.get("default")
        assert (tenant.origin_fetches, tenant.origin_errors) == (1, 0)


def _assert_each_name_reads_its_own_object(svc: Any) -> None:
    client = redis.Redis(port=svc.resp_port)
    for name in ORDINARY_NAMES:
        assert client.get(name) == f"data of {name}".encode(), name
    svc.state.tenants.get("default").store.flush()
    with httpx.Client(base_url=svc.endpoints.http_url) as http:
        for name in ORDINARY_NAMES:
            assert http.get("/v1/keys/" + quote(name, safe="")).content == f"data of {name}".encode(), name
    assert svc.state.tenants.get("default").origin_errors == 0


async def test_a_cloud_storage_bucket_its_reader_may_not_look_at_still_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """roles/storage.objectViewer reads and lists objects but may not GET the bucket (403): an empty bucket must
    stay a bucket whose keys miss. IAM is what gcp-storage-emulator lacks, so Cloud Storage's documented answers
    (403 on the bucket, an empty listing, 404 on the object) come from a loopback fake."""
    asked: list[str] = []

    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        asked.append(f"{method} {path.split('?')[0]}")
        if path.startswith("/storage/v1/b/viewer-only/o?"):
            return 200, '{"kind": "storage#objects"}'
        if path.startswith("/storage/v1/b/viewer-only?") or path == "/storage/v1/b/viewer-only":
            return 403, '{"error": {"code": 403, "message": "no storage.buckets.get access"}}'
        return 404, '{"error": {"code": 404, "message": "No such object"}}'

    with http_server(answer) as endpoint, uncached("gs"):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        origin = FsspecOrigin("gs://viewer-only/data", timeout_s=20)
        assert await origin.fetch(b"report.csv") is None
    assert "GET /storage/v1/b/viewer-only" in asked  # the bucket was looked at, and its 403 taken as "it exists"


GRANT_HINT = "foresight:originBuckets, or its nodeIdentity output"


async def test_an_object_the_node_may_not_read_on_cloud_storage_is_access_denied_and_the_log_names_the_grant(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Cloud Storage's 403 on an object (no roles/storage.objectViewer), from a loopback fake as above: the client
    hears "access denied", the log says what to grant (gcsfs raises a bare OSError for it)."""
    def answer(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        return 403, '{"error": {"code": 403, "message": "no storage.objects.get access"}}'

    with http_server(answer) as endpoint, uncached("gs"), caplog.at_level(logging.WARNING, "service.origin"):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        with pytest.raises(OriginError, match=r"origin read failed for key 'report\.csv': access denied$"):
            await FsspecOrigin("gs://not-granted/data", timeout_s=20).fetch(b"report.csv")
    assert any("denied" in r.message and GRANT_HINT in r.message for r in caplog.records)


async def test_an_azure_origin_refusing_the_nodes_credential_is_access_denied(
    azurite_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Azurite answers 403 to a request signed with another key, as Azure answers one its RBAC refuses."""
    store = AzureStore(azurite_server.connection_string, azurite_server.account)
    store.create_bucket("denied")
    store.put("denied", "data/report.csv", b"secret")
    wrong = base64.b64encode(secrets.token_bytes(64)).decode()
    connection = ";".join(f"AccountKey={wrong}" if part.startswith("AccountKey=") else part
                          for part in azurite_server.connection_string.split(";"))
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
    with uncached("az"), caplog.at_level(logging.WARNING, "service.origin"):
        origin = FsspecOrigin(store.url("denied", "data"), timeout_s=20)
        with pytest.raises(OriginError, match=r"origin read failed for key 'report\.csv': access denied$"):
            await origin.fetch(b"report.csv")
    assert any(GRANT_HINT in r.message for r in caplog.records)


@contextlib.contextmanager
def _registry(**settings: Any) -> Iterator[TenantRegistry]:
    registry = TenantRegistry(Settings(dev=True, **settings))
    try:
        yield registry
    finally:
        registry.close()


def _release_hung_reads(fifos: list[Path]) -> None:
    """A writer end lets a read blocked opening a FIFO go on (to fail: a pipe is no object)."""
    for fifo in fifos:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))


async def test_a_hung_origin_holds_only_its_own_share_of_the_read_threads(tmp_path: Path) -> None:
    """Reads of one tenant's origin that never return (a blackholed endpoint, an NFS stall; FIFOs here) time out
    but keep their threads: the other tenant's reads must still be answered, and the hung tenant's slots come back
    only when its threads finish."""
    hung, healthy = tmp_path / "hung", tmp_path / "healthy"
    hung.mkdir()
    healthy.mkdir()
    slots = 4
    fifos = [hung / f"k{i}" for i in range(slots)]
    for fifo in fifos:
        os.mkfifo(fifo)  # opening one for reading blocks until a writer comes
    (hung / "later").write_bytes(b"alpha again")
    (healthy / "k").write_bytes(b"beta's data")
    with _registry(origin_max_concurrency=slots, origin_timeout_s=1.0) as registry:
        registry.sync([TenantSpec(name="alpha", quota=TenantQuota(origin=f"file://{hung}")),
                       TenantSpec(name="beta", quota=TenantQuota(origin=f"file://{healthy}"))])
        alpha, beta = registry.get("alpha"), registry.get("beta")
        assert alpha is not None and beta is not None
        try:
            stuck = await asyncio.gather(*(alpha.get(b"k%d" % i) for i in range(slots)), return_exceptions=True)
            assert all(isinstance(result, OriginTimeout) for result in stuck), stuck
            for _ in range(3):
                beta.store.delete(b"k")
                assert await beta.get(b"k") == b"beta's data"
        finally:
            _release_hung_reads(fifos)
        deadline = time.monotonic() + 10
        while True:  # the freed threads give alpha its slot back
            try:
                assert await alpha.get(b"later") == b"alpha again"
                break
            except OriginTimeout:
                assert time.monotonic() < deadline, "alpha's slot never came back"


async def test_the_wait_for_a_read_slot_counts_against_the_reads_timeout(origin_dir: Path) -> None:
    slots = ReadSlots(1)
    holder = FsspecOrigin(str(origin_dir / "default"), latency_ms=3000, timeout_s=30, slots=slots)
    waiter = FsspecOrigin(str(origin_dir / "default"), timeout_s=0.3, slots=slots)
    holding = asyncio.ensure_future(holder.fetch(b"greeting"))  # takes the only slot for 3 s
    await asyncio.sleep(0.1)
    started = time.monotonic()
    try:
        with pytest.raises(OriginTimeout, match=r"origin timed out after 0.3s reading key 'users/42'"):
            await waiter.fetch(b"users/42")
        assert time.monotonic() - started < 2.0
    finally:
        holding.cancel()
        slots.close()


async def test_one_tenants_many_slow_reads_leave_the_other_tenants_slots_free(origin_dir: Path) -> None:
    """40 concurrent 400 ms reads of one origin on 4 slots: another origin's read is answered at once, not after
    the queue ahead of it drains."""
    slots = ReadSlots(4)
    busy = FsspecOrigin(str(origin_dir / "default"), latency_ms=400, timeout_s=30, slots=slots)
    other = FsspecOrigin(str(origin_dir / "default"), timeout_s=5, slots=slots)
    reads = [asyncio.ensure_future(busy.fetch(b"greeting")) for _ in range(40)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    try:
        assert await other.fetch(b"users/42") == b'{"name": "Ada"}'
        assert time.monotonic() - started < 1.0  # before: about 4 s, behind the whole queue
    finally:
        for read in reads:
            read.cancel()
        slots.close()
