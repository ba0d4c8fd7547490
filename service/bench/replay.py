"""Replay a trace through the service's own store, eviction policy, prefetcher and coordinator.

Requests are replayed in order with unit-size objects. A prefetch issued after request t lands before
request t + lead + 1 (lead 0: at once); a request for a key still on its way counts as a miss, the demand
fetch inserts it, and the late prefetch is dropped when it lands. Prefetchers see the trace in chunks
(`access_batch`), the same batched path the service's background worker takes; every prediction for a
request uses only the requests before it.

`new_keys` is the leak guard. Most public traces number their keys in first-access order (each never-seen key is
the largest so far + 1), so a prefetcher that proposes "largest + 1" turns compulsory misses into hits with
information no cache has: the trace's numbering, not the access pattern. `drop` refuses to prefetch a key the
replay has not read yet (by request i, inclusive), for every prefetcher alike and for the learned prefetcher's
shadow caches too; `allow` prefetches any key; `auto` drops on traces whose first accesses are numbered that way
(`Trace.first_access_numbered` >= `NUMBERED`) and allows elsewhere (block addresses, where prefetching the next
unread block is what a real cache can do).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from service.bench.traces import Trace
from service.prefetch import PREFETCHERS, make_prefetcher
from service.prefetch.base import Predictions, Prefetcher
from service.prefetch.markov import DEFAULT_MAX_KEYS, MarkovPrefetcher
from service.prefetch.shadow import ArmProposals, CacheAwarePrefetcher, CacheModel, CacheSimulation, ShadowSelector
from service.prefetch.stride import StridePrefetcher
from service.store.memory import MemoryStore

CHUNK = 256  # requests per prefetcher batch (the service drains its access log in batches like these)
NEW_KEYS = ("auto", "allow", "drop")
NUMBERED = 0.99  # `auto` drops from this share of first accesses numbered largest-so-far + 1


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
    new_keys: str  # the leak guard that ran: allow or drop
    first_access_numbered: float  # the trace's share of first accesses numbered largest-so-far + 1
    hits: int
    misses: int
    miss_ratio: float
    prefetch_issued: int
    prefetch_used: int
    prefetch_late: int
    prefetch_wasted: int
    prefetch_dropped_new: int  # proposals of keys not read yet that the guard refused (within budget and threshold)
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


class FirstReads:
    """Where each key of a trace is first read; called as `(key, i)`: whether the key was read by request i. The
    table is built from the whole trace, but each answer is exactly what the set of keys read so far would give."""

    def __init__(self, keys: np.ndarray) -> None:
        unique, first = np.unique(keys, return_index=True)
        self._first: dict[Hashable, int] = dict(zip(unique.tolist(), first.tolist(), strict=True))

    def __call__(self, key: Hashable, now: int) -> bool:
        first = self._first.get(key)
        return first is not None and first <= now


def resolve_new_keys(mode: str, trace: Trace) -> str:
    """The guard to run on this trace: `allow` or `drop` (`auto` decides from how its first accesses are numbered)."""
    if mode not in NEW_KEYS:
        raise ReplayError(f"--new-keys must be one of {', '.join(NEW_KEYS)}, got {mode!r}")
    if mode == "auto":
        return "drop" if trace.first_access_numbered >= NUMBERED else "allow"
    return mode


def leak_guard(trace: Trace, mode: str) -> FirstReads | None:
    """The `CacheModel.prefetchable` for a resolved mode: None (any key) or the trace's first reads."""
    return FirstReads(trace.keys) if mode == "drop" else None


class ShadowSelectPrefetcher(Prefetcher):
    """The learned prefetcher's shadow selector over stride and Markov alone, without the network: what switching
    between the baselines gains, so that a report shows what the network adds beyond it."""

    name = "shadow-select"

    def __init__(self, lead: int = 0, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        super().__init__(lead, max_candidates=2)
        self.arms = ("stride", "markov")
        self._stride = StridePrefetcher(lead)
        self._markov = MarkovPrefetcher(lead, max_keys=max_keys)
        self.selector: ShadowSelector | None = None

    def propose_arms(self, keys: Sequence[int]) -> ArmProposals:
        return {"stride": self._stride.access_batch(keys), "markov": self._markov.access_batch(keys)}

    def selector_for(self, model: CacheModel) -> ShadowSelector:
        return ShadowSelector(self.arms, model)

    def attach_cache(self, model: CacheModel | None) -> None:
        self.selector = None if model is None else self.selector_for(model)

    def access(self, key: int) -> Predictions:
        return self.access_batch([key])[0]

    def access_batch(self, keys: Sequence[int]) -> list[Predictions]:
        if self.selector is None:
            raise ReplayError("the shadow-select prefetcher chooses with shadows of a cache: attach_cache first")
        return self.selector.select_batch(keys, self.propose_arms(keys))


BENCH_PREFETCHERS = (*PREFETCHERS[:-1], ShadowSelectPrefetcher.name, PREFETCHERS[-1])  # learned last


def make_bench_prefetcher(name: str, lead: int = 0, device: str = "cpu", max_keys: int = DEFAULT_MAX_KEYS,
                          seed: int = 0) -> Prefetcher:
    """The service's prefetchers by name (`make_prefetcher`), and the benchmark's `shadow-select`."""
    if name == ShadowSelectPrefetcher.name:
        return ShadowSelectPrefetcher(lead, max_keys)
    if name not in PREFETCHERS:
        raise ValueError(f"unknown prefetcher {name!r}; choose one of: {', '.join(BENCH_PREFETCHERS)}")
    return make_prefetcher(name, lead=lead, device=device, max_keys=max_keys, seed=seed)


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
    new_keys: str = "allow",
) -> ReplayResult:
    """Replay `trace`; `predictions`, when given, are the prefetcher's proposals computed beforehand.

    A simple prefetcher's proposals depend only on the trace, so a benchmark matrix may compute them once per
    trace and lead and replay them at several cache sizes; the prefetcher is then not called again. A
    cache-aware one (the learned prefetcher) is told this cache's model first, leak guard included; given
    `predictions` must then have been selected for this very cache and guard (`report` does that).
    `new_keys` defaults to `allow`, what a live server does (`live_replay` compares with one); the CLI and the
    report default to `auto`.
    """
    if lead != prefetcher.lead:
        raise ReplayError(f"prefetcher built for lead {prefetcher.lead}, replay asked for lead {lead}")
    if budget < 0:
        raise ReplayError(f"--budget must be >= 0, got {budget}")
    start = time.perf_counter()
    mode = resolve_new_keys(new_keys, trace)
    model = CacheModel(cache_size, policy, lead, budget, threshold, max_in_flight, leak_guard(trace, mode))
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
        new_keys=mode,
        first_access_numbered=round(trace.first_access_numbered, 4),
        hits=stats.hits,
        misses=stats.misses,
        miss_ratio=stats.misses / requests if requests else 0.0,
        prefetch_issued=coordinator.stats.issued,
        prefetch_used=stats.prefetch_used,
        prefetch_late=coordinator.stats.late,
        prefetch_wasted=coordinator.stats.issued - stats.prefetch_used,
        prefetch_dropped_new=sim.dropped,
        seconds=round(time.perf_counter() - start, 3),
    )
