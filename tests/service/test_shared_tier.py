"""Two real service nodes sharing one real redis-server (TLS, password) as their shared tier."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.client import PubSub

from service import shared_tier
from service.cache import TenantCache
from service.config import ConfigError, Settings, load_settings
from service.shared_tier import decode_message, encode_message, tier_key
from service.tenancy import TenantQuota, TenantSpec
from tests import servers
from tests.service.harness import RunningService, running_service
from tests.tlsutil import PKI

PASSWORD = "tier-password-for-tests"


def eventually(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout}s")


@pytest.fixture(scope="module")
def tier(pki: PKI) -> Iterator[servers.RedisServer]:
    with servers.redis_server(tls=(pki.ca_cert, pki.cert, pki.key), password=PASSWORD) as server:
        yield server


@pytest.fixture
def tier_client(tier: servers.RedisServer, pki: PKI) -> Iterator[redis.Redis]:
    client = redis.Redis(host="localhost", port=tier.port, ssl=True, ssl_ca_certs=str(pki.ca_cert), password=PASSWORD)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    root.mkdir()
    (root / "report").write_bytes(b"from the origin")
    return root


def node_settings(tier: servers.RedisServer, pki: PKI, origin: Path, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    password_file = tmp_path / "tier-password"
    password_file.write_text(PASSWORD + "\n")
    return {
        "dev": True, "origin": str(origin), "prefetcher": "none",
        "shared_tier_url": f"rediss://localhost:{tier.port}", "shared_tier_password_file": password_file,
        "shared_tier_ca_file": pki.ca_cert, **extra,
    }


@pytest.fixture
def two_nodes(tier: servers.RedisServer, pki: PKI, origin: Path, tmp_path: Path,
              tier_client: redis.Redis) -> Iterator[tuple[RunningService, RunningService]]:
    settings = node_settings(tier, pki, origin, tmp_path)
    with ExitStack() as stack:
        a = stack.enter_context(running_service(**settings))
        b = stack.enter_context(running_service(**settings))
        yield a, b


def client(node: RunningService) -> redis.Redis:
    return redis.Redis(port=node.resp_port)


def tenant(node: RunningService) -> TenantCache:
    cache = node.state.tenants.get("default")
    assert cache is not None
    return cache


def test_a_second_node_reads_what_the_first_fetched_from_the_tier_not_the_origin(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    a, b = two_nodes
    assert client(a).get("report") == b"from the origin"
    eventually(lambda: tier_client.get(tier_key("default", b"report")), "the origin value filling the tier")
    assert 0 < tier_client.ttl(tier_key("default", b"report")) <= 3600  # origin values expire: bounded staleness
    assert client(b).get("report") == b"from the origin"
    assert (tenant(a).origin_fetches, tenant(b).origin_fetches) == (1, 0)
    assert b.service.shared_tier is not None and b.service.shared_tier.stats.hits == 1


def test_a_client_write_on_one_node_replaces_the_other_nodes_copy(
        two_nodes: tuple[RunningService, RunningService]) -> None:
    a, b = two_nodes
    assert client(a).get("report") == client(b).get("report") == b"from the origin"  # both hold a copy now
    client(a).set("report", "rewritten", px=60_000)
    eventually(lambda: client(b).get("report") == b"rewritten", "node b reading a's write")
    assert 50_000 < client(b).pttl("report") <= 60_000  # the TTL travelled with the value
    client(b).set("counter", 41)
    client(b).incr("counter")
    eventually(lambda: client(a).get("counter") == b"42", "node a reading b's INCR")


def test_a_delete_on_one_node_sends_the_other_back_to_the_origin(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    a, b = two_nodes
    client(a).set("report", "client value")
    eventually(lambda: client(b).get("report") == b"client value", "node b reading a's write")
    client(a).delete("report")
    eventually(lambda: tier_client.exists(tier_key("default", b"report")) == 0, "the delete reaching the tier")
    # As on one node: a deleted key is read through to the origin again.
    eventually(lambda: client(b).get("report") == b"from the origin", "node b reading the origin again")


def test_a_flush_on_one_node_empties_the_tenant_everywhere(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    a, b = two_nodes
    client(a).mset({"one": "1", "two": "2"})
    eventually(lambda: client(b).get("two") == b"2", "node b reading a's write")
    tier_client.set(b"fs:other:one", b"another tenant's")  # a flush is one tenant's
    client(b).flushdb()
    eventually(lambda: tier_client.keys("fs:default:*") == [], "the flush reaching the tier")
    eventually(lambda: len(tenant(a).store) == 0, "node a dropping its copies")
    assert tier_client.get(b"fs:other:one") == b"another tenant's"
    assert client(a).get("one") is None


def test_an_origin_value_never_overwrites_a_client_write_in_the_tier(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    a, _ = two_nodes
    tier_client.set(tier_key("default", b"report"), b"written by a client elsewhere")
    shared = a.service.shared_tier
    assert shared is not None
    shared_fill = shared.fill
    a.call(_call_soon(lambda: shared_fill("default", b"report", b"stale origin copy")))
    time.sleep(0.2)
    assert tier_client.get(tier_key("default", b"report")) == b"written by a client elsewhere"


async def _call_soon(work: Callable[[], None]) -> None:
    work()


def test_a_node_keeps_its_unsent_write_when_another_nodes_invalidation_arrives(
        two_nodes: tuple[RunningService, RunningService]) -> None:
    a, _ = two_nodes
    cache = tenant(a)

    async def race() -> bytes | None:
        cache.store.set(b"k", b"mine, newer")  # marked, not yet sent (the send waits for this turn to end)
        cache.drop_remote([b"k", b"other"])
        return cache.store.get(b"k")

    assert a.call(race()) == b"mine, newer"


def test_a_lost_subscription_empties_memory_and_resumes(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    a, b = two_nodes
    client(a).get("report")
    assert len(tenant(a).store) == 1
    tier_client.client_kill_filter(_type="pubsub")
    shared = a.service.shared_tier
    assert shared is not None
    eventually(lambda: shared.stats.resubscribes >= 1, "node a resubscribing")
    assert len(tenant(a).store) == 0  # writes missed during the gap cannot be known: nothing stale is served
    client(b).set("after", "the gap")
    eventually(lambda: client(a).get("after") == b"the gap", "invalidations flowing again")


def test_the_resubscribe_count_never_runs_ahead_of_the_emptied_memory(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A poller that sees the count must see the memory emptied: node a is held inside the drop (its loop waits on
    a thread's event) while the count is read."""
    a, _ = two_nodes
    client(a).get("report")
    cache, shared = tenant(a), a.service.shared_tier
    assert shared is not None and len(cache.store) == 1
    dropping, release = threading.Event(), threading.Event()
    drop = cache.drop_remote

    def held_drop(keys: list[bytes] | None) -> None:
        if keys is None:
            dropping.set()
            release.wait(30)
        drop(keys)

    monkeypatch.setattr(cache, "drop_remote", held_drop)
    tier_client.client_kill_filter(_type="pubsub")
    try:
        assert dropping.wait(30), "node a never emptied its memory"
        while_dropping = (shared.stats.resubscribes, len(cache.store))
    finally:
        release.set()
    assert while_dropping == (0, 1)
    eventually(lambda: shared.stats.resubscribes == 1, "node a counting the resubscribe")
    assert len(cache.store) == 0


def subscribers(tier_client: redis.Redis) -> int:
    return int(tier_client.pubsub_numsub("foresight:invalidate")[0][1])


def test_a_node_serves_only_once_it_hears_the_other_nodes(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    assert subscribers(tier_client) == 2


class HeldSubscription:
    """Holds the first SUBSCRIBE sent after it is made (the next node to start), as a slow tier would, until
    released: a thread's event, since that node runs on its own loop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release, self.held = threading.Event(), False
        subscribe = PubSub.subscribe

        async def held_subscribe(pubsub: PubSub, *args: Any, **kwargs: Any) -> Any:
            if not self.held:
                self.held = True
                await asyncio.to_thread(self.release.wait, 30)
            return await subscribe(pubsub, *args, **kwargs)

        monkeypatch.setattr(PubSub, "subscribe", held_subscribe)


def test_a_node_subscribed_late_drops_what_other_nodes_changed_before(
        tier: servers.RedisServer, pki: PKI, origin: Path, tmp_path: Path, tier_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that serves before its subscription is up (the tier was slow to take it) cannot hear the other
    nodes' changes meanwhile: once subscribed it must drop what it holds, its own written copies included, not keep
    them for good."""
    settings = node_settings(tier, pki, origin, tmp_path)
    with running_service(**settings) as a:
        a_tier = a.service.shared_tier
        assert a_tier is not None
        eventually(lambda: subscribers(tier_client) == 1, "node a subscribing")
        held = HeldSubscription(monkeypatch)
        monkeypatch.setattr(shared_tier, "FIRST_SUBSCRIBE_WAIT_S", 0.1)
        try:
            with running_service(**settings) as b:
                assert subscribers(tier_client) == 1  # b serves, not subscribed yet
                _written_on_b(b, tier_client, "v1")
                assert client(b).get("report") == b"from the origin"
                for change in (lambda: client(a).delete("k"), lambda: client(a).set("report", "rewritten")):
                    sent = a_tier.stats.invalidations_sent
                    change()
                    eventually(lambda sent=sent: a_tier.stats.invalidations_sent > sent, "a's message being sent")
                assert client(b).get("k") == b"v1"  # b missed a's messages: it cannot know yet
                held.release.set()
                eventually(lambda: client(b).get("k") is None, "b dropping its own copy that a deleted")
                assert client(b).get("report") == b"rewritten"
                b_tier = b.service.shared_tier
                assert b_tier is not None and b_tier.stats.resubscribes == 1
        finally:
            held.release.set()


def test_an_unreachable_tier_sends_reads_to_the_origin(origin: Path, pki: PKI, tmp_path: Path) -> None:
    from service.net import free_port

    closed = servers.RedisServer(free_port())
    with running_service(**node_settings(closed, pki, origin, tmp_path)) as node:
        assert client(node).get("report") == b"from the origin"
        client(node).set("local", "still works")
        assert client(node).get("local") == b"still works"
        shared = node.service.shared_tier
        assert shared is not None and shared.stats.errors >= 1 and not shared.connected
        metrics = node.call(_metrics(node))
        assert "foresight_shared_tier_errors_total" in metrics and "foresight_shared_tier_up 0.0" in metrics


async def _metrics(node: RunningService) -> str:
    from service.metrics import render

    return render(node.state).decode()


def test_a_wrong_password_stops_the_start_with_the_setting_to_fix(
        tier: servers.RedisServer, pki: PKI, origin: Path, tmp_path: Path) -> None:
    settings = node_settings(tier, pki, origin, tmp_path)
    settings["shared_tier_password_file"].write_text("not the password")
    with pytest.raises(ConfigError, match="shared_tier_password_file"), running_service(**settings):
        pass


@pytest.mark.parametrize(("url", "problem"), [
    ("rediss://:hunter2@tier:6379", "must not carry a user or password"),
    ("rediss://admin@tier:6379", "must not carry a user or password"),
    ("redis://tier.internal:6379", "must be reached over TLS"),
    ("http://tier:6379", "must look like rediss://host:6379"),
    ("rediss://tier:6379/cache", "not a database number"),
])
def test_unsafe_or_malformed_tier_urls_are_refused(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as err:
        load_settings(dev=True, shared_tier_url=url)
    assert "hunter2" not in str(err.value)  # the refusal does not echo a secret


def test_loopback_may_skip_tls_and_a_password_file_needs_a_url(tmp_path: Path) -> None:
    assert Settings(shared_tier_url="redis://127.0.0.1:6379").shared_tier_url == "redis://127.0.0.1:6379"
    with pytest.raises(ConfigError, match="needs shared_tier_url"):
        load_settings(dev=True, shared_tier_password_file=str(tmp_path / "p"))


def test_invalidation_messages_round_trip_and_strangers_are_refused() -> None:
    keys = [b"a", b"", b"with\x00nul", b"x" * 70_000]
    assert decode_message(encode_message(b"node1", b"k", "acme", keys)) == (b"node1", b"k", "acme", keys)
    assert decode_message(encode_message(b"node1", b"f", "acme")) == (b"node1", b"f", "acme", [])
    for garbage in (b"hello", b"node\x00zacme\x00", encode_message(b"n", b"k", "acme", [b"abc"])[:-1]):
        with pytest.raises(ValueError, match="invalidation message"):
            decode_message(garbage)


def test_a_tenant_added_later_is_on_the_tier_too(two_nodes: tuple[RunningService, RunningService]) -> None:
    a, _ = two_nodes
    spec = TenantSpec(name="late", quota=TenantQuota(memory_bytes=1 << 20))

    async def add() -> bool:
        cache = a.state.tenants.upsert(spec)
        return cache.shared is a.service.shared_tier and cache.store.written == set()

    assert a.call(add())


def test_a_tenant_created_again_under_its_name_reads_none_of_the_old_ones_keys_and_they_leave_the_tier(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    a, b = two_nodes
    client(a).set("payroll", "the old tenant's")
    eventually(lambda: tier_client.get(tier_key("default", b"payroll")), "the write reaching the tier")
    assert client(b).get("payroll") == b"the old tenant's"
    old = tenant(a)

    async def created_again(node: RunningService) -> None:  # what a refresh does once Vault has the new tenant
        node.state.tenants.upsert(TenantSpec(name="default", quota=TenantQuota(origin=str(node.state.settings.origin)),
                                             incarnation="b2"))

    for node in (a, b):
        node.call(created_again(node))
    assert tenant(a) is not old and tenant(a).tier_name == "default.b2"
    assert client(a).get("payroll") is None and client(b).get("payroll") is None
    eventually(lambda: tier_client.keys("fs:default:*") == [], "the old tenant's keys leaving the tier")
    assert client(a).get("report") == b"from the origin"  # the new tenant reads through as usual
    client(a).set("note", "the new tenant's")
    eventually(lambda: client(b).get("note") == b"the new tenant's", "node b reading a's write")
    client(a).set("note", "rewritten")  # invalidations name the new tenant, and reach it
    eventually(lambda: client(b).get("note") == b"rewritten", "node b dropping its copy")
    assert tier_client.get(tier_key("default.b2", b"note")) == b"rewritten"
    assert old.shared is None  # a request still holding the old cache no longer reaches the tier


def test_a_subscription_renewed_for_a_fresh_credential_misses_no_write(
        tier: servers.RedisServer, pki: PKI, origin: Path, tmp_path: Path, tier_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from service.shared_tier_auth import PasswordFile

    monkeypatch.setattr(PasswordFile, "renew_after_s", 0.2)  # as a cloud token's connection would be, but often
    settings = node_settings(tier, pki, origin, tmp_path)
    with running_service(**settings) as a, running_service(**settings) as b:
        keys = [f"k{i}" for i in range(20)]
        for round_ in range(15):
            client(b).mset({key: f"{key}-{round_}" for key in keys})
            for key in keys:  # a holds a copy of every key between b's rounds, so a missed message shows
                eventually(lambda key=key, round_=round_: client(a).get(key) == f"{key}-{round_}".encode(),
                           f"node a reading {key} of round {round_}")
            time.sleep(0.05)
        shared = a.service.shared_tier
        assert shared is not None
        assert shared.stats.renewals >= 3 and shared.stats.resubscribes == 0  # renewed, never with a gap
        assert len(tenant(a).store) >= len(keys)


def test_commands_on_a_key_this_node_never_read_act_on_the_deployments_value(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    a, b = two_nodes
    client(a).set("counter", 41)
    client(a).set("doomed", "x")
    client(a).set("session", "s", ex=600)
    eventually(lambda: tier_client.get(tier_key("default", b"session")), "a's writes reaching the tier")
    assert client(b).incr("counter") == 42  # not 1: b loads the value a wrote before incrementing
    assert client(b).exists("doomed") == 1 and client(b).delete("doomed") == 1
    assert 500 < client(b).ttl("session") <= 600
    assert client(b).set("session", "other", nx=True) is None  # NX sees the key another node wrote
    eventually(lambda: tier_client.exists(tier_key("default", b"doomed")) == 0, "b's DEL reaching the tier")
    eventually(lambda: client(a).get("counter") == b"42", "a reading b's INCR")
    assert client(a).get("doomed") is None
    with client(b).pipeline(transaction=True) as pipe:  # inside MULTI the keys are loaded when queued
        pipe.incr("counter").expire("counter", 300)
        assert pipe.execute() == [43, True]


def test_an_http_delete_removes_a_key_only_another_node_held(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    import httpx

    a, b = two_nodes
    client(a).set("note", "from a")
    eventually(lambda: tier_client.get(tier_key("default", b"note")), "a's write reaching the tier")
    with httpx.Client(base_url=b.endpoints.http_url) as http:
        assert http.delete("/v1/keys/note").status_code == 204
        assert http.delete("/v1/keys/note").status_code == 404
    eventually(lambda: client(a).get("note") is None, "a dropping its copy")


class HeldReads:
    """Holds a node's first tier read after the tier answered, as a slow network would, until released."""

    def __init__(self, node: RunningService) -> None:
        shared = node.service.shared_tier
        assert shared is not None
        self.shared, self.read = shared, shared.get
        self.answered, self.release = asyncio.Event(), asyncio.Event()
        shared.get = self._get  # type: ignore[method-assign]

    async def _get(self, tenant: str, key: bytes) -> tuple[bytes, int] | None:
        answer = await self.read(tenant, key)
        if not self.answered.is_set():
            self.answered.set()
            await self.release.wait()
        return answer


def _written_on_b(b: RunningService, tier_client: redis.Redis, value: str) -> None:
    client(b).set("k", value)
    eventually(lambda: tier_client.get(tier_key("default", b"k")) == value.encode(), "b's write reaching the tier")


@pytest.mark.parametrize("change", ["delete", "set then delete", "flush"])
def test_a_read_in_flight_never_undoes_this_nodes_delete_or_flush(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis, change: str) -> None:
    """A read loads the tier's copy; before it lands, a client here deletes the key or flushes the tenant. The
    loaded copy is older than that: landing, it would come back here and be sent to the tier as a write."""
    a, b = two_nodes
    _written_on_b(b, tier_client, "v1")
    cache = tenant(a)

    async def race() -> None:
        held = HeldReads(a)
        reading = asyncio.create_task(cache.get(b"k"))
        await held.answered.wait()
        if change == "delete":
            await cache.delete(b"k")
        elif change == "set then delete":  # what MULTI SET k v2; DEL k; EXEC does
            cache.store.set(b"k", b"v2")
            cache.store.delete(b"k")
        else:
            cache.store.flush()
        held.release.set()
        await reading

    a.call(race())
    eventually(lambda: tier_client.exists(tier_key("default", b"k")) == 0, "the change reaching the tier")
    time.sleep(0.2)  # any write the stale copy caused would reach the tier by now
    assert tier_client.exists(tier_key("default", b"k")) == 0
    assert cache.store.get(b"k") is None
    # b drops its own copy when a's invalidation reaches it, which may come after the tier's change
    eventually(lambda: client(b).get("k") is None, "a's change reaching b")


def test_a_second_load_of_a_key_keeps_what_made_the_first_stale(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    """A read's load holds v1; another node writes v2; a command here (EXISTS, INCR, ...) loads k again and
    finishes first. The read's v1 must still not land."""
    a, b = two_nodes
    _written_on_b(b, tier_client, "v1")
    cache, shared = tenant(a), a.service.shared_tier
    assert shared is not None
    held = HeldReads(a)
    reading = asyncio.run_coroutine_threadsafe(cache.get(b"k"), a.loop)
    received = shared.stats.invalidations_received
    eventually(held.answered.is_set, "the first load's tier answer")
    client(b).set("k", "v2")
    eventually(lambda: shared.stats.invalidations_received > received, "b's invalidation reaching a")
    a.call(cache.load_shared([b"k"]))
    a.loop.call_soon_threadsafe(held.release.set)
    assert reading.result(10) == b"v1"  # that read began before b's write: it may answer v1, not keep it
    assert client(a).get("k") == b"v2"


def test_a_failed_batch_after_a_flush_does_not_flush_again(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis) -> None:
    """FLUSHDB then 600 writes in one turn go as a flush and two batches; the second batch fails once. Its
    retry must not flush the tier again: that would delete the first batch and writes other nodes made since."""
    a, b = two_nodes
    shared = a.service.shared_tier
    assert shared is not None
    send = shared._send_writes
    calls = 0

    async def second_fails_once(cache: TenantCache, keys: list[bytes]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            await asyncio.to_thread(client(b).set, "from-b", "after the flush")
            raise redis.ConnectionError("the tier went away for a moment")
        await send(cache, keys)

    shared._send_writes = second_fails_once  # type: ignore[method-assign]
    with client(a).pipeline(transaction=True) as pipe:
        pipe.flushdb().mset({f"key{i:03}": "x" for i in range(600)})
        pipe.execute()
    eventually(lambda: len(tier_client.keys("fs:default:key*")) == 600, "every write reaching the tier")
    time.sleep(0.2)
    assert len(tier_client.keys("fs:default:key*")) == 600
    assert tier_client.get(tier_key("default", b"from-b")) == b"after the flush"


@pytest.mark.parametrize("send", ["in a later batch", "failing once"])
def test_another_nodes_write_while_ours_is_sent_never_becomes_a_delete(
        two_nodes: tuple[RunningService, RunningService], tier_client: redis.Redis, send: str) -> None:
    """While a's writes are on their way (a later batch waiting, or a batch the tier timed out), b writes one of
    the keys. a must not drop its write and then send that key as a DEL: both writes would be lost."""
    a, b = two_nodes
    shared = a.service.shared_tier
    assert shared is not None
    sent = shared._send_writes
    raced: list[bytes] = []

    async def b_writes_meanwhile(cache: TenantCache, keys: list[bytes]) -> None:
        if not raced:
            received = shared.stats.invalidations_received
            raced.append(key := sorted(set(written) - set(keys))[0] if send == "in a later batch" else keys[0])
            await asyncio.to_thread(client(b).set, key, "b's write")
            while shared.stats.invalidations_received == received:
                await asyncio.sleep(0.01)
            if send == "failing once":
                raise redis.TimeoutError("no answer from the tier in time")
        await sent(cache, keys)

    written = [f"key{i:03}".encode() for i in range(600 if send == "in a later batch" else 1)]
    shared._send_writes = b_writes_meanwhile  # type: ignore[method-assign]
    client(a).mset(dict.fromkeys(written, "a's write"))
    eventually(lambda: len(tier_client.keys("fs:default:key*")) == len(written), "a's writes reaching the tier")
    time.sleep(0.2)
    key = raced[0]
    in_tier = tier_client.get(tier_key("default", key))
    assert in_tier in (b"a's write", b"b's write")  # last writer wins; nobody deleted it
    eventually(lambda: client(a).get(key) == client(b).get(key) == in_tier, "both nodes agreeing with the tier")
