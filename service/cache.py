"""A tenant's cache: its store, its origin and its rate quota, behind the calls both front ends make.

Each tenant has its own MemoryStore, so a tenant's writes and scans can only ever evict its own keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from service.config import Settings
from service.origin import Origin, SingleFlight, open_origin
from service.store.memory import MemoryStore
from service.tenancy import TenantSpec

if TYPE_CHECKING:
    from service.resp.scripting import ScriptEngine


class RateLimited(Exception):
    """The tenant is over its request-rate quota."""


class TokenBucket:
    """Refills `rate` tokens per second up to one second's worth; refilled lazily on each take."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(rate, 1.0)
        self._tokens = self.burst
        self._last = time.monotonic()

    def take(self, n: int = 1) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


class TenantCache:
    """One tenant's data: reads, writes, read-through and the quotas that bound them."""

    def __init__(self, spec: TenantSpec, settings: Settings, origin_slots: asyncio.Semaphore | None = None) -> None:
        self.name = spec.name
        self.store = MemoryStore(spec.quota.memory_bytes, settings.eviction_policy)
        self.flights: SingleFlight[bytes | None] = SingleFlight()
        self.origin: Origin | None = None
        origin_url = spec.quota.origin or settings.origin
        if origin_url:
            self.origin = open_origin(
                origin_url,
                tenant=None if spec.quota.origin else spec.name,
                timeout_s=settings.origin_timeout_s,
                latency_ms=settings.origin_latency_ms,
                semaphore=origin_slots,
            )
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
        self.apply(spec)

    def apply(self, spec: TenantSpec) -> None:
        """Take new quotas without losing data (a smaller budget evicts down to it)."""
        self.prefetcher = spec.quota.prefetcher
        self.prefetch_max_keys = spec.quota.prefetch_max_keys
        self.scripting = spec.quota.scripting
        rate = spec.quota.requests_per_second
        self.bucket = TokenBucket(rate) if rate else None
        self.store.set_budget(spec.quota.memory_bytes)

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

    async def _load(self, key: bytes, prefetched: bool) -> bytes | None:
        assert self.origin is not None
        self.origin_fetches += 1
        try:
            value = await self.origin.fetch(key)
        except Exception:
            self.origin_errors += 1
            raise
        # A write that landed while the fetch was in flight is newer than the origin's copy: keep it.
        if value is not None and key not in self.store:
            self.store.set(key, value, prefetched=prefetched)
        return value

    async def get(self, key: bytes) -> bytes | None:
        """A read as the HTTP API makes it: the store first, then the origin. Raises OriginError."""
        value = self.store.get(key)
        record = self.record_hit if value is not None else self.record_miss
        if record is not None:
            record(key)
        if value is None and self.origin is not None:
            value = await self.read_through(key)
        return value

    async def read_through(self, key: bytes) -> bytes | None:
        """Load a key the store just missed (joining an in-flight load). Raises OriginError."""
        return await self.flights.do(key, self._load(key, prefetched=False))

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
        self._origin_slots = asyncio.Semaphore(settings.origin_max_concurrency)

    def __iter__(self):
        return iter(self._caches.values())

    def __len__(self) -> int:
        return len(self._caches)

    def get(self, name: str) -> TenantCache | None:
        return self._caches.get(name)

    def sync(self, specs: list[TenantSpec]) -> None:
        """Create caches for new tenants, apply changed quotas, drop deleted tenants (and their data)."""
        wanted = {spec.name: spec for spec in specs}
        for name in list(self._caches):
            if name not in wanted:
                del self._caches[name]
        for spec in wanted.values():
            self.upsert(spec)

    def upsert(self, spec: TenantSpec) -> TenantCache:
        """Add one tenant, or apply its changed quotas."""
        cache = self._caches.get(spec.name)
        if cache is None:
            cache = self._caches[spec.name] = TenantCache(spec, self.settings, self._origin_slots)
        else:
            cache.apply(spec)
        return cache

    def remove(self, name: str) -> bool:
        return self._caches.pop(name, None) is not None
