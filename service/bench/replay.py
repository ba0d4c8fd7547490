"""Replay a trace through the service's own store, eviction policy, prefetcher and coordinator.

Requests are replayed in order with unit-size objects. A prefetch issued after request t lands before
request t + lead + 1 (lead 0: at once); a request for a key still on its way counts as a miss, the demand
fetch inserts it, and the late prefetch is dropped when it lands. Prefetchers see the trace in chunks
(`access_batch`), the same batched path the service's background worker takes; every prediction for a
request uses only the requests before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from service.bench.traces import Trace
from service.prefetch.base import Predictions, Prefetcher
from service.prefetch.shadow import CacheAwarePrefetcher, CacheModel, CacheSimulation
from service.store.memory import MemoryStore

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
    progress: Callable[[int], None] | None = None,
    predictions: list[Predictions] | None = None,
) -> ReplayResult:
    """Replay `trace`; `predictions`, when given, are the prefetcher's proposals computed beforehand.

    A simple prefetcher's proposals depend only on the trace, so a benchmark matrix may compute them once per
    trace and lead and replay them at several cache sizes; the prefetcher is then not called again. A
    cache-aware one (the learned prefetcher) is told this cache's model first; given `predictions` must then
    have been selected for this very cache (`report` does that).
    """
    if lead != prefetcher.lead:
        raise ReplayError(f"prefetcher built for lead {prefetcher.lead}, replay asked for lead {lead}")
    if budget < 0:
        raise ReplayError(f"--budget must be >= 0, got {budget}")
    start = time.perf_counter()
    model = CacheModel(cache_size, policy, lead, budget, threshold, max_in_flight)
    sim = CacheSimulation(model)
    keys: list[int] = trace.keys.tolist()
    issue = budget > 0 and prefetcher.name != "none"
    if issue and predictions is None and isinstance(prefetcher, CacheAwarePrefetcher):
        prefetcher.attach_cache(model)
    for begin in range(0, len(keys), CHUNK):
        chunk = keys[begin : begin + CHUNK]
        if not issue:
            proposals: list[Predictions] = [[]] * len(chunk)
        elif predictions is not None:
            proposals = predictions[begin : begin + CHUNK]
        else:
            proposals = prefetcher.access_batch(chunk)
        for key, props in zip(chunk, proposals, strict=True):
            sim.request(key, props)
        if progress is not None:
            progress(len(chunk))
    coordinator, store = sim.coordinator, sim.store
    assert isinstance(store, MemoryStore)  # the service's store, not a shadow's key set
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
