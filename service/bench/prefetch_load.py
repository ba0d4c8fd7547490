"""`foresight bench prefetch-load`: what a running prefetch engine costs the GETs a busy server serves.

The access log is a few tens of nanoseconds per GET (`bench access-log`), but the engine's worker shares the
interpreter lock with the event loop, so under load its computing is taken from the requests. This runs
`foresight serve --dev` over a directory origin once with no prefetcher and once per prefetcher asked for,
alternating rounds, fills it with SETs, and measures GET throughput and p99 with redis-benchmark (50 clients,
keys drawn from 100k, so some GETs miss and read through to the origin, as a cache's do). The ratio to the
no-prefetcher run in the same round is the engine's cost at the configured `FORESIGHT_PREFETCH_CPU_SHARE`.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

from service.bench.resp import dev_server_argv, run_redis_benchmark, server_process
from service.net import free_port


@dataclass(frozen=True)
class LoadFigure:
    prefetcher: str
    pipeline: int
    rps: float
    p99_ms: float
    rps_ratio: float  # against no prefetcher, medians of the same rounds


def measure(prefetchers: list[str], requests: int = 200_000, pipelines: tuple[int, ...] = (1, 16), rounds: int = 3,
            cpu_share: float | None = None) -> list[LoadFigure]:
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    arms = ["none", *(p for p in prefetchers if p != "none")]
    with tempfile.TemporaryDirectory() as origin:
        for _ in range(rounds):
            for arm in arms:
                env = {**os.environ, "FORESIGHT_PREFETCHER": arm, "FORESIGHT_PREFETCH_DEVICE": "cpu"}
                if cpu_share is not None:
                    env["FORESIGHT_PREFETCH_CPU_SHARE"] = str(cpu_share)
                resp_port, http_port = free_port(), free_port()
                argv = dev_server_argv(resp_port, http_port, "--origin", origin)
                with server_process(argv, resp_port, "foresight", env):
                    run_redis_benchmark(resp_port, "set", requests, 50, 1)
                    for pipeline in pipelines:
                        rps, _, p99 = run_redis_benchmark(resp_port, "get", requests, 50, pipeline)
                        samples.setdefault((arm, pipeline), []).append((rps, p99))
    medians = {key: (statistics.median(r for r, _ in runs), statistics.median(p for _, p in runs))
               for key, runs in samples.items()}
    return [
        LoadFigure(arm, pipeline, rps, p99, rps / medians[("none", pipeline)][0])
        for (arm, pipeline), (rps, p99) in sorted(medians.items(), key=lambda kv: (kv[0][1], arms.index(kv[0][0])))
    ]


def as_json(figures: list[LoadFigure], cpu_share: float | None) -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "cpu_share": cpu_share, "figures": [asdict(f) for f in figures]}
