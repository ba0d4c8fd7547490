"""One command's loads are bounded: an MGET, a script's KEYS or a shared-tier load over many missing keys keeps at
most LOADS_IN_FLIGHT of them in flight, not one coroutine per key at once, and answers as before, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis

from service.cache import LOADS_IN_FLIGHT, TenantCache, load_each
from service.origin import OriginError
from tests import servers
from tests.service.harness import RunningService, running_service
from tests.service.test_shared_tier import PASSWORD, eventually, node_settings
from tests.tlsutil import PKI

KEYS = 1500


class InFlight:
    """Wraps an async method of one object, counting the calls in flight (on the service's loop) and the most."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        self.now = self.most = self.calls = 0
        original = getattr(owner, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                return await original(*args, **kwargs)
            finally:
                self.now -= 1

        monkeypatch.setattr(owner, name, counted)


def _tenant(svc: RunningService) -> TenantCache:
    cache = svc.state.tenants.get("default")
    assert cache is not None
    return cache


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """Every third key of k0..k{KEYS-1} is an origin object."""
    root = tmp_path / "origin"
    root.mkdir()
    for i in range(0, KEYS, 3):
        (root / f"k{i}").write_bytes(b"origin %d" % i)
    return root


def _expected(i: int) -> bytes | None:
    return b"origin %d" % i if i % 3 == 0 else b"memory %d" % i if i % 5 == 0 else None


def test_an_mget_of_many_missing_keys_reads_through_a_bounded_number_at_once(
        origin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_service(dev=True, prefetcher="none", origin=str(origin), origin_latency_ms=1) as svc:
        client = redis.Redis(port=svc.resp_port)
        client.mset({f"k{i}": f"memory {i}" for i in range(KEYS) if i % 5 == 0 and i % 3})
        reads = InFlight(monkeypatch, _tenant(svc).origin, "fetch")
        assert client.mget([f"k{i}" for i in range(KEYS)]) == [_expected(i) for i in range(KEYS)]
        assert reads.calls == sum(1 for i in range(KEYS) if i % 5 or i % 3 == 0)
        assert 1 < reads.most <= LOADS_IN_FLIGHT, reads.most


def test_a_scripts_many_missing_keys_read_through_a_bounded_number_at_once(
        origin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_service(dev=True, prefetcher="none", origin=str(origin), origin_latency_ms=1) as svc:
        client = redis.Redis(port=svc.resp_port)
        reads = InFlight(monkeypatch, _tenant(svc).origin, "fetch")
        script = "local n = 0 for _, k in ipairs(KEYS) do if redis.call('GET', k) then n = n + 1 end end return n"
        assert client.eval(script, KEYS, *(f"k{i}" for i in range(KEYS))) == len(range(0, KEYS, 3))
        assert reads.calls == KEYS and 1 < reads.most <= LOADS_IN_FLIGHT, reads.most


def test_an_origin_error_in_a_large_mget_is_the_first_keys_in_order_and_stops_further_reads(
        origin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """k600 and k900 are over the tenant's budget: the reply names k600, as a load of every key would, and no read
    begins once it failed."""
    for i in (600, 900):
        (origin / f"k{i}").write_bytes(b"x" * 8192)
    with running_service(dev=True, prefetcher="none", origin=str(origin), origin_latency_ms=1) as svc:
        tenant = _tenant(svc)

        async def shrink() -> None:
            tenant.store.set_budget(4096)

        svc.call(shrink())
        reads = InFlight(monkeypatch, tenant.origin, "fetch")
        with pytest.raises(redis.ResponseError, match=r"origin: origin object for key 'k600' is 8192 bytes"):
            redis.Redis(port=svc.resp_port).mget([f"k{i}" for i in range(KEYS)])
        assert 600 < reads.calls < 900  # k600's error came before k900's read began


@pytest.fixture(scope="module")
def tier(pki: PKI) -> Iterator[servers.RedisServer]:
    with servers.redis_server(tls=(pki.ca_cert, pki.cert, pki.key), password=PASSWORD) as server:
        yield server


def test_a_delete_of_many_keys_another_node_wrote_loads_them_from_the_tier_a_bounded_number_at_once(
        tier: servers.RedisServer, pki: PKI, origin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = node_settings(tier, pki, origin, tmp_path, shared_tier_timeout_s=10)  # 64 TLS connects on a busy box
    tier_client = redis.Redis(host="localhost", port=tier.port, ssl=True, ssl_ca_certs=str(pki.ca_cert),
                              password=PASSWORD)
    tier_client.flushall()
    with ExitStack() as stack:
        stack.callback(tier_client.close)
        a = stack.enter_context(running_service(**settings))
        b = stack.enter_context(running_service(**settings))
        names = [f"w{i}" for i in range(KEYS)]
        redis.Redis(port=a.resp_port).mset({name: "written on a" for name in names})
        eventually(lambda: tier_client.dbsize() == KEYS, "a's writes reaching the tier")
        b_tier = b.service.shared_tier
        assert b_tier is not None
        tier_reads = InFlight(monkeypatch, b_tier, "get")
        assert redis.Redis(port=b.resp_port).delete(*names) == KEYS  # each loaded from the tier before the DEL
        assert tier_reads.calls == KEYS and 1 < tier_reads.most <= LOADS_IN_FLIGHT, tier_reads.most


async def test_load_each_keeps_order_bounds_its_loads_and_begins_none_after_an_error() -> None:
    in_flight, most, begun, failed = 0, 0, [], False

    async def load(item: int) -> int:
        nonlocal in_flight, most, failed
        assert not failed, f"{item} begun after a load failed"
        begun.append(item)
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.001 * (item % 7))  # finishing out of order
        in_flight -= 1
        if item in (300, 310):
            failed = True
            raise OriginError(f"failed {item}")
        return item * 2

    results = await load_each(load, list(range(1000)), limit=16)
    assert most == 16 and begun == sorted(begun) and len(results) == len(begun) < 1000
    assert results[:300] == [i * 2 for i in range(300)]
    first_error = next(result for result in results if isinstance(result, Exception))
    assert str(first_error) == "failed 300"
    failed = False
    assert await load_each(load, [1, 2, 3]) == [2, 4, 6] and await load_each(load, []) == []
