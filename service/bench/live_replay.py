"""`foresight bench live-replay`: how much of a prefetcher's replay gain a running server keeps at a read rate.

`bench replay` predicts from every read and lands a prefetch `--lead` reads later. A live server predicts from
what its engine keeps up with, issues proposals a step later and fetches them from a real origin while reads
go on. This replays a trace's keys as GETs against `foresight serve --dev` (a fresh server, cold cache and cold
model for each prefetcher and rate), paced at a target rate, in order on one connection unless asked for
more (more interleave the trace, as concurrent clients do), and reads the hit ratio from the server's
counters; beside it, the offline replay (lead 0) of the same trace, cache size and prefetcher in the same
run. Keys are `k:<zero-padded number>` so the stride prefetcher sees the numbers; every key is a small object
in a scratch directory origin, so every miss reads through.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hiredis

from service.bench.prefetch_load import metric_totals, once_settled, prefetching_server, scrape
from service.bench.replay import replay
from service.bench.resp import BenchError
from service.bench.traces import Trace
from service.prefetch import make_prefetcher
from service.store.memory import ENTRY_OVERHEAD

VALUE = b"v" * 64  # every object's value: a fixed entry size makes the memory budget an exact entry count
MAX_OBJECTS = 200_000  # one origin file per unique key


@dataclass(frozen=True)
class LiveFigure:
    prefetcher: str
    target_rate: float | None  # reads per second asked for (None: as fast as the server answers)
    rate: float  # reads per second achieved
    hit_ratio: float  # the live server's
    replay_hit_ratio: float  # the offline replay's, same trace, cache size and prefetcher, lead 0
    issued: int
    used: int
    predicted: float  # share of the reads the engine predicted from
    lag_reads: float  # mean reads between a predicted read and its proposals' issue
    fast_share: float  # share of the predicted reads answered by the engine's own stride (answers.py)
    tune_lead: bool  # whether the engine tuned its stride answers' lead live (lead.py)
    stride_lead: float | None  # their lead when the run ended (None: no stride answers)


def key_names(keys: Sequence[int]) -> list[bytes]:
    """`k:<number>`, zero-padded to one width for the whole trace (at least 12 digits): every entry then has the
    same size, so the memory budget is an exact entry count."""
    width = max([12, *(len(str(k)) for k in keys)])
    return [b"k:%0*d" % (width, k) for k in keys]


def seed_origin(root: Path, names: Iterable[bytes]) -> None:
    """One object per key name in `root` (a dev server's `--origin` is its one tenant's folder)."""
    for name in names:
        (root / name.decode()).write_bytes(VALUE)


async def send_paced(port: int, keys: list[bytes], rate: float | None, connections: int = 1, batch: int = 8) -> float:
    """GET every key, batch j on connection j % connections, no earlier than j * batch / rate seconds in; returns
    the seconds taken. Raises BenchError on an error reply or a key the origin did not have."""
    batches = [keys[i : i + batch] for i in range(0, len(keys), batch)]
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def connection(first: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        parser = hiredis.Reader()
        try:
            for j in range(first, len(batches), connections):
                if rate is not None:
                    delay = start + j * batch / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                writer.write(b"".join(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(k), k) for k in batches[j]))
                pending = len(batches[j])
                while pending:
                    data = await reader.read(1 << 16)
                    if not data:
                        raise BenchError("the server closed the connection mid-replay")
                    parser.feed(data)
                    while (reply := parser.gets()) is not False:
                        if isinstance(reply, hiredis.ReplyError) or reply is None:
                            raise BenchError(f"GET failed mid-replay: {reply!r}")
                        pending -= 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(c) for c in range(min(connections, len(batches)))))
    return loop.time() - start


def _counts(http_port: int) -> dict[str, float]:
    totals = metric_totals(http_port)
    return {name: totals.get(f"foresight_{name}", 0.0) for name in (
        "cache_hits", "cache_misses", "prefetch_issued", "prefetch_used", "prefetch_predicted",
        "prefetch_issue_lag_reads", "prefetch_fast_answered")}


def stride_lead(http_port: int) -> float | None:
    """The dev server's one tenant's `foresight_prefetch_stride_lead`, None where it has no stride answers."""
    samples = scrape(http_port).get("foresight_prefetch_stride_lead")
    return samples[0][1] if samples else None


def replay_hit_ratio(trace: Trace, cache_size: int, prefetcher: str) -> float:
    return 1.0 - replay(trace, cache_size, make_prefetcher(prefetcher), lead=0).miss_ratio


def measure_one(keys: list[bytes], cache_size: int, prefetcher: str, rate: float | None, origin: Path,
                environment: dict[str, str], connections: int = 1, pipeline: int = 8,
                tune_lead: bool = True) -> tuple[float, dict[str, float], float | None]:
    """(seconds, counter deltas, stride lead at the end) of one replay of the key names against a fresh server."""
    env = {**environment, "FORESIGHT_PREFETCHER": prefetcher, "FORESIGHT_PREFETCH_TUNE_LEAD": str(tune_lead).lower(),
           "FORESIGHT_DEFAULT_TENANT_MEMORY_BYTES": str(cache_size * (len(keys[0]) + len(VALUE) + ENTRY_OVERHEAD))}
    with prefetching_server(str(origin), env) as (resp_port, http_port):
        before = _counts(http_port)
        seconds = asyncio.run(send_paced(resp_port, keys, rate, connections, pipeline))
        after = once_settled(functools.partial(_counts, http_port), quiet_s=0.2, limit_s=5.0)
        lead = stride_lead(http_port)
    return seconds, {name: after[name] - before[name] for name in after}, lead


def measure(trace: Trace, cache_size: int, prefetchers: Sequence[str], rates: Sequence[float | None],
            environment: dict[str, str] | None = None, connections: int = 1, pipeline: int = 8,
            progress: Callable[[str], None] = lambda line: None,
            tunings: Sequence[bool] = (True,)) -> list[LiveFigure]:
    """One figure per prefetcher, rate and lead tuning (`tunings`: on, off or both; `none` runs once)."""
    if trace.unique > MAX_OBJECTS:
        raise BenchError(f"{trace.unique} unique keys: the scratch origin holds at most {MAX_OBJECTS} (use --limit)")
    figures = []
    with tempfile.TemporaryDirectory() as scratch:
        origin = Path(scratch)
        names = key_names(trace.keys.tolist())
        seed_origin(origin, set(names))
        for prefetcher in prefetchers:
            offline = replay_hit_ratio(trace, cache_size, prefetcher)
            for rate, tune in itertools.product(rates, tunings[:1] if prefetcher == "none" else tunings):
                progress(f"{prefetcher} at {'max' if rate is None else f'{rate:g}'} reads/s, lead "
                         f"{'tuned' if tune else 'fixed'}")
                seconds, delta, lead = measure_one(names, cache_size, prefetcher, rate, origin,
                                                   environment or dict(os.environ), connections, pipeline, tune)
                reads = delta["cache_hits"] + delta["cache_misses"]
                predicted = delta["prefetch_predicted"]
                figures.append(LiveFigure(
                    prefetcher, rate, len(trace) / seconds, delta["cache_hits"] / max(1.0, reads), offline,
                    int(delta["prefetch_issued"]), int(delta["prefetch_used"]), predicted / max(1.0, reads),
                    delta["prefetch_issue_lag_reads"] / max(1.0, predicted),
                    delta["prefetch_fast_answered"] / max(1.0, predicted), tune, lead))
    return figures


def as_json(figures: list[LiveFigure], trace: Trace, cache_size: int) -> dict[str, Any]:
    return {"trace": trace.name, "requests": len(trace), "unique": trace.unique, "cache_size": cache_size,
            "cpu_count": os.cpu_count(),
            "figures": [asdict(f) for f in figures]}
