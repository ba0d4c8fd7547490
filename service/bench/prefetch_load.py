"""`foresight bench prefetch-load`: what a running prefetch engine costs the GETs a busy server serves.

The access log is a few tens of nanoseconds per GET (`bench access-log`), but the engine's worker shares the
interpreter lock with the event loop, so under load its computing is taken from the requests. This runs
`foresight serve --dev` over a directory origin once with no prefetcher and once per prefetcher asked for,
alternating rounds, fills it with SETs, and measures GET throughput and p99 with redis-benchmark (50 clients,
keys drawn from 100k, so some GETs miss and read through to the origin, as a cache's do). The ratio to the
no-prefetcher run in the same round is the engine's cost at the configured `FORESIGHT_PREFETCH_CPU_SHARE`;
beside it, the share of GETs the prefetcher predicted from (read from the server's /metrics), since a smaller
share costs less. Each prefetcher runs with each isolation asked for: in a child process or in the worker thread.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from service.bench.resp import dev_server_argv, run_redis_benchmark, server_process
from service.net import free_port


@dataclass(frozen=True)
class LoadFigure:
    prefetcher: str
    isolation: str  # where it computed: "process" or "thread" ("" for none)
    pipeline: int
    rps: float
    p99_ms: float
    rps_ratio: float  # against no prefetcher, medians of the same rounds
    predicted: float | None  # share of the GETs the prefetcher predicted from (the rest were over its CPU share)


def _read_counts(http_port: int) -> tuple[float, float]:
    """(reads, reads predicted from) so far, from the server's /metrics. Reads, not the engine's own count
    of what it settled: under load some fall off the access log before the worker drains them."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    totals = {family.name: sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
              for family in text_string_to_metric_families(text)}
    reads = totals.get("foresight_cache_hits", 0.0) + totals.get("foresight_cache_misses", 0.0)
    return reads, totals.get("foresight_prefetch_predicted", 0.0)


def measure(prefetchers: list[str], requests: int = 200_000, pipelines: tuple[int, ...] = (1, 16), rounds: int = 3,
            cpu_share: float | None = None, isolations: tuple[str, ...] = ("process",)) -> list[LoadFigure]:
    arms = [("none", ""), *((p, iso) for p in prefetchers if p != "none" for iso in isolations)]
    samples: dict[tuple[tuple[str, str], int], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as origin:
        for _ in range(rounds):
            for arm in arms:
                prefetcher, isolation = arm
                env = {**os.environ, "FORESIGHT_PREFETCHER": prefetcher, "FORESIGHT_PREFETCH_DEVICE": "cpu",
                       "FORESIGHT_PREFETCH_ISOLATION": isolation or "thread"}
                if cpu_share is not None:
                    env["FORESIGHT_PREFETCH_CPU_SHARE"] = str(cpu_share)
                resp_port, http_port = free_port(), free_port()
                argv = dev_server_argv(resp_port, http_port, "--origin", origin)
                with server_process(argv, resp_port, "foresight", env):
                    run_redis_benchmark(resp_port, "set", requests, 50, 1)
                    reads, predicted_reads = _read_counts(http_port)
                    for pipeline in pipelines:
                        rps, _, p99 = run_redis_benchmark(resp_port, "get", requests, 50, pipeline)
                        now_reads, now_predicted = _read_counts(http_port)
                        predicted = (now_predicted - predicted_reads) / max(1.0, now_reads - reads)
                        reads, predicted_reads = now_reads, now_predicted
                        samples.setdefault((arm, pipeline), []).append((rps, p99, predicted))
    medians = {key: tuple(statistics.median(run[i] for run in runs) for i in range(3))
               for key, runs in samples.items()}
    return [
        LoadFigure(prefetcher, isolation, pipeline, rps, p99, rps / medians[(("none", ""), pipeline)][0],
                   predicted if prefetcher != "none" else None)
        for ((prefetcher, isolation), pipeline), (rps, p99, predicted) in sorted(
            medians.items(), key=lambda kv: (kv[0][1], arms.index(kv[0][0])))
    ]


def as_json(figures: list[LoadFigure], cpu_share: float | None) -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "cpu_share": cpu_share, "figures": [asdict(f) for f in figures]}
