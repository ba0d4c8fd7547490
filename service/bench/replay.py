"""Replay a trace through the service's own store, eviction policy, prefetcher and coordinator.

Requests are replayed in order with unit-size objects. A prefetch issued after request t lands before
request t + lead + 1 (lead 0: at once); a request for a key still on its way counts as a miss, the demand
fetch inserts it, and the late prefetch is dropped when it lands. Prefetchers see the trace in chunks
(`access_batch`), the same batched path the service's background worker takes; every prediction for a
request uses only the requests before it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from typing import Any

from service.bench.traces import Trace
from service.prefetch.base import USEFUL_WINDOW, Predictions, Prefetcher
from service.prefetch.calibration import OutcomeCalibrator
from service.prefetch.coordinator import PrefetchBudget, PrefetchCoordinator
from service.store.memory import MemoryStore, unit_size

CHUNK = 256  # requests per prefetcher batch (the service drains its access log in batches like these)


class ReplayError(ValueError):
    """Replay settings that do not make sense together."""


@dataclass(slots=True)
class ReplayResult:
    trace: str
    requests: int
    unique: int
    cache_size: int
    policy: str
    prefetcher: str
    budget: int
    lead: int
    hits: int
    misses: int
    miss_ratio: float
    prefetch_issued: int
    prefetch_used: int
    prefetch_late: int
    prefetch_wasted: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReplayCache:
    """The `PrefetchTarget` of a replay: a `MemoryStore` plus prefetches that land `lead` requests later."""

    def __init__(self, store: MemoryStore, lead: int) -> None:
        self.store = store
        self.lead = lead
        self.now = 0
        self._arrivals: deque[tuple[int, Hashable]] = deque()
        self._in_flight: set[Hashable] = set()
        self.on_landed: Callable[[Hashable], None] = lambda key: None

    def is_resident(self, key: Any) -> bool:
        return key in self.store

    def in_flight(self, key: Any) -> bool:
        return key in self._in_flight

    def prefetch(self, key: Any) -> None:
        self._in_flight.add(key)
        self._arrivals.append((self.now + self.lead + 1, key))

    def land_due(self) -> None:
        """Insert every prefetch due before the current request."""
        arrivals, store = self._arrivals, self.store
        while arrivals and arrivals[0][0] <= self.now:
            _, key = arrivals.popleft()
            self._in_flight.discard(key)
            self.on_landed(key)
            if key not in store:
                store.set(key, b"", prefetched=True)

    def read(self, key: Hashable) -> bool:
        """A demand read: a hit, or a miss that fetches the key and inserts it."""
        if self.store.get(key) is not None:
            return True
        self.store.set(key, b"")
        return False


def resolve_cache_size(unique: int, cache_frac: float | None, cache_size: int | None) -> int:
    """Cache entries from a fraction of the trace's unique keys or an absolute size (exactly one)."""
    if cache_frac is not None and cache_size is not None:
        raise ReplayError("give --cache-frac or --cache-size, not both")
    if cache_size is not None:
        if cache_size < 1:
            raise ReplayError(f"--cache-size must be at least 1, got {cache_size}")
        return cache_size
    frac = 0.05 if cache_frac is None else cache_frac
    if not 0.0 < frac <= 1.0:
        raise ReplayError(f"--cache-frac must be within (0, 1], got {frac}")
    return max(1, round(unique * frac))


def replay(
    trace: Trace,
    cache_size: int,
    prefetcher: Prefetcher,
    *,
    policy: str = "s3fifo",
    budget: int = 1,
    lead: int = 0,
    threshold: float = 0.25,
    max_in_flight: int = 64,
    calibrate: bool = False,
    progress: Callable[[int], None] | None = None,
    predictions: list[Predictions] | None = None,
) -> ReplayResult:
    """Replay `trace`; `predictions`, when given, are the prefetcher's proposals computed beforehand.

    Proposals depend only on the trace, never on the cache, so a benchmark matrix may compute them once per
    trace and lead and replay them at several cache sizes; the prefetcher is then not called again.
    """
    if lead != prefetcher.lead:
        raise ReplayError(f"prefetcher built for lead {prefetcher.lead}, replay asked for lead {lead}")
    if budget < 0:
        raise ReplayError(f"--budget must be >= 0, got {budget}")
    start = time.perf_counter()
    store = MemoryStore(cache_size, policy, sizer=unit_size)
    cache = ReplayCache(store, lead)
    coordinator = PrefetchCoordinator(
        cache,
        PrefetchBudget(threshold=threshold, per_request=budget, max_in_flight=max_in_flight),
        calibrator=OutcomeCalibrator() if calibrate else None,
        horizon=lead + 1 + 2 * USEFUL_WINDOW,
    )
    cache.on_landed = coordinator.completed
    keys: list[int] = trace.keys.tolist()
    issue = budget > 0 and prefetcher.name != "none"
    for begin in range(0, len(keys), CHUNK):
        chunk = keys[begin : begin + CHUNK]
        if not issue:
            proposals: list[Predictions] = [[]] * len(chunk)
        elif predictions is not None:
            proposals = predictions[begin : begin + CHUNK]
        else:
            proposals = prefetcher.access_batch(chunk)
        for offset, key in enumerate(chunk):
            cache.now = begin + offset
            cache.land_due()
            hit = cache.read(key)
            coordinator.on_access(key, hit)
            if proposals[offset]:
                coordinator.consider(proposals[offset])
        if progress is not None:
            progress(len(chunk))
    coordinator.settle()
    stats = store.stats
    requests = len(keys)
    return ReplayResult(
        trace=trace.name,
        requests=requests,
        unique=trace.unique,
        cache_size=cache_size,
        policy=store.policy.name,
        prefetcher=prefetcher.name,
        budget=budget,
        lead=lead,
        hits=stats.hits,
        misses=stats.misses,
        miss_ratio=stats.misses / requests if requests else 0.0,
        prefetch_issued=coordinator.stats.issued,
        prefetch_used=stats.prefetch_used,
        prefetch_late=coordinator.stats.late,
        prefetch_wasted=coordinator.stats.issued - stats.prefetch_used,
        seconds=round(time.perf_counter() - start, 3),
    )
