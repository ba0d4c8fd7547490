"""A tenant's cache: its store, its origin and its rate quota, behind the calls both front ends make.

Each tenant has its own MemoryStore, so a tenant's writes and scans can only ever evict its own keys. A cache
belongs to one incarnation of its tenant's name (TenantSpec.incarnation): a tenant deleted and created again
gets a new, empty cache, never the old one's data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, TypeVar

from service.config import Settings
from service.origin import Origin, OriginError, ReadSlots, SingleFlight, open_origin
from service.origin.base import ObjectTooLarge
from service.store.memory import MemoryStore, ValueTooLarge
from service.tenancy import Principal, TenantSpec

if TYPE_CHECKING:
    from service.resp.scripting import ScriptEngine
    from service.shared_tier import SharedTier

log = logging.getLogger(__name__)
_TOO_LARGE_LOG_INTERVAL_S = 60.0
WRITE_IF_ATTEMPTS = 3  # checks of a conditional write that another write may overtake before it gives up
# Loads one call (an MGET, a script's KEYS, keys brought from the shared tier) has in flight at once: more would only
# wait for an origin read slot (64 is origin_max_concurrency's default), each holding a coroutine and a flight.
LOADS_IN_FLIGHT = 64
EVICTIONS_PER_STEP = 1000  # entries a shrunk budget evicts between two turns of the event loop: about 1 ms
Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
Written = TypeVar("Written")


async def load_each(load: Callable[[Item], Awaitable[Loaded]], items: list[Item],
                    limit: int = LOADS_IN_FLIGHT) -> list[Loaded | Exception]:
    """`load` each item, at most `limit` at once and begun in order: each result or the exception it raised. No load
    begins after one has failed, so the list may stop short; it still holds the first error in item order that
    loading them all would have met (every item before one begun has been begun too)."""
    results: dict[int, Loaded | Exception] = {}
    begun = 0
    failed = False

    async def worker() -> None:
        nonlocal begun, failed
        while begun < len(items) and not failed:
            index = begun
            begun += 1
            try:
                results[index] = await load(items[index])
            except Exception as err:  # the caller decides what an error means
                results[index] = err
                failed = True

    await asyncio.gather(*(worker() for _ in range(min(limit, len(items)))))
    return [results[index] for index in range(begun)]


class RateLimited(Exception):
    """The tenant is over its request-rate quota."""


class PreconditionFailed(Exception):
    """A conditional write's condition is false of the key's current value: nothing was written."""


class KeyContended(Exception):
    """The key changed under every check of a conditional write: nothing was written, and a retry may succeed."""


class TokenBucket:
    """Refills `rate` tokens per second up to one second's worth; refilled lazily on each take."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(rate, 1.0)
        self._tokens = self.burst
        self._last = time.monotonic()

    def retune(self, rate: float) -> None:
        """Take a new rate, keeping the tokens left (up to the new burst): a quota change is no free refill."""
        self.take(0)  # refill at the old rate up to now
        self.rate = rate
        self.burst = max(rate, 1.0)
        self._tokens = min(self._tokens, self.burst)

    def take(self, n: int = 1) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


def _tenant_origin(spec: TenantSpec, settings: Settings, slots: ReadSlots | None) -> Origin | None:
    """The tenant's origin (its own, else the deployment's, under its name), or None. An origin URL the service does
    not read (service.origin.urls) is logged and the tenant served without one: one tenant's origin must never fail
    the reload of them all. Nothing is opened here (this runs on the event loop): the first read does that."""
    url = spec.quota.origin or settings.origin
    if not url:
        return None
    try:
        return open_origin(url, tenant=None if spec.quota.origin else spec.name, timeout_s=settings.origin_timeout_s,
                           latency_ms=settings.origin_latency_ms, slots=slots)
    except OriginError as err:
        log.warning("tenant %s: %s; it is served without an origin", spec.name, err)
        return None


class TenantCache:
    """One tenant's data: reads, writes, read-through and the quotas that bound them."""

    # Origin objects larger than the whole budget: refused (over the budget) or served uncached (the key and the
    # entry's overhead tipped them over); logged at most once a minute.
    too_large_to_cache = 0
    _too_large_logged_at = -_TOO_LARGE_LOG_INTERVAL_S
    _too_large_unlogged = 0

    def __init__(self, spec: TenantSpec, settings: Settings, origin_slots: ReadSlots | None = None) -> None:
        self.name = spec.name
        self.incarnation = spec.incarnation
        # The tenant's name in the shared tier: its name and incarnation (tenant names are DNS labels, so no '.'),
        # so that a later tenant of the name never reads this one's keys. Fixed: another incarnation gets a new cache.
        self.tier_name = self.name if self.incarnation is None else f"{self.name}.{self.incarnation}"
        self.store = MemoryStore(spec.quota.memory_bytes, settings.eviction_policy)
        self.flights: SingleFlight[bytes | None] = SingleFlight()
        self.origin = _tenant_origin(spec, settings, origin_slots)
        self.shared: SharedTier | None = None  # set by SharedTier.attach in a scaled-out deployment
        self.reads_through = self.origin is not None  # whether a memory miss is worth a load (origin or tier)
        # What makes a load stale (with a shared tier): a change to its key, here or on another node, or a flush of
        # the tenant after the load began. Counted per key only while loads of it are in flight.
        self._loading: dict[bytes, int] = {}  # key -> its loads in flight (a read's and a command's may overlap)
        self._changes: dict[bytes, int] = {}  # key -> changes since its first load in flight began
        self._flush_epoch = 0
        # This node's writes the tier has not confirmed yet (sent or being sent), and those of them another node
        # changed meanwhile: whichever reached the tier last is read back once ours is confirmed.
        self._unconfirmed: set[bytes] = set()
        self._contested: set[bytes] = set()
        self.bucket: TokenBucket | None = None
        # The prefetch engine's access-log recorders, set while one runs: every read reports its key to one.
        self.record_hit: Callable[[bytes], None] | None = None
        self.record_miss: Callable[[bytes], None] | None = None
        self.scripts: ScriptEngine | None = None  # its Lua runtime, made at its first EVAL or SCRIPT
        self.origin_fetches = 0
        self.origin_errors = 0
        self.rate_limited = 0
        self.connections_received = 0  # INFO shows a tenant its own traffic, never the server's
        self.commands_of_closed = 0  # commands of its connections that have ended (open ones count their own)
        self.requests_held = 0  # bytes of requests still arriving, over its connections and HTTP bodies
        self._evicting: asyncio.Task[None] | None = None  # evicting down to a shrunk budget, a step at a time
        self.apply(spec)

    def requests_over_budget(self) -> str | None:
        """Why this tenant's requests in flight (`requests_held`) are refused, while they hold more than its memory
        budget; None while they fit. RESP and HTTP refuse them alike."""
        if self.requests_held <= self.store.budget:
            return None
        return (f"tenant '{self.name}' has more request bytes in flight than its memory budget "
                f"({self.store.budget} bytes), over all its connections")

    def apply(self, spec: TenantSpec) -> None:
        """Take new quotas without losing data (a smaller budget evicts down to it)."""
        self.prefetcher = spec.quota.prefetcher
        self.prefetch_max_keys = spec.quota.prefetch_max_keys
        self.scripting = spec.quota.scripting
        rate = spec.quota.requests_per_second
        if not rate:
            self.bucket = None
        elif self.bucket is None:
            self.bucket = TokenBucket(rate)
        elif self.bucket.rate != rate:  # every refresh applies the spec again: only a change retunes the bucket
            self.bucket.retune(rate)
        over = self.store.set_budget(spec.quota.memory_bytes, evict=EVICTIONS_PER_STEP)
        if over and self._evicting is None:
            self._evicting = asyncio.get_running_loop().create_task(self._evict_over_budget())

    async def _evict_over_budget(self) -> None:
        """Evict down to a shrunk budget a step at a time, letting the loop serve between steps (all at once, a
        million entries held it 1.4 s). A later quota change takes effect at the next step."""
        try:
            while True:
                await asyncio.sleep(0)  # the loop's turn: other tenants' commands run between steps
                if not self.store.evict_over_budget(EVICTIONS_PER_STEP):
                    return
        finally:
            self._evicting = None

    def admit(self, commands: int = 1) -> bool:
        """Charge `commands` against the rate quota; False when over it."""
        if self.bucket is None or self.bucket.take(commands):
            return True
        self.rate_limited += 1
        return False

    def is_resident(self, key: Hashable) -> bool:
        return key in self.store

    def in_flight(self, key: Hashable) -> bool:
        return key in self.flights

    async def _load(self, key: bytes, prefetched: bool, from_origin: bool = True) -> bytes | None:
        epoch = self._flush_epoch
        self._loading[key] = self._loading.get(key, 0) + 1
        changes = self._changes.get(key, 0)
        value, expires_at = None, 0
        try:
            if self.shared is not None and (shared := await self.shared.get(self.tier_name, key)) is not None:
                value, expires_at = shared
            if value is None and from_origin and self.origin is not None:
                self.origin.path_for(key)  # an unmappable key is the client's mistake: no read, nothing counted
                self.origin_fetches += 1
                try:
                    value = await self.origin.fetch(key, self.store.budget)
                except ObjectTooLarge as err:  # refused before it was read: the tenant's budget, not the origin
                    self._too_large(err.size)
                    raise
                except Exception:
                    self.origin_errors += 1
                    raise
                if value is not None and self.shared is not None:
                    self.shared.fill(self.tier_name, key, value)
            # A change made while the load was in flight is newer than the loaded copy: keep it, or let the next
            # read load it. A client's write here always stays (the key is in the store); with a shared tier, so
            # does a DEL or FLUSH here or another node's change. On one node a key deleted meanwhile may come back
            # from the origin, as the next read would bring it.
            fresh = self._changes.get(key, 0) == changes and epoch == self._flush_epoch
            if value is not None and fresh and key not in self.store:
                # A prefetch a client's read joined is that read's load: cached as demanded, not as a prefetch.
                prefetched = prefetched and not self.flights.demanded(key)
                try:
                    self.store.set(key, value, expires_at, prefetched=prefetched, loaded=True)
                except ValueTooLarge:
                    self._too_large(len(value))  # a readable object: served uncached, never turned into an error
            return value
        finally:
            if left := self._loading[key] - 1:
                self._loading[key] = left
            else:
                del self._loading[key]
                self._changes.pop(key, None)

    def _too_large(self, size: int) -> None:
        """Count an origin object that cannot be cached; the log says so at most once a minute per tenant."""
        self.too_large_to_cache += 1
        self._too_large_unlogged += 1
        now = time.monotonic()
        if now - self._too_large_logged_at >= _TOO_LARGE_LOG_INTERVAL_S:
            log.warning("tenant %s: %d origin object(s) too large for its memory budget of %d bytes, not cached "
                        "(the latest %d bytes)", self.name, self._too_large_unlogged, self.store.budget, size)
            self._too_large_logged_at, self._too_large_unlogged = now, 0

    def changed(self, key: bytes | None) -> None:
        """A key changed (None: the tenant was flushed), here or on another node: loads in flight are stale."""
        if key is None:
            self._flush_epoch += 1
        elif key in self._loading:
            self._changes[key] = self._changes.get(key, 0) + 1

    async def load_shared(self, keys: list[bytes]) -> None:
        """Bring these keys from the shared tier into memory where it holds them (a failing tier loads nothing).
        Its own flights: a read joining one of these would not get the origin's copy."""
        await load_each(lambda key: self.flights.do(("shared", key), self._load(key, False, from_origin=False)), keys)

    async def delete(self, key: bytes) -> bool:
        """Delete a key, also one only another node has held (with a shared tier); False when there was none."""
        if self.shared is not None and key not in self.store:
            await self.load_shared([key])
        return self.store.delete(key)

    def drop_remote(self, keys: list[bytes] | None) -> None:
        """Another node changed these keys (None: flushed the tenant), so drop this node's copies. A key this node
        wrote and has not sent yet stays (its write reaches the tier later, and wins); one sent but unconfirmed
        stays until confirmed, then is read back (the tier's order decides which write won)."""
        store = self.store
        unsent = store.written or set()
        if keys is None:
            self.changed(None)
            ours = unsent | self._unconfirmed
            self._contested |= self._unconfirmed - unsent
            kept = [(key, entry.value, entry.expires_at) for key in ours if (entry := store.entry(key)) is not None]
            store.flush(local=True)
            for key, value, expires_at in kept:
                store.set(key, value, expires_at, loaded=True)
            return
        for key in keys:
            self.changed(key)
            if key in unsent:
                continue
            if key in self._unconfirmed:
                self._contested.add(key)
            else:
                store.discard(key)

    def sending(self, keys: set[bytes]) -> None:
        """These writes of this node's are on their way to the tier (unconfirmed until `confirmed`)."""
        self._unconfirmed |= keys

    def unsent(self, keys: set[bytes]) -> None:
        """Sending these failed: they are marked to be sent again (after any other node's write that raced them,
        so they win as unsent writes do)."""
        self._unconfirmed -= keys
        self._contested -= keys

    def confirmed(self, keys: list[bytes]) -> None:
        """The tier holds these writes of this node's now: a copy another node raced is read back from the tier,
        unless a newer write of this node's is still to be sent."""
        unsent = self.store.written or set()
        for key in keys:
            self._unconfirmed.discard(key)
            if key in self._contested:
                self._contested.discard(key)
                if key not in unsent:
                    self.store.discard(key)

    async def get(self, key: bytes) -> bytes | None:
        """A read as the HTTP API makes it: the store first, then the origin. Raises OriginError."""
        value = self.store.get(key)
        record = self.record_hit if value is not None else self.record_miss
        if record is not None:
            record(key)
        if value is None and self.reads_through:
            value = await self.read_through(key)
        return value

    async def read_through(self, key: bytes) -> bytes | None:
        """Load a key the store just missed from the shared tier or the origin (joining an in-flight load).
        Raises OriginError."""
        return await self.flights.do(key, self._load(key, prefetched=False))

    async def write_if(self, key: bytes, failure: Callable[[bytes | None], Awaitable[str | None]],
                       write: Callable[[], Written]) -> Written:
        """Run `write` unless `failure` of the key's current value (None: it has none) says why not, and raise
        PreconditionFailed with that reason. Raises OriginError, KeyContended.

        The current value is the one a GET would answer: memory, then the shared tier and the origin. A client's
        If-Match names a tag it got from a GET, and a key only the origin holds is one a GET serves, so that a
        create-only write (If-None-Match: *) must not replace it. Reading it this way is no read of the client's:
        neither the hit counts nor the prefetcher see it.

        The store changes only on the event loop, and only between awaits: the check and the write are
        separated by none, so no other write of this process (HTTP, RESP, a script, a load) falls between them.
        `failure` may await (hashing a large value), and a write may land meanwhile: the key is watched as WATCH
        watches it, and a changed value is checked again, up to WRITE_IF_ATTEMPTS times. Across the nodes of a
        shared tier it is not atomic: another node's write reaches this one later, and may overtake or be
        overtaken by this one, as any two writes of two nodes do.
        """
        store = self.store
        for _ in range(WRITE_IF_ATTEMPTS):
            count = store.watch(key)
            try:
                entry = store.entry(key)
                value = entry.value if entry is not None else None
                if value is None and self.reads_through:
                    value = await self.read_through(key)
                reason = await failure(value)
                # No await from here on. The value checked is still the current one when the store holds that very
                # object, or, when the store holds none, nothing changed the key since the watch began.
                entry = store.entry(key)
                if (entry.value is value) if entry is not None else not store.changed_since(key, count):
                    if reason is not None:
                        raise PreconditionFailed(reason)
                    return write()
            finally:
                store.unwatch(key)
        raise KeyContended(f"the key changed under each of {WRITE_IF_ATTEMPTS} checks of the condition; retry")

    def prefetch(self, key: bytes) -> asyncio.Task[bytes | None] | None:
        """Start loading a key nobody asked for yet; None when it is resident, in flight or has no origin."""
        if self.origin is None or key in self.flights or key in self.store:
            return None
        return self.flights.start(key, self._load(key, prefetched=True))


class TenantRegistry:
    """All tenant caches of this process, kept in step with the key source's tenant list."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._caches: dict[str, TenantCache] = {}
        self._origin_slots = ReadSlots(settings.origin_max_concurrency)
        self.shared: SharedTier | None = None

    def share(self, tier: SharedTier) -> None:
        """Put every tenant, now and later, on the deployment's shared tier."""
        self.shared = tier
        for cache in self._caches.values():
            tier.attach(cache)

    def __iter__(self):
        return iter(self._caches.values())

    def __len__(self) -> int:
        return len(self._caches)

    def get(self, name: str) -> TenantCache | None:
        return self._caches.get(name)

    def serving(self, principal: Principal) -> TenantCache | None:
        """The cache of the principal's tenant, if this process serves the incarnation its key was issued to: a key
        of a tenant created again under a name never reaches the cache of the one before (until a refresh brings
        the new one), nor the other way round."""
        cache = self._caches.get(principal.tenant)
        return cache if cache is not None and cache.incarnation == principal.incarnation else None

    def sync(self, specs: list[TenantSpec]) -> None:
        """Create caches for new tenants, apply changed quotas, drop deleted tenants (and their data)."""
        wanted = {spec.name: spec for spec in specs}
        for name in list(self._caches):
            if name not in wanted:
                self.remove(name)
        for spec in wanted.values():
            self.upsert(spec)

    def upsert(self, spec: TenantSpec) -> TenantCache:
        """Add one tenant, or apply its changed quotas. A tenant deleted and created again under its name (another
        incarnation) gets a new cache, and the old one's data goes."""
        cache = self._caches.get(spec.name)
        if cache is not None and cache.incarnation != spec.incarnation:
            self.remove(spec.name)
            cache = None
        if cache is None:
            cache = self._caches[spec.name] = TenantCache(spec, self.settings, self._origin_slots)
            if self.shared is not None:
                self.shared.attach(cache)
        else:
            cache.apply(spec)
        return cache

    def remove(self, name: str) -> bool:
        """Stop serving a tenant. Its data goes with its cache, and from the shared tier too: no later tenant of
        its name could read it there, but nothing else would ever delete it."""
        cache = self._caches.pop(name, None)
        if cache is None:
            return False
        if self.shared is not None:
            self.shared.drop(cache)
        return True

    def close(self) -> None:
        """Stop the origins' read threads (reads in flight finish): for the service's stop."""
        self._origin_slots.close()
