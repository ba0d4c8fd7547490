"""The shared tier: one Valkey/Redis that every node of a scaled-out deployment reads before its origin.

Behind one load balancer, N nodes would each read every object from the slow origin; with the tier, the first
node's read fills it and the others get the object in one round trip. The tier also carries clients' writes
from node to node, so each node's memory is a near cache of it (docs/scale-out.md has the whole contract):

- a read that misses memory asks the tier, then the origin (one load per key and node: TenantCache's
  single-flight). An origin value fills the tier only where the key is absent (SET NX), so it never overwrites
  a client's write made meanwhile, and it expires after shared_tier_ttl_s;
- a client's write, delete, TTL change or flush, whichever command made it (SET, INCR, EXPIRE, a script, a
  transaction), changes memory at once and, batched per event-loop turn, reaches the tier (the value with its
  deadline, or a delete) and the other nodes: one pub/sub message makes them drop their copies. Last writer
  wins; read-modify-write commands are atomic on one node, not across nodes;
- the tier may speed reads up, never hold them: a call slower than shared_tier_timeout_s or an error counts,
  is logged at most once a minute, and the read goes to the origin. Writes that could not be sent stay marked
  and are retried. A node starts serving once it is subscribed to the other nodes' messages (or gives up waiting);
  messages missed while it served unsubscribed cannot be known, so a node that subscribes after serving (late at
  start, or again after the subscription broke) empties its memory (it refills from the tier);
- a tenant's keys are kept under its name *and incarnation* (`TenantCache.tier_name`), so a tenant created under
  a deleted tenant's name never reads what the deleted one left; a node that stops serving a tenant (deleted, or
  replaced by a new one of its name) deletes that tenant's keys from the tier;
- each tenant's reads on every node are summed in the tier for metering (service/tier_usage.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from service.config import ConfigError, Settings
from service.shared_tier_auth import TierCredentials, tier_credentials
from service.store.memory import now_ms
from service.tier_usage import REPORT_EVERY_S, DeploymentReads, UsageLedger

if TYPE_CHECKING:
    from service.cache import TenantCache, TenantRegistry

log = logging.getLogger(__name__)

KEY_PREFIX = b"fs:"
WRITE_BATCH = 512  # keys per pipeline and per invalidation message
MAX_PENDING_FILLS = 1024  # origin values on their way to the tier; past it a fill is skipped, not queued
FIRST_SUBSCRIBE_WAIT_S = 5.0  # how long start() waits for the subscription of a tier that answered its PING
LOG_EVERY_S = 60.0
_KIND_KEYS, _KIND_FLUSH = b"k", b"f"
_LENGTH = struct.Struct(">I")


def tier_key(tier_name: str, key: bytes) -> bytes:
    """`tier_name`: the tenant's (`TenantCache.tier_name`, `<name>.<incarnation>`). Tenant names are DNS labels
    and incarnations alphanumeric (no ':', no '.' in a name), so the prefix keeps every tenant's keys apart."""
    return b"%s%s:%s" % (KEY_PREFIX, tier_name.encode(), key)


def encode_message(node: bytes, kind: bytes, tier_name: str, keys: Iterable[bytes] = ()) -> bytes:
    body = b"".join(_LENGTH.pack(len(key)) + key for key in keys)
    return b"%s\x00%s%s\x00%s" % (node, kind, tier_name.encode(), body)


def decode_message(data: bytes) -> tuple[bytes, bytes, str, list[bytes]]:
    """(node, kind, tenant's tier name, keys); raises ValueError on a message no node of ours wrote."""
    node, sep, rest = data.partition(b"\x00")
    tenant, sep2, body = rest[1:].partition(b"\x00")
    if not sep or not sep2 or rest[:1] not in (_KIND_KEYS, _KIND_FLUSH):
        raise ValueError("not an invalidation message")
    keys, at = [], 0
    while at < len(body):
        (length,) = _LENGTH.unpack_from(body, at)
        at += _LENGTH.size
        keys.append(body[at : at + length])
        at += length
    if at != len(body):
        raise ValueError("truncated invalidation message")
    return node, rest[:1], tenant.decode(), keys


def _batches(keys: list[bytes]) -> Iterator[list[bytes]]:
    for start in range(0, len(keys), WRITE_BATCH):
        yield keys[start : start + WRITE_BATCH]


@dataclass
class TierStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    fills: int = 0
    fills_skipped: int = 0
    writes: int = 0
    invalidations_sent: int = 0
    invalidations_received: int = 0
    resubscribes: int = 0
    renewals: int = 0


class SharedTier:
    """One process's connection to the tier: reads, fills, write propagation and the invalidation listener."""

    def __init__(
        self, settings: Settings, registry: TenantRegistry, credentials: TierCredentials | None = None
    ) -> None:
        """`credentials`: how to log in; default: what shared_tier_auth names (service/shared_tier_auth.py)."""
        assert settings.shared_tier_url is not None
        self.settings = settings
        self.url = settings.shared_tier_url
        self._registry = registry
        self.node_id = secrets.token_hex(8).encode()
        self.stats = TierStats()
        self.usage = UsageLedger(self.node_id)
        self.connected = False
        self._credentials = credentials or tier_credentials(settings)
        self._client = self._open(settings.shared_tier_timeout_s)
        self._listener_client = self._open(None)  # a subscriber waits for messages: no read timeout
        self._sending: dict[str, asyncio.Task[None]] = {}  # by tier name: the task sending a tenant's writes
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()  # set at the first subscription: other nodes' changes are heard
        self._serving = False  # start() has returned: any time without a subscription from now on is unheard
        self._logged_at: dict[str, float] = {}

    def _open(self, read_timeout: float | None) -> aioredis.Redis:
        s = self.settings
        options: dict[str, Any] = {
            "socket_connect_timeout": s.shared_tier_timeout_s,
            "socket_timeout": read_timeout,
            "credential_provider": self._credentials,
            "driver_info": None,  # no CLIENT SETINFO: one round trip less, one command less for the tier's ACL
        }
        if self.url.startswith("rediss://"):
            options["ssl_cert_reqs"] = "required"
            options["ssl_ca_certs"] = str(s.shared_tier_ca_file) if s.shared_tier_ca_file else None
        if read_timeout is None:
            options["health_check_interval"] = 15  # a dead subscription is noticed, not waited on forever
            return aioredis.Redis.from_url(self.url, **options)
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=64, timeout=s.shared_tier_timeout_s, **options
        )
        return aioredis.Redis(connection_pool=pool)

    async def start(self) -> None:
        """Check the tier answers; a refused password stops the start, an unreachable tier only warns."""
        try:
            await self._client.ping()
            self.connected = True
        except (AuthenticationError, ResponseError) as err:
            raise ConfigError(
                f"shared tier {self.url} refused this node ({err}): check shared_tier_auth "
                f"({self.settings.shared_tier_auth}) and what it uses: shared_tier_username, "
                "shared_tier_password_file, or the node's cloud identity and its grant on the tier"
            ) from None
        except (RedisError, OSError) as err:
            log.warning("shared tier %s unreachable (%s): reads go to the origin until it answers", self.url, err)
        self._listener = asyncio.create_task(self._listen())
        self._reporter = asyncio.create_task(self._report_usage())
        if self.connected:  # until subscribed, a copy another node replaced would stay here: wait a little for it
            try:
                async with asyncio.timeout(FIRST_SUBSCRIBE_WAIT_S):
                    await self._subscribed.wait()
            except TimeoutError:
                log.warning("shared tier %s: not subscribed after %.0f s; serving, and emptying memory once it is",
                            self.url, FIRST_SUBSCRIBE_WAIT_S)
        self._serving = True
        log.info("shared tier %s (node %s)", self.url, self.node_id.decode())

    async def close(self, grace_s: float = 2.0) -> None:
        """Send what is still marked and this node's last reads (within `grace_s`), then disconnect."""
        if self._reporter is not None:
            self._reporter.cancel()
        self._spawn(self._write_usage(list(self._registry)))
        await asyncio.wait(list(self._tasks), timeout=grace_s)
        tasks = [t for t in (self._listener, self._reporter, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()
        await self._listener_client.aclose()

    def attach(self, cache: TenantCache) -> None:
        """Start carrying this tenant's writes to the tier (after any snapshot restore: that is no write)."""
        cache.shared = self
        cache.reads_through = True
        store = cache.store
        store.written, store.flushed = set(), False
        store.on_change = lambda key: self._changed_here(cache, key)  # type: ignore[arg-type]  # store keys are bytes

    def _failed(self, what: str, err: BaseException) -> None:
        self.stats.errors += 1
        self.connected = False
        now = time.monotonic()
        if now - self._logged_at.get(what, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged_at[what] = now
            log.warning("shared tier %s failed (%s: %s); counted in foresight_shared_tier_errors_total", what,
                        type(err).__name__, err)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def drop(self, cache: TenantCache) -> None:
        """This node stopped serving the tenant (deleted, or another tenant now has its name): delete its keys from
        the tier in the background, once its last writes in flight have landed, and tell the other nodes. The cache
        (which requests in flight may still use) is off the tier from now on."""
        cache.shared = None
        cache.store.on_change = None
        self._spawn(self._drop(cache, self._sending.get(cache.tier_name)))

    async def _drop(self, cache: TenantCache, sending: asyncio.Task[None] | None) -> None:
        if sending is not None:
            await asyncio.wait([sending])  # it stops at its next batch: the tenant is no longer the registry's
        cache.store.written, cache.store.flushed = None, False
        await self._write_usage([cache])  # its last reads, before the cache goes
        failures = 0
        while True:
            try:
                await self._send_flush(cache.tier_name)
                return
            except (RedisError, OSError) as err:
                self._failed("drop", err)
                failures += 1
                await asyncio.sleep(min(0.05 * 2**failures, 5.0))

    async def deployment_reads(self, caches: list[TenantCache]) -> dict[str, DeploymentReads] | None:
        """Each tenant's reads on every node (tier_usage.py), or None when the tier cannot say now."""
        try:
            return await self.usage.totals(self._client, caches)
        except (RedisError, OSError) as err:
            self._failed("usage", err)
            return None

    async def _report_usage(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            await self._write_usage(list(self._registry))

    async def _write_usage(self, caches: list[TenantCache]) -> None:
        try:
            await self.usage.write(self._client, caches)
        except (RedisError, OSError) as err:
            self._failed("usage", err)

    async def get(self, tier_name: str, key: bytes) -> tuple[bytes, int] | None:
        """The tier's value and its deadline (epoch ms, 0 for none), or None when it has none or cannot answer
        in time."""
        target = tier_key(tier_name, key)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(target)
                pipe.pttl(target)
                value, ttl_ms = await pipe.execute()
        except (RedisError, OSError) as err:
            self._failed("read", err)
            return None
        self.connected = True
        if value is None or ttl_ms == -2:  # -2: it expired between the GET and the PTTL
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return value, now_ms() + ttl_ms if ttl_ms > 0 else 0

    def fill(self, tier_name: str, key: bytes, value: bytes) -> None:
        """Offer an origin value to the tier in the background (only where absent: a client's write wins)."""
        if len(self._tasks) >= MAX_PENDING_FILLS:
            self.stats.fills_skipped += 1
            return
        self._spawn(self._fill(tier_key(tier_name, key), value))

    async def _fill(self, key: bytes, value: bytes) -> None:
        try:
            if await self._client.set(key, value, ex=self.settings.shared_tier_ttl_s, nx=True):
                self.stats.fills += 1
        except (RedisError, OSError) as err:
            self._failed("fill", err)

    def _changed_here(self, cache: TenantCache, key: bytes | None) -> None:
        """A client changed `key` (None: flushed the tenant) on this node: stale loads must not land, and the tier
        must hear of it."""
        cache.changed(key)
        self._send_soon(cache)

    def _send_soon(self, cache: TenantCache) -> None:
        if cache.tier_name not in self._sending:
            self._sending[cache.tier_name] = self._spawn(self._send(cache))

    async def _send(self, cache: TenantCache) -> None:
        """Send the tenant's marked writes until none are left (retrying with backoff while the tier fails)."""
        store = cache.store
        failures = 0
        try:
            await asyncio.sleep(0)  # let the rest of this turn's commands (a pipeline, a transaction) mark theirs
            while (store.written or store.flushed) and self._registry.get(cache.name) is cache:
                assert store.written is not None
                keys, store.written = store.written, set()
                flushed, store.flushed = store.flushed, False
                cache.sending(keys)  # type: ignore[arg-type]  # store keys are bytes
                try:
                    if flushed:
                        await self._send_flush(cache.tier_name)
                        flushed = False  # done: a later batch's failure must not flush again
                    for batch in _batches(list(keys)):  # type: ignore[arg-type]  # store keys are bytes
                        await self._send_writes(cache, batch)
                        keys.difference_update(batch)
                        cache.confirmed(batch)
                    failures = 0
                except (RedisError, OSError) as err:
                    self._failed("write", err)
                    store.written |= keys  # resent with the values of then, so a newer write is not undone
                    cache.unsent(keys)  # type: ignore[arg-type]
                    store.flushed = store.flushed or flushed
                    failures += 1
                    await asyncio.sleep(min(0.05 * 2**failures, 5.0))
        finally:
            self._sending.pop(cache.tier_name, None)

    async def _send_writes(self, cache: TenantCache, keys: list[bytes]) -> None:
        now = now_ms()
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                entry = cache.store.entry(key)
                target = tier_key(cache.tier_name, key)
                if entry is None or (entry.expires_at and entry.expires_at <= now):
                    pipe.delete(target)
                elif entry.expires_at:
                    pipe.set(target, entry.value, pxat=entry.expires_at)
                else:
                    pipe.set(target, entry.value)
            pipe.publish(self.settings.shared_tier_channel,
                         encode_message(self.node_id, _KIND_KEYS, cache.tier_name, keys))
            await pipe.execute()
        self.stats.writes += len(keys)
        self.stats.invalidations_sent += 1

    async def _send_flush(self, tier_name: str) -> None:
        cursor: int = 0
        pattern = tier_key(tier_name, b"*")
        while True:
            cursor, found = await self._client.scan(cursor, match=pattern, count=1000)
            if found:
                await self._client.unlink(*found)
            if not cursor:
                break
        await self._client.publish(self.settings.shared_tier_channel,
                                   encode_message(self.node_id, _KIND_FLUSH, tier_name))
        self.stats.invalidations_sent += 1

    async def _listen(self) -> None:
        """Keep one subscription to the channel. A credential that expires (renew_after_s) moves it to a fresh
        connection without a gap; a subscription that broke, or came up only after this node began serving, leaves
        one, and memory is emptied (module docstring)."""
        renew_s = self._credentials.renew_after_s if self._credentials is not None else None
        backoff, current = 0.1, None
        while True:
            fresh = self._listener_client.pubsub(ignore_subscribe_messages=True)
            try:
                await fresh.subscribe(self.settings.shared_tier_channel)
                if current is not None:
                    await self._retire(current)
                elif self._serving:  # served unsubscribed (since a break, or since start()): messages were missed
                    self._forget_everything()
                self._subscribed.set()
                current, backoff = fresh, 0.1
                await self._pump(current, renew_s)
            except (RedisError, OSError) as err:
                self._failed("subscription", err)
                for pubsub in {fresh, current} - {None}:
                    await pubsub.aclose()  # type: ignore[union-attr]
                current = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _pump(self, pubsub: Any, renew_s: float | None) -> None:
        """Apply messages until the subscription is due for renewal (never, without renew_s)."""
        deadline = None if renew_s is None else time.monotonic() + renew_s
        while deadline is None or time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "message":
                self._apply(message["data"])

    async def _retire(self, pubsub: Any) -> None:
        """Close a subscription a fresh one has replaced, after applying what reached it first: the server wrote
        every message published before the fresh SUBSCRIBE to the old connection before the PONG of a PING sent
        now."""
        try:
            await pubsub.ping()
            async with asyncio.timeout(5.0):
                while (message := await pubsub.get_message(timeout=1.0)) is None or message["type"] != "pong":
                    if message is not None and message["type"] == "message":
                        self._apply(message["data"])
        finally:
            await pubsub.aclose()
        self.stats.renewals += 1

    def _forget_everything(self) -> None:
        """After serving without a subscription (a break, or a late first one), writes other nodes made meanwhile
        are unknown: nothing local is trusted but this node's own writes on their way. Counted once emptied, so
        whoever sees the count (metrics, a test) sees the memory emptied too."""
        log.warning("shared tier subscription up after a gap: emptying this node's memory of other nodes' keys")
        for cache in list(self._registry):
            cache.drop_remote(None)
        self.stats.resubscribes += 1

    def _apply(self, data: bytes) -> None:
        try:
            node, kind, tier_name, keys = decode_message(data)
        except (ValueError, struct.error):
            log.warning("ignored a message on %s that no Foresight node wrote", self.settings.shared_tier_channel)
            return
        if node == self.node_id:
            return
        cache = self._registry.get(tier_name.partition(".")[0])
        if cache is None or cache.tier_name != tier_name:
            return  # a tenant this node does not serve, or another tenant of its name
        self.stats.invalidations_received += 1
        if kind == _KIND_FLUSH:
            cache.drop_remote(None)
        else:
            cache.drop_remote(keys)
