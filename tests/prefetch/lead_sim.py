"""A live tenant's stride engine on a trace, simulated, to choose the lead tuner without live noise.

Live runs of one configuration differ by up to 0.04 in hit ratio (`foresight bench live-replay`), more than the
tuner's choices differ, so the tuner is chosen here: the service's engine, coordinator, store and eviction
policy, driven one burst at a time. A client pipelines `burst` reads; the engine steps after each burst (the live
worker drains about 8 reads a step at 1,000 reads a second, pipeline 8); a prefetch lands `delay` reads after its
issue. Misses of keys whose load is in flight are recorded as the service records them. On the four development
traces this reproduces the live shape: at burst 8 and delay 2 lirs-ps keeps 0.97 of its reads aimed 8 ahead
(live 0.97) and 0.69 aimed 4 ahead (live 0.79), lirs-multi2 does best aimed 2-4.

Where a tuner's duels fall among a trace's phases decides much of its path: started a few steps later, the same
tuner may end elsewhere (lirs-ps at burst 8, delay 6: 0.73-0.92 of the best fixed lead's hits from 7 starts).
That is much of a live run's spread, so each tuner runs from each of `OFFSETS`.

`python -m tests.prefetch.lead_sim TRACE...` prints, for each trace and each (burst, delay) of `SETTINGS`, the
best fixed lead and its hit ratio, and each tuner's lowest and highest hit ratio over the offsets with its final
leads; then each tuner's mean and worst hit ratio as a share of the best fixed lead's (10,000 requests, cache 5 %
of their keys, s3fifo, starting at lead 4 as the service does).

`--landings read` (first argument) tells the engine of each landed prefetch at the read it lands at, instead of by
the callback after the burst's reads (the default, under which the tuner was chosen): a used prefetch's wait then
counts every read after its landing, as the service's callback, which runs before the loop's next reads, does
when reads come one at a time (docs/prefetch-live.md, "When the engine hears of a landing").
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from multiprocessing import Pool
from typing import NamedTuple

from service.bench.live_replay import key_names
from service.bench.traces import load_trace
from service.prefetch.base import Predictions
from service.prefetch.coordinator import PrefetchBudget
from service.prefetch.duel import Duel
from service.prefetch.engine import Emit, PrefetchEngine
from service.prefetch.lead import MAX_LEAD, LeadTuner
from service.prefetch.stride import StridePrefetcher
from service.store.memory import MemoryStore, unit_size

SETTINGS = ((8, 2), (8, 6), (1, 2), (1, 6))  # (burst, delay)
FIXED = (0, 1, 2, 3, 4, 6, 8, 10, 12, 16, 24)
START = 4  # FORESIGHT_PREFETCH_LEAD's default


class Tuner(NamedTuple):
    """A lead tuner to compare: epoch length in reads, whether its duels' standard error counts epochs, and whether
    it aims nearer by the wait its used prefetches had to spare."""

    epoch: int
    epoch_noise: bool
    waits: bool = True

    @property
    def name(self) -> str:
        return f"{self.epoch}{'e' if self.epoch_noise else 'b'}{'' if self.waits else '-nowait'}"

    def build(self) -> LeadTuner:
        scale = 256 // self.epoch  # as many reads dueling before a probe is given up, and resting after
        tuner = (LeadTuner if self.waits else _NoWaitTuner)(START, MAX_LEAD, self.epoch, 2.0, 4 * scale, 32 * scale)
        if not self.epoch_noise:
            tuner._duel = _BinomialDuel(tuner.epoch, 2.0, 4 * scale, 32 * scale)
        return tuner


class _BinomialDuel(Duel):
    def _epoch_noise(self) -> float:
        return 0.0


class _NoWaitTuner(LeadTuner):
    def _short_wait(self) -> int:
        return 0


TUNERS = (Tuner(256, True), Tuner(32, False), Tuner(32, True, waits=False), Tuner(32, True))
OFFSETS = (0, 4, 8, 12, 16, 24, 32)  # engine steps before the tuner starts: where the trace's phases meet its duels


class _Origin:
    """The tenant's cache as the engine sees it: prefetches land `delay` reads after their issue."""

    def __init__(self, store: MemoryStore, delay: int) -> None:
        self.store, self.delay, self.now = store, delay, 0
        self._arrivals: deque[tuple[int, Hashable]] = deque()
        self._flying: dict[Hashable, asyncio.Future[None]] = {}
        self.on_landed: Callable[[Hashable], None] = lambda key: None  # told at once, before the read it lands at

    def is_resident(self, key: Hashable) -> bool:
        return key in self.store

    def in_flight(self, key: Hashable) -> bool:
        return key in self._flying

    def prefetch(self, key: Hashable) -> asyncio.Future[None]:
        self._flying[key] = fetch = asyncio.get_running_loop().create_future()
        self._arrivals.append((self.now + self.delay, key))
        return fetch

    def read(self, key: Hashable) -> bool:
        self.now += 1
        while self._arrivals and self._arrivals[0][0] <= self.now:
            _, landed = self._arrivals.popleft()
            if landed not in self.store:
                self.store.set(landed, b"", prefetched=True)
            self._flying.pop(landed).set_result(None)
            self.on_landed(landed)
        if self.store.get(key) is not None:
            return True
        if key not in self._flying:  # a miss that joins a load in flight waits for it instead
            self.store.set(key, b"")
        return False


async def drive(engine: PrefetchEngine, read: Callable[[bytes], bool], keys: Sequence[bytes], burst: int,
                emit: Emit) -> int:
    """Read `keys` through `read` and the engine's log, `burst` at a time with a step after each; the hits."""
    hits = 0
    for begin in range(0, len(keys), burst):
        for key in keys[begin : begin + burst]:
            hit = read(key)
            hits += hit
            engine.on_access(key, hit)
        await asyncio.sleep(0)  # landed fetches tell the coordinator
        engine.step(emit)
    return hits


async def simulate(keys: list[bytes], capacity: int, burst: int, delay: int, lead: int,
                   tuner: LeadTuner | None, offset: int = 0, landings: str = "burst") -> tuple[float, int, int]:
    """(hit ratio, final lead, moves) of a stride engine at a fixed `lead`, or tuned by `tuner` from its `offset`-th
    step on. `landings`: when the engine hears of a landed prefetch, at the end of the burst (the callback after
    the burst's reads, as the tuner was chosen) or at the read it lands at (`read`)."""
    origin = _Origin(MemoryStore(capacity, "s3fifo", sizer=unit_size), delay)
    engine = PrefetchEngine(origin, StridePrefetcher(lead), PrefetchBudget(per_request=1), tune_lead=tuner is not None)
    engine.tuner = None
    if landings == "read":
        origin.on_landed = lambda key: engine.coordinator.completed(key, len(engine.log))

    def emit(chunk: list[tuple[Hashable, Predictions]], reads_after: int, source: str) -> None:
        engine.issue(chunk, reads_after, source)

    hits = await drive(engine, origin.read, keys[: offset * burst], burst, emit)
    stats = engine.coordinator.stats
    engine.tuner, engine._outcomes_seen = tuner, (stats.used, stats.late_in_flight)
    engine.coordinator.take_waits()
    hits += await drive(engine, origin.read, keys[offset * burst :], burst, emit)
    return hits / len(keys), engine.stride_lead or 0, tuner.moves if tuner is not None else 0


Job = tuple[str, int, int, int | Tuner, int, str]  # trace, burst, delay, fixed lead or tuner, offset, landings


@functools.cache
def _trace(path: str) -> tuple[list[bytes], int]:
    """The trace's first 10,000 keys and the cache size for them (5 % of their unique keys), read once a worker."""
    trace = load_trace(path, limit=10_000)
    return key_names(trace.keys.tolist()), max(1, trace.unique // 20)


def _job(args: Job) -> tuple[Job, tuple[float, int, int]]:
    path, burst, delay, what, offset, landings = args
    keys, capacity = _trace(path)
    if isinstance(what, Tuner):
        return args, asyncio.run(simulate(keys, capacity, burst, delay, START, what.build(), offset, landings))
    return args, asyncio.run(simulate(keys, capacity, burst, delay, what, None, landings=landings))


def main(paths: list[str], landings: str = "burst") -> None:
    jobs: list[Job] = [(p, b, d, lead, 0, landings) for p in paths for b, d in SETTINGS for lead in FIXED]
    jobs += [(p, b, d, t, o, landings) for p in paths for b, d in SETTINGS for t in TUNERS for o in OFFSETS]
    with Pool(2) as pool:
        results = dict(pool.imap_unordered(_job, jobs, chunksize=4))
    shares: dict[Tuner, list[float]] = {t: [] for t in TUNERS}
    for path in paths:
        for burst, delay in SETTINGS:
            best = max(FIXED, key=lambda lead: results[(path, burst, delay, lead, 0, landings)][0])
            best_hits = results[(path, burst, delay, best, 0, landings)][0]
            line = f"{path.rsplit('/', 1)[-1]:24} burst {burst} delay {delay}: fixed {best} {best_hits:.4f} |"
            for tuner in TUNERS:
                runs = [results[(path, burst, delay, tuner, o, landings)] for o in OFFSETS]
                shares[tuner] += [hits / best_hits for hits, _, _ in runs]
                low, high = min(hits for hits, _, _ in runs), max(hits for hits, _, _ in runs)
                leads = ",".join(str(lead) for _, lead, _ in runs)
                line += f" {tuner.name} {low:.3f}-{high:.3f} ({leads})"
            print(line, flush=True)
    for tuner, values in shares.items():
        mean = sum(values) / len(values)
        print(f"tuner {tuner.name}: mean {mean:.4f} worst {min(values):.4f} of the best fixed lead")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--landings"]:
        main(sys.argv[1:])
    elif sys.argv[2:3] in (["burst"], ["read"]):
        main(sys.argv[3:], sys.argv[2])
    else:
        sys.exit("--landings: burst (the callback after the burst's reads) or read (at the read it lands at)")
