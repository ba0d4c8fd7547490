"""`foresight bench shared-tier`: what a shared Valkey/Redis tier saves N nodes behind one load balancer.

A trace is replayed across `nodes` service nodes, request i to node i mod N (a balancer spreading many
clients), `concurrency` reads in flight, first with every node on its own (each reads its misses from the
origin) and then with all of them on one shared tier. Each node is the service's own TenantCache (memory store,
eviction policy, single-flight, read-through) with its own SharedTier connection and invalidation subscriber,
as in a real deployment; they share one event loop here, so the latencies include each other's CPU. The origin
is a temporary directory (one file per distinct key, removed afterwards) behind the service's own
`origin_latency_ms` (object stores answer a first byte in 10-50 ms). Prints origin reads, where reads were
answered, latency, and the tier run's ratios to the nodes-alone run.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.bench.resp import BenchError
from service.bench.traces import Trace
from service.cache import TenantCache, TenantRegistry
from service.config import Settings, load_settings
from service.shared_tier import SharedTier
from service.store.memory import entry_size
from service.tenancy import TenantQuota, TenantSpec


@dataclass(frozen=True)
class TierRun:
    mode: str  # "alone" or "shared"
    requests: int
    origin_reads: int
    memory_hits: int
    tier_hits: int
    tier_errors: int  # tier calls that failed or timed out (those reads went to the origin)
    mean_ms: float
    p50_ms: float
    p99_ms: float
    seconds: float


@contextlib.contextmanager
def directory_origin(keys: np.ndarray, value_bytes: int) -> Iterator[str]:
    """A directory origin (a kind the service reads: service/origin/urls.py) holding one object per distinct key;
    removed afterwards. --origin-latency-ms stands for the object store's latency."""
    with tempfile.TemporaryDirectory(prefix="foresight-bench-") as root:
        for key in np.unique(keys):
            (Path(root) / str(key)).write_bytes(str(key).encode().ljust(value_bytes, b"."))
        yield root


def _node(settings: Settings, tenant: str, origin: str, budget: int) -> tuple[TenantRegistry, TenantCache]:
    registry = TenantRegistry(settings)
    cache = registry.upsert(TenantSpec(name=tenant, quota=TenantQuota(memory_bytes=budget, origin=origin)))
    return registry, cache


async def _replay(caches: list[TenantCache], keys: list[bytes], concurrency: int) -> tuple[list[float], float]:
    latencies = [0.0] * len(keys)
    position = iter(range(len(keys)))

    async def worker() -> None:
        for i in position:
            started = time.perf_counter()
            await caches[i % len(caches)].get(keys[i])
            latencies[i] = time.perf_counter() - started

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began


async def _run(mode: str, settings: Settings, origin: str, budget: int, nodes: int, keys: list[bytes],
               concurrency: int) -> TierRun:
    # A tenant of its own per run: keys an earlier run left in the tier cannot count as hits.
    tenant = f"bench-{uuid.uuid4().hex[:12]}"
    built = [_node(settings, tenant, origin, budget) for _ in range(nodes)]
    tiers = [SharedTier(settings, registry) for registry, _ in built] if mode == "shared" else []
    try:
        for tier, (registry, _) in zip(tiers, built, strict=False):
            await tier.start()
            registry.share(tier)
        caches = [cache for _, cache in built]
        latencies, seconds = await _replay(caches, keys, concurrency)
    finally:
        for tier in tiers:
            await tier.close()
    ms = np.array(latencies) * 1000
    return TierRun(
        mode=mode, requests=len(keys),
        origin_reads=sum(c.origin_fetches for c in caches),
        memory_hits=sum(c.store.stats.hits for c in caches),
        tier_hits=sum(t.stats.hits for t in tiers), tier_errors=sum(t.stats.errors for t in tiers),
        mean_ms=float(ms.mean()), p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
        seconds=seconds,
    )


async def _check_tier(settings: Settings) -> None:
    """Fail before the runs unless the tier answers this node (ConfigError if it refuses the login)."""
    tier = SharedTier(settings, TenantRegistry(settings))
    try:
        await tier.start()
    finally:
        await tier.close()
    if not tier.connected:
        raise BenchError(f"shared tier {tier.url} did not answer a PING (the warning above says why)")


def measure(trace: Trace, tier_url: str, nodes: int, cache_frac: float, value_bytes: int, origin_latency_ms: float,
            concurrency: int, progress: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Both runs and their ratios, as one JSON-ready object; `progress` hears each run start and end."""
    keys = [str(k).encode() for k in trace.keys.tolist()]
    unique = trace.unique
    budget = max(1, int(unique * cache_frac)) * entry_size(keys[0], b"x" * value_bytes)
    settings = load_settings(shared_tier_url=tier_url, origin_latency_ms=origin_latency_ms, prefetcher="none")
    asyncio.run(_check_tier(settings))
    with directory_origin(trace.keys, value_bytes) as origin:
        runs = []
        for mode in ("alone", "shared"):
            progress(f"{len(keys):,} requests over {nodes} nodes, {mode}")
            runs.append(asyncio.run(_run(mode, settings, origin, budget, nodes, keys, concurrency)))
            progress(f"{mode}: {runs[-1].origin_reads:,} origin reads in {runs[-1].seconds:.1f} s")
        alone, shared = runs
    return {
        "trace": trace.name, "requests": len(keys), "unique": unique, "nodes": nodes, "cache_frac": cache_frac,
        "origin_latency_ms": origin_latency_ms, "concurrency": concurrency,
        "runs": [asdict(alone), asdict(shared)],
        "origin_reads_ratio": shared.origin_reads / alone.origin_reads if alone.origin_reads else None,
        "mean_latency_ratio": shared.mean_ms / alone.mean_ms if alone.mean_ms else None,
        "p99_latency_ratio": shared.p99_ms / alone.p99_ms if alone.p99_ms else None,
    }
