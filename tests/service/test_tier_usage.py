"""Each tenant's reads summed over every node in the shared tier (service/tier_usage.py): real service nodes on a
real redis-server, logged in as a user with exactly the ACL the stacks give the pods."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from service import admin
from service.shared_tier import KEY_PREFIX
from service.tier_usage import USAGE_PREFIX, UsageLedger, usage_key
from tests import servers
from tests.service.harness import RunningService, running_service
from tests.service.test_shared_tier import PASSWORD, client, eventually, node_settings
from tests.service.test_shared_tier_auth import ACL
from tests.tlsutil import PKI

POD_USER, POD_PASSWORD = "pods", "pods-password-for-tests"


@pytest.fixture(scope="module")
def tier(pki: PKI) -> Iterator[servers.RedisServer]:
    with servers.redis_server(tls=(pki.ca_cert, pki.cert, pki.key), password=PASSWORD) as server:
        with redis.Redis(port=server.port, ssl=True, ssl_ca_certs=str(pki.ca_cert), password=PASSWORD) as root:
            root.acl_setuser(POD_USER, reset=True, enabled=True, passwords=[f"+{POD_PASSWORD}"])
            root.execute_command("ACL", "SETUSER", POD_USER, *ACL)
        yield server


@pytest.fixture
def tier_client(tier: servers.RedisServer, pki: PKI) -> Iterator[redis.Redis]:
    root = redis.Redis(port=tier.port, ssl=True, ssl_ca_certs=str(pki.ca_cert), password=PASSWORD)
    root.flushall()
    yield root
    root.close()


@pytest.fixture
def settings(tier: servers.RedisServer, pki: PKI, tmp_path: Path) -> dict[str, Any]:
    origin = tmp_path / "origin"
    origin.mkdir()
    (tmp_path / "pods-password").write_text(POD_PASSWORD)
    return node_settings(tier, pki, origin, tmp_path, shared_tier_username=POD_USER,
                         shared_tier_password_file=tmp_path / "pods-password")


def reads(node: RunningService, count: int) -> None:
    pipe = client(node).pipeline(transaction=False)
    for i in range(count):
        pipe.get(f"k{i % 5}")
    pipe.execute()


def usage(node: RunningService) -> dict[str, Any] | None:
    [row] = node.call(admin.tenant_usage(node.state))
    return row["usage"]  # type: ignore[no-any-return]


def test_any_node_answers_with_every_nodes_reads(tier_client: redis.Redis, settings: dict[str, Any]) -> None:
    with running_service(**settings) as a, running_service(**settings) as b:
        reads(a, 30)
        reads(b, 12)
        from_a = usage(a)  # b's reads reach the tier at its next write (every 30 s), or when it answers
        from_b = usage(b)
        assert from_a is not None and from_b is not None
        assert from_a["scope"] == from_b["scope"] == "deployment"
        assert (from_a["reads"], from_b["reads"]) == (30, 42)
        assert from_a["since"] == from_b["since"]
        assert usage(a)["reads"] == 42  # type: ignore[index]
        reads(a, 8)
        assert usage(b)["reads"] == 42  # type: ignore[index]  # a has not written its 8 yet
        assert usage(a)["reads"] == 50  # type: ignore[index]
        assert usage(b)["reads"] == 50  # type: ignore[index]  # a's answer wrote them: nothing counted twice


def test_a_node_that_stops_keeps_its_reads_in_the_total(tier_client: redis.Redis, settings: dict[str, Any]) -> None:
    with running_service(**settings) as a:
        with running_service(**settings) as b:
            reads(b, 25)  # never written before b stops: its stop writes them
        since = usage(a)["since"]  # type: ignore[index]
        assert usage(a) == {"reads": 25, "since": since, "scope": "deployment"}
        with running_service(**settings) as c:  # a restart: a new process, a new field; the old one stays
            reads(c, 5)
            assert usage(c) == {"reads": 30, "since": since, "scope": "deployment"}
        assert len(tier_client.hkeys(usage_key("default"))) == 1 + 3  # since + a's, b's and c's fields
        assert 0 < tier_client.ttl(usage_key("default")) <= 30 * 86400


def test_a_lost_hash_starts_a_new_counter_without_the_reads_already_counted(
        tier_client: redis.Redis, settings: dict[str, Any]) -> None:
    with running_service(**settings) as a:
        reads(a, 20)
        before = usage(a)
        assert before is not None and before["reads"] == 20
        tier_client.delete(usage_key("default"))  # evicted, say (allkeys-lru)
        reads(a, 3)
        after = usage(a)
        assert after is not None and after["since"] != before["since"]  # metering bills it as a counter begun at 0
        assert after["reads"] == 3  # not 23: the 20 were in the lost hash already


def test_writes_are_absolute_so_a_repeated_write_counts_once(
        tier_client: redis.Redis, settings: dict[str, Any]) -> None:
    with running_service(**settings) as a:
        reads(a, 7)
        tier = a.service.shared_tier
        assert tier is not None
        caches = list(a.state.tenants)
        for _ in range(3):  # a write whose answer timed out, sent again
            a.call(tier.usage.write(tier._client, caches))
        assert usage(a)["reads"] == 7  # type: ignore[index]


def test_a_tenants_flush_and_keys_never_reach_its_usage(tier_client: redis.Redis, settings: dict[str, Any]) -> None:
    assert USAGE_PREFIX.startswith(KEY_PREFIX)  # inside the pods' ACL (~fs:*), yet no tenant's prefix
    with running_service(**settings) as a:
        reads(a, 4)
        assert usage(a)["reads"] == 4  # type: ignore[index]
        client(a).set("~usage:default", "x")
        client(a).flushdb()
        eventually(lambda: not tier_client.exists(b"fs:default:~usage:default"), "the flush reaching the tier")
        assert tier_client.exists(usage_key("default"))
        assert usage(a)["reads"] == 4 + 0  # type: ignore[index]  # SET and FLUSHDB are no reads


def test_a_tier_that_cannot_answer_reports_no_usage(tier_client: redis.Redis, settings: dict[str, Any]) -> None:
    """Null, not this node's own counter: metering must skip the run (and bill it next time), never bill a part."""
    with running_service(**settings) as a:
        reads(a, 2)
        tier_client.execute_command("ACL", "SETUSER", POD_USER, "-hgetall")
        try:
            assert usage(a) is None
            assert a.service.shared_tier.stats.errors >= 1  # type: ignore[union-attr]
        finally:
            tier_client.execute_command("ACL", "SETUSER", POD_USER, "+hgetall")
        assert usage(a)["reads"] == 2  # type: ignore[index]


def test_a_node_without_a_tier_answers_for_itself(tmp_path: Path) -> None:
    with running_service(dev=True, prefetcher="none") as alone:
        reads(alone, 6)
        assert usage(alone) == {"reads": 6, "since": alone.state.started, "scope": "node"}


def test_the_nodes_write_their_reads_periodically(tier_client: redis.Redis, settings: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.shared_tier.REPORT_EVERY_S", 0.05)
    with ExitStack() as stack:
        a = stack.enter_context(running_service(**settings))
        reads(a, 9)
        eventually(lambda: tier_client.hget(usage_key("default"), "since"), "a's first periodic write")
        eventually(lambda: sum(int(v) for k, v in tier_client.hgetall(usage_key("default")).items()
                               if k.startswith(b"n:")) == 9, "a's reads in the tier without any admin call")


class _Cache:
    """What the ledger reads of a tenant cache: its tier name and its read counters."""

    def __init__(self, reads: int) -> None:
        self.name, self.tier_name = "acme", "acme.inc1"
        self.store = SimpleNamespace(stats=SimpleNamespace(hits=reads, misses=0))

    def read(self, more: int) -> None:
        self.store.stats.hits += more


class _LosesTheHashOnce:
    """A client whose second pipeline finds the usage hash gone (evicted between a write's two round trips)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client, self.pipelines = client, 0

    def pipeline(self, transaction: bool) -> Any:
        self.pipelines += 1
        if self.pipelines == 2:
            return _DeletingFirst(self.client.pipeline(transaction=transaction), usage_key("acme.inc1"))
        return self.client.pipeline(transaction=transaction)


class _DeletingFirst:
    def __init__(self, pipe: Any, key: bytes) -> None:
        self.pipe, self.key = pipe, key

    async def __aenter__(self) -> Any:
        pipe = await self.pipe.__aenter__()
        pipe.delete(self.key)
        return pipe

    async def __aexit__(self, *exc: object) -> None:
        await self.pipe.__aexit__(*exc)


def test_a_write_that_lands_after_its_hash_was_lost_is_never_counted(tier: servers.RedisServer, pki: PKI,
                                                                    tier_client: redis.Redis) -> None:
    """The hash lost between a write's read of `since` and its HSET: the HSET recreates it without one, and the next
    node stamps a new `since`. Untagged, that node's whole count would be billed again as a new counter."""
    async def scenario() -> list[tuple[int, float]]:
        client = aioredis.Redis(port=tier.port, ssl=True, ssl_ca_certs=str(pki.ca_cert), password=PASSWORD)
        a, b = UsageLedger(b"nodeA"), UsageLedger(b"nodeB")
        on_a, on_b = _Cache(1000), _Cache(0)
        seen = []
        first = (await a.totals(client, [on_a]))["acme"]  # type: ignore[list-item]
        seen.append((first.reads, first.since))
        on_a.read(10)
        await a.write(_LosesTheHashOnce(client), [on_a])  # type: ignore[arg-type, list-item]
        on_b.read(5)
        after = (await b.totals(client, [on_b]))["acme"]  # type: ignore[list-item]
        seen.append((after.reads, after.since))
        on_a.read(5)
        settled = (await a.totals(client, [on_a]))["acme"]  # type: ignore[list-item]
        seen.append((settled.reads, settled.since))
        await client.aclose()
        return seen

    (first, first_since), (lost, lost_since), (settled, settled_since) = asyncio.run(scenario())
    assert first == 1000
    assert lost_since != first_since and lost == 5  # a new counter: b's 5, not a's 1010 again
    assert settled_since == lost_since and settled == 5 + 5  # a counts on from what it sent (its 10 were lost)
