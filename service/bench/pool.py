"""`foresight bench prefetch-pool`: how many reads a second several tenants' learned prefetchers predict from,
spread over one child process and over several.

A child process computes on one core, so with one child every tenant's model shares that core; the service
spreads tenants over `FORESIGHT_PREFETCH_PROCESSES` children (`PrefetchPool`). This builds `tenants` learned
prefetchers in a pool of each size asked for, drives each from its own thread with batches of 128 random keys
(the engine's chunk; the cost per read is `bench learned-cost`'s), first for `warmup` reads each so training
settles, then for `seconds`, and counts the reads answered. No CPU budget applies: this is the children's
capacity, which the budgets then share out. The first size asked for is the baseline of the ratios.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from service.bench.learned_cost import CACHE_ENTRIES, CHUNK, KEY_SPACE


@dataclass(frozen=True)
class PoolFigure:
    processes: int
    tenants: int
    device: str
    reads_per_s: float  # all tenants together
    slowest_tenant_reads_per_s: float  # the least served tenant: a pool that starves one does not look good


def _drive(prefetcher: Any, slot: int, batches: int | None, stop: threading.Event, counts: list[int]) -> None:
    """Feed tenant `slot`'s prefetcher batches of random keys (its own seed): `batches` of them, or until `stop`
    is set."""
    rng = random.Random(slot)
    done = 0
    while (batches is None or done < batches) and not stop.is_set():
        prefetcher.access_batch([rng.randrange(KEY_SPACE) for _ in range(CHUNK)])
        done += 1
        counts[slot] += CHUNK


def _run_all(prefetchers: Sequence[Any], batches: int | None, seconds: float | None) -> list[int]:
    """Every tenant's thread at once; reads each answered."""
    stop = threading.Event()
    counts = [0] * len(prefetchers)
    threads = [threading.Thread(target=_drive, args=(p, i, batches, stop, counts), daemon=True)
               for i, p in enumerate(prefetchers)]
    for thread in threads:
        thread.start()
    if seconds is not None:
        time.sleep(seconds)
        stop.set()
    for thread in threads:
        thread.join()
    return counts


def measure_one(processes: int, tenants: int, device: str, warmup: int, seconds: float) -> PoolFigure:
    from service.prefetch.isolated import PrefetchPool, ProcessPrefetcher
    from service.prefetch.shadow import CacheModel

    pool = PrefetchPool(processes)
    try:
        cache = CacheModel(capacity=CACHE_ENTRIES)
        prefetchers = [ProcessPrefetcher("learned", device=device, cache=cache, host=pool.host())
                       for _ in range(tenants)]
        _run_all(prefetchers, batches=max(1, warmup // CHUNK), seconds=None)
        started = time.perf_counter()
        counts = _run_all(prefetchers, batches=None, seconds=seconds)
        elapsed = time.perf_counter() - started
    finally:
        pool.close()
    return PoolFigure(processes, tenants, device, sum(counts) / elapsed, min(counts) / elapsed)


def measure(sizes: Sequence[int], tenants: int, device: str = "cpu", warmup: int = 20_000,
            seconds: float = 10.0) -> list[PoolFigure]:
    return [measure_one(size, tenants, device, warmup, seconds) for size in sizes]


def as_json(figures: list[PoolFigure]) -> dict[str, Any]:
    base = figures[0].reads_per_s
    return {"figures": [asdict(f) | {"ratio": f.reads_per_s / base} for f in figures]}
