"""Read-through: misses load from the origin once, failures are clear errors, nothing hangs."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import boto3
import httpx
import pytest
import redis

from service.origin import FsspecOrigin, OriginTimeout, SingleFlight, UnmappableKey
from tests.servers import MotoServer
from tests.service.harness import running_service


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


def test_keys_cannot_escape_the_origin_root(origin_dir: Path) -> None:
    (origin_dir / "secret").write_bytes(b"outside")
    origin = FsspecOrigin(str(origin_dir / "default"))
    for key in (b"../secret", b"/etc/passwd", b"a//b", b"./greeting"):
        with pytest.raises(UnmappableKey, match="path segment"):
            origin.path_for(key)


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


def test_s3_origin_through_moto_server(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.endpoint)
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", moto_server.endpoint)
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint)
    s3.create_bucket(Bucket="origin-bucket")
    s3.put_object(Bucket="origin-bucket", Key="data/default/report.csv", Body=b"a,b\n1,2\n")
    with running_service(dev=True, prefetcher="none", origin="s3://origin-bucket/data/default") as svc:
        client = redis.Redis(port=svc.resp_port)
        assert client.get("report.csv") == b"a,b\n1,2\n"
        assert client.get("absent.csv") is None
        assert client.get("report.csv") == b"a,b\n1,2\n"
        assert svc.state.tenants.get("default").origin_fetches == 2
