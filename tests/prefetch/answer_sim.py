"""A live tenant's learned engine on a trace, simulated, to choose between answer-source rules without live noise.

`lead_sim.py` simulates the stride engine; this runs the learned one the same way (the service's engine,
coordinator, store and eviction policy, a client pipelining `burst` reads, prefetches landing `delay` reads after
issue), with the learned prefetcher in-process and its answers reaching the engine `late` reads after the step
that asked for them (live they come 3-10 reads late at 1,000 reads a second on the dev box, `foresight bench
live-replay`'s lag). The engine's own stride answers come with the step, as live. The stride engine runs beside it
as the baseline, from the same starts.

`python -m tests.prefetch.answer_sim RULE,... TRACE...` prints, for each trace and each (burst, delay, late) of
`SETTINGS`, the stride engine's and each rule's hit ratio (lowest-highest over the starts), then each rule's mean
and worst hit ratio as a share of the stride engine's (10,000 requests, cache 5 % of their keys, s3fifo, lead 4).
Rules (`RULES`): `service`, the service's answer sources; `long`, their duel with epochs of 256 reads (before it
took the lead tuner's 32); `long-fast`, that duel starting with the engine's stride answers instead of the
prefetcher's.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import Callable, Hashable
from multiprocessing import Pool
from typing import Any

from service.prefetch import make_prefetcher
from service.prefetch.answers import FAST, MODEL, AnswerSources
from service.prefetch.base import Predictions, Prefetcher
from service.prefetch.coordinator import PrefetchBudget
from service.prefetch.duel import Duel
from service.prefetch.engine import Emit, PrefetchEngine
from service.prefetch.shadow import CacheModel
from service.prefetch.stride import StridePrefetcher
from service.store.memory import MemoryStore, unit_size
from tests.prefetch.lead_sim import START, _Origin, _trace, drive

SETTINGS = ((8, 2, 4), (8, 2, 12), (1, 2, 4), (8, 6, 8))  # (burst, delay, late)
OFFSETS = (0, 8, 24)  # reads of the trace skipped before it starts (the engine starts cold each time)


def _long_epochs(sources: AnswerSources) -> None:
    sources.duel = Duel(256, 2.0, 4, 32)  # the answer duel before it took the lead tuner's constants


def _long_epochs_fast_first(sources: AnswerSources) -> None:
    _long_epochs(sources)
    sources.serving = sources.incumbent = FAST


# What changes in the engine's answer sources once they exist.
RULES: dict[str, Callable[[AnswerSources], None]] = {
    "service": lambda sources: None,
    "long": _long_epochs,
    "long-fast": _long_epochs_fast_first,  # the duel starting with the engine's stride answers
}


class _Engine(PrefetchEngine):
    """The service's engine, its answer sources changed by `rule` once they exist."""

    def __init__(self, *args: Any, rule: Callable[[AnswerSources], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule: Callable[[AnswerSources], None] | None = rule

    def step(self, emit: Emit | None = None, learn: bool = True) -> list[tuple[Hashable, Predictions]]:
        out = super().step(emit, learn)
        if self.rule is not None and self.sources is not None:
            self.rule(self.sources)
            self.rule = None
        return out


async def simulate(keys: list[bytes], capacity: int, burst: int, delay: int, late: int, rule: str | None) -> float:
    """The hit ratio of the learned engine under `rule` (None: the stride engine)."""
    origin = _Origin(MemoryStore(capacity, "s3fifo", sizer=unit_size), delay)
    prefetcher: Prefetcher = (StridePrefetcher(START) if rule is None else
                              make_prefetcher("learned", lead=START, cache=CacheModel(capacity, lead=START)))
    engine = _Engine(origin, prefetcher, PrefetchBudget(per_request=1), tune_lead=True,
                     rule=RULES[rule or "service"])
    waiting: deque[tuple[int, list[tuple[Hashable, Predictions]], int]] = deque()

    def emit(chunk: list[tuple[Hashable, Predictions]], reads_after: int, source: str) -> None:
        if source == MODEL and late and rule is not None:
            waiting.append((origin.now + late, chunk, reads_after))
        else:
            engine.issue(chunk, reads_after, source)

    def read(key: bytes) -> bool:
        hit = origin.read(key)
        while waiting and waiting[0][0] <= origin.now:  # the prefetcher's answers that reach the engine now
            _, chunk, reads_after = waiting.popleft()
            engine.issue(chunk, reads_after + late, MODEL)
        return hit

    return await drive(engine, read, keys, burst, emit) / len(keys)


Job = tuple[str, int, int, int, str | None, int]  # trace, burst, delay, late, rule, offset


def _job(args: Job) -> tuple[Job, float]:
    path, burst, delay, late, rule, offset = args
    keys, capacity = _trace(path)
    return args, asyncio.run(simulate(keys[offset:], capacity, burst, delay, late, rule))


def main(rules: list[str], paths: list[str]) -> None:
    jobs: list[Job] = [(p, b, d, late, r, o) for p in paths for b, d, late in SETTINGS for r in (None, *rules)
                       for o in OFFSETS]
    with Pool(2) as pool:
        results = dict(pool.imap_unordered(_job, jobs))
    shares: dict[str, list[float]] = {r: [] for r in rules}
    for path in paths:
        for burst, delay, late in SETTINGS:
            base = [results[(path, burst, delay, late, None, o)] for o in OFFSETS]
            line = (f"{path.rsplit('/', 1)[-1]:24} burst {burst} delay {delay} late {late:2}: "
                    f"stride {min(base):.3f}-{max(base):.3f} |")
            for rule in rules:
                runs = [results[(path, burst, delay, late, rule, o)] for o in OFFSETS]
                shares[rule] += [hits / b for hits, b in zip(runs, base, strict=True) if b]
                line += f" {rule} {min(runs):.3f}-{max(runs):.3f}"
            print(line, flush=True)
    for rule, values in shares.items():
        print(f"rule {rule}: mean {sum(values) / len(values):.4f} worst {min(values):.4f} of the stride engine's")


if __name__ == "__main__":
    main(sys.argv[1].split(","), sys.argv[2:])
