"""`foresight bench prefetch-load`: what a running prefetch engine costs the GETs a busy server serves.

The access log is a few tens of nanoseconds per GET (`bench access-log`), but the engine's worker shares the
interpreter lock with the event loop, so under load its computing is taken from the requests. This runs
`foresight serve --dev` over a directory origin once with no prefetcher and once per prefetcher asked for,
alternating rounds. Each server's prefetch engine must be running first (a learned one waits for its child
process), then it is filled with SETs and warmed with GETs, and GET throughput and p99 are measured with
redis-benchmark (50 clients, keys drawn from 100k, so some GETs miss and read through to the origin, as a
cache's do). The ratio to the no-prefetcher run in the same round is the engine's cost at the configured CPU
shares; beside it, the share of GETs the prefetcher predicted from (read from the server's /metrics), since a
smaller share costs less. Each prefetcher runs with each isolation asked for: in a child process or in the
worker thread.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from service.bench.resp import BenchError, dev_server_argv, run_redis_benchmark, server_process
from service.net import free_port

T = TypeVar("T")


@dataclass(frozen=True)
class LoadFigure:
    prefetcher: str
    isolation: str  # where it computed: "process" or "thread" ("" for none)
    pipeline: int
    rps: float
    p99_ms: float
    rps_ratio: float  # against no prefetcher, medians of the same rounds
    predicted: float | None  # share of the GETs the prefetcher predicted from (the rest were over its CPU share)
    logged: float | None  # share of the GETs the access log recorded (a worker that is behind records a sample)


@dataclass(frozen=True)
class LoadSetup:
    """What every server in a run gets, beside its prefetcher and isolation."""

    requests: int = 200_000  # GETs per measured redis-benchmark run
    pipelines: tuple[int, ...] = (1, 16)
    rounds: int = 3
    cpu_share: float | None = None  # FORESIGHT_PREFETCH_CPU_SHARE (None: the service's default)
    process_share: float | None = None  # FORESIGHT_PREFETCH_PROCESS_SHARE (None: the service's default)
    device: str = "cpu"  # FORESIGHT_PREFETCH_DEVICE for the learned model
    warmup: int = 100_000  # GETs (-P 16) once the engine runs, before measuring: its model's training settles
    isolations: tuple[str, ...] = ("process",)

    def environment(self, prefetcher: str, isolation: str) -> dict[str, str]:
        env = {**os.environ, "FORESIGHT_PREFETCHER": prefetcher, "FORESIGHT_PREFETCH_DEVICE": self.device,
               "FORESIGHT_PREFETCH_ISOLATION": isolation or "thread"}
        for name, value in (("CPU_SHARE", self.cpu_share), ("PROCESS_SHARE", self.process_share)):
            if value is not None:
                env[f"FORESIGHT_PREFETCH_{name}"] = str(value)
        return env


# A learned engine starts once its child process has imported torch and built the model: seconds on a CPU,
# longer with a cold CUDA context.
ENGINE_START_TIMEOUT_S = 180.0


def scrape(http_port: int) -> dict[str, list[tuple[str, float]]]:
    """Each metric family's samples (name, value), from a dev server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {family.name: [(sample.name, sample.value) for sample in family.samples]
            for family in text_string_to_metric_families(text) if family.samples}


def metric_totals(http_port: int) -> dict[str, float]:
    """Each counter family's total over its labels, from a dev server's /metrics."""
    return {name: sum(value for sample, value in samples if sample.endswith("_total"))
            for name, samples in scrape(http_port).items()}


def _read_counts(http_port: int) -> tuple[float, float, float]:
    """(reads, reads predicted from, reads logged) so far, from the server's /metrics. Reads, not the engine's
    own count of what it settled: under load it records and settles a sample."""
    totals = metric_totals(http_port)
    reads = totals.get("foresight_cache_hits", 0.0) + totals.get("foresight_cache_misses", 0.0)
    return reads, totals.get("foresight_prefetch_predicted", 0.0), totals.get("foresight_prefetch_logged", 0.0)


def once_settled(read: Callable[[], T], quiet_s: float = 0.1, limit_s: float = 3.0) -> T:
    """`read()` once the engine has caught up with the reads so far (the value held still for `quiet_s`).
    Predictions lag reads by a step: taken at once, a run's last ones would count in the next run, and a run's
    share could exceed 1."""
    deadline = time.monotonic() + limit_s
    last = read()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = read()
        if now == last:
            break
        last = now
    return last


def wait_for_engine(http_port: int, prefetcher: str) -> None:
    """Until the server's prefetch engine runs (its counters are in /metrics): before it does, a run would
    measure a server without one."""
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while "foresight_prefetch_predicted" not in metric_totals(http_port):
        if time.monotonic() > deadline:
            raise BenchError(f"the {prefetcher} prefetch engine did not start within {ENGINE_START_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def prefetching_server(origin: str, env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """A `foresight serve --dev` over the `origin` directory whose prefetch engine (`FORESIGHT_PREFETCHER` in
    `env`) already runs; yields its (RESP port, HTTP port)."""
    resp_port, http_port = free_port(), free_port()
    with server_process(dev_server_argv(resp_port, http_port, "--origin", origin), resp_port, "foresight", env):
        prefetcher = env.get("FORESIGHT_PREFETCHER", "none")
        if prefetcher != "none":
            wait_for_engine(http_port, prefetcher)
        yield resp_port, http_port


def measure(prefetchers: list[str], setup: LoadSetup) -> list[LoadFigure]:
    arms = [("none", ""), *((p, iso) for p in prefetchers if p != "none" for iso in setup.isolations)]
    samples: dict[tuple[tuple[str, str], int], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as origin:
        for _ in range(setup.rounds):
            for arm in arms:
                prefetcher, isolation = arm
                with prefetching_server(origin, setup.environment(prefetcher, isolation)) as (resp_port, http_port):
                    run_redis_benchmark(resp_port, "set", setup.requests, 50, 1)
                    if setup.warmup:
                        run_redis_benchmark(resp_port, "get", setup.warmup, 50, 16)
                    before = once_settled(functools.partial(_read_counts, http_port))
                    for pipeline in setup.pipelines:
                        rps, _, p99 = run_redis_benchmark(resp_port, "get", setup.requests, 50, pipeline)
                        now = once_settled(functools.partial(_read_counts, http_port))
                        reads = max(1.0, now[0] - before[0])
                        predicted, logged = ((now[i] - before[i]) / reads for i in (1, 2))
                        before = now
                        samples.setdefault((arm, pipeline), []).append((rps, p99, predicted, logged))
    medians = {key: tuple(statistics.median(run[i] for run in runs) for i in range(4))
               for key, runs in samples.items()}
    return [
        LoadFigure(prefetcher, isolation, pipeline, rps, p99, rps / medians[(("none", ""), pipeline)][0],
                   *((predicted, logged) if prefetcher != "none" else (None, None)))
        for ((prefetcher, isolation), pipeline), (rps, p99, predicted, logged) in sorted(
            medians.items(), key=lambda kv: (kv[0][1], arms.index(kv[0][0])))
    ]


def as_json(figures: list[LoadFigure], setup: LoadSetup) -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "setup": asdict(setup), "figures": [asdict(f) for f in figures]}
