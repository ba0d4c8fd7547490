"""The engine's choice between a prefetcher's own answers and its on-time stride answers (`answers.py`)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable, Sequence

from service.prefetch.answers import FAST, MODEL, PROBE_EVERY, AnswerSources
from service.prefetch.base import Prediction, Predictions, Prefetcher
from service.prefetch.coordinator import PrefetchBudget, PrefetchCoordinator
from service.prefetch.engine import CHUNK, CpuBudget, PrefetchEngine
from service.prefetch.keys import KeyCodec


class SyncCache:
    """A target whose prefetches land at once."""

    def __init__(self) -> None:
        self.data: set[Hashable] = set()
        self.prefetched: list[Hashable] = []

    def is_resident(self, key: Hashable) -> bool:
        return key in self.data

    def in_flight(self, key: Hashable) -> bool:
        return False

    def prefetch(self, key: Hashable) -> None:
        self.prefetched.append(key)
        self.data.add(key)


def _score_useless_model_and_useful_stride(sources: AnswerSources, arm: str, reads: range) -> None:
    for i in reads:
        sources.on_access(i)
        sources.score(MODEL, [Prediction(10**6 + i, 0.9)], 0)  # never read
        sources.score(FAST, [Prediction(i + 1, 0.9)], 0)  # the next read
        sources.rescore(arm)


def test_while_the_prefetcher_is_late_the_source_whose_proposals_are_read_takes_over() -> None:
    sources = AnswerSources(PrefetchCoordinator(SyncCache(), PrefetchBudget()), lead=4)
    assert sources.serving == MODEL and sources.model_on_time
    sources.note_lag(MODEL, 1024, 40.0)
    assert not sources.model_on_time
    _score_useless_model_and_useful_stride(sources, "network", range(200))
    assert sources.serving == FAST
    assert sources.scores[FAST] > 100 > 0 > sources.scores[MODEL]
    assert sources.switches == 1


def test_an_on_time_prefetcher_keeps_its_arm_and_its_stride_arm_is_answered_sooner() -> None:
    sources = AnswerSources(PrefetchCoordinator(SyncCache(), PrefetchBudget()), lead=4)
    sources.note_lag(MODEL, 1024, 4.0)  # within lead + 1 reads: its prefetches can still land in time
    _score_useless_model_and_useful_stride(sources, "network", range(200))
    assert sources.scores[FAST] > sources.scores[MODEL] and sources.serving == MODEL  # its shadows' verdict holds
    assert sources.rescore("stride") == FAST  # the same arm, without the trip through the prefetcher
    assert sources.rescore("markov") == MODEL


def test_a_key_the_engine_prefetched_and_nobody_read_does_not_discount_the_other_source() -> None:
    cache = SyncCache()
    coordinator = PrefetchCoordinator(cache, PrefetchBudget())
    sources = AnswerSources(coordinator, lead=0)
    coordinator.consider([Prediction(7, 0.9)])  # the serving source's prefetch: 7 is resident now, unread
    assert cache.is_resident(7)
    sources.score(MODEL, [Prediction(7, 0.9)], 0)
    sources.score(FAST, [Prediction(7, 0.9)], 0)
    sources.on_access(7)
    coordinator.on_access(7, True)
    cache.data.add(8)  # resident by a read, not by a prefetch: proposing it is worth nothing
    sources.score(MODEL, [Prediction(8, 0.9)], 0)
    sources.on_access(8)
    sources.rescore("network")
    assert sources.scores == {MODEL: 1.0, FAST: 1.0}


class Armed(Prefetcher):
    """A prefetcher with arms whose answers are never read (none while it serves no arm, as the learned one);
    records what it was asked."""

    name = "armed"

    def __init__(self, serving: str = "network") -> None:
        super().__init__(lead=0)
        self.serving = serving
        self.calls: list[list[int]] = []

    @property
    def serving_arm(self) -> str:
        return self.serving

    def access(self, key: int) -> Predictions:
        raise AssertionError("the engine asks in batches")

    def access_batch(self, keys: Sequence[int]) -> list[Predictions]:
        self.calls.append(list(keys))
        if self.serving == "none":
            return [[] for _ in keys]
        return [[Prediction(key + 50_000, 0.9)] for key in keys]  # obj:5xxxx, never read here


def _run_steps(engine: PrefetchEngine, reads: range, per_step: int = 1, model_late_by: int = 0) -> None:
    """Reads in steps; the prefetcher's answers reach the event loop `model_late_by` reads after their step."""
    cache = engine.coordinator.target
    assert isinstance(cache, SyncCache)

    def emit(chunk: list[tuple[Hashable, Predictions]], reads_after: int, source: str) -> None:
        engine.issue(chunk, reads_after + (model_late_by if source == MODEL else 0), source)

    for begin in range(reads.start, reads.stop, per_step):
        for i in range(begin, begin + per_step):
            key = f"obj:{i:05d}".encode()
            engine.on_access(key, hit=key in cache.data)
        engine.step(emit)


def test_the_engine_issues_its_stride_answers_while_the_prefetcher_is_late_and_they_score_better() -> None:
    cache = SyncCache()
    engine = PrefetchEngine(cache, Armed(), PrefetchBudget(per_request=1))
    _run_steps(engine, range(0, 2000), model_late_by=100)
    assert engine.sources is not None and engine.sources.serving == FAST
    assert engine.sources.scores[MODEL] < 0 < engine.sources.scores[FAST]
    assert engine.fast_answered > 1900
    assert cache.prefetched[-1] == b"obj:02000"  # stride's answer to the last read, not the model's (obj:51999)
    assert engine.coordinator.stats.used > 1900


def test_an_on_time_prefetchers_answers_are_issued_until_the_cache_uses_the_stride_answers_more() -> None:
    cache = SyncCache()
    engine = PrefetchEngine(cache, Armed(), PrefetchBudget(per_request=1))
    _run_steps(engine, range(0, 30))
    assert engine.sources is not None and engine.sources.serving == MODEL and engine.fast_answered == 0
    assert cache.prefetched[-1] == b"obj:50029"  # its first epoch: its own answers
    _run_steps(engine, range(30, 2200))
    # A duel of four 32-read epochs (the model's answers, stride's, stride's, the model's): its answers were never
    # read, stride's were. Stride issues since, but for duels probing the model's answers again (each lost: a
    # longer rest). With epochs of 256 reads the model's answers took 1,000 of the 2,200 reads.
    assert engine.sources.incumbent == FAST and engine.sources.serving == FAST and engine.sources.model_on_time
    assert cache.prefetched[-1] == b"obj:02200"
    assert engine.fast_answered > 1600 and engine.coordinator.stats.used > 1600


class Oracle(Armed):
    """Answers on time with the key read next, where the engine's stride is right only within runs."""

    def __init__(self, order: list[int]) -> None:
        super().__init__()
        self.after = dict(itertools.pairwise(order))

    def access_batch(self, keys: Sequence[int]) -> list[Predictions]:
        self.calls.append(list(keys))
        return [[Prediction(self.after[key], 0.9)] if key in self.after else [] for key in keys]


def test_an_on_time_prefetcher_whose_answers_the_cache_uses_more_keeps_issuing_them() -> None:
    rng, keys, key = random.Random(3), [], 0
    while len(keys) < 4000:  # runs of four keys, then a jump: stride is right about half the time
        keys += range(key, key + 4)
        key += 4 + rng.randrange(10, 100)
    names, codec, cache = [f"obj:{key:06d}".encode() for key in keys], KeyCodec(), SyncCache()
    engine = PrefetchEngine(cache, Oracle([codec.encode(name) for name in names]), PrefetchBudget(per_request=1),
                            codec=codec)
    for name in names:
        engine.on_access(name, hit=name in cache.data)
        engine.step(engine.issue)
    sources = engine.sources
    assert sources is not None and sources.fast_useful and sources.model_on_time
    assert sources.incumbent == MODEL and engine.fast_answered > 0  # stride was probed (its epochs) and lost
    # The cache used the oracle's answers for nearly every read and stride's for three in four: probing stride,
    # in ever rarer duels, costs a little of the difference.
    assert engine.coordinator.stats.used > 0.85 * len(keys)


def test_nothing_is_issued_while_the_prefetcher_serves_no_arm() -> None:
    cache = SyncCache()
    engine = PrefetchEngine(cache, Armed(serving="none"), PrefetchBudget(per_request=1))
    _run_steps(engine, range(0, 1000), model_late_by=100)
    assert engine.sources is not None and engine.sources.serving == FAST
    assert cache.prefetched == []  # the engine's stride answers are not issued either


def test_steps_without_the_prefetchers_budget_leave_it_the_newest_reads_for_later() -> None:
    armed = Armed()
    engine = PrefetchEngine(SyncCache(), armed, PrefetchBudget(per_request=1), max_batch=300)
    _run_steps(engine, range(0, 8), per_step=8)  # the first step: the engine learns the prefetcher has arms
    assert engine.sources is not None and engine.sources.serving == MODEL
    armed.calls.clear()
    for begin in range(8, 408, 100):
        for i in range(begin, begin + 100):
            engine.on_access(f"obj:{i:05d}".encode(), hit=False)
        engine.step(engine.issue, learn=False)
    assert armed.calls == []
    engine.step(engine.issue)
    asked = [key for call in armed.calls for key in call]
    assert len(asked) == 300 and max(len(call) for call in armed.calls) == CHUNK  # the newest max_batch, in chunks
    assert asked == [engine.codec.encode(f"obj:{i:05d}".encode()) for i in range(108, 408)]
    engine.sources.serving = FAST
    engine.sources.rescore = lambda arm: FAST  # type: ignore[method-assign]
    armed.calls.clear()
    _run_steps(engine, range(408, 708), per_step=300)
    assert [len(call) for call in armed.calls] == [CHUNK]  # while stride answers, it only learns from a chunk


def test_useful_stride_answers_need_only_the_worker_threads_budget() -> None:
    child = CpuBudget(0.1)
    child.charge(1.0)  # ten seconds of waiting
    engine = PrefetchEngine(SyncCache(), Armed(), PrefetchBudget(per_request=1), cpu=CpuBudget(1.0),
                            process_cpu=child)
    _run_steps(engine, range(0, 8))
    wait_s, learn = engine._wait_s()
    assert wait_s > 5 and learn  # not useful yet: the engine waits for both budgets, as without them
    _run_steps(engine, range(8, 300))
    assert engine.sources is not None and engine.sources.fast_useful
    assert engine._wait_s() == (0.0, False)


def test_stride_answers_that_are_not_useful_come_only_every_few_steps() -> None:
    engine = PrefetchEngine(SyncCache(), Armed(), PrefetchBudget(per_request=1))
    _run_steps(engine, range(0, 1))
    assert engine.sources is not None
    asked: list[int] = []
    answer = engine.sources.fast.access_batch

    def counted(keys: Sequence[int]) -> list[Predictions]:
        asked.extend(keys)
        return answer(keys)

    engine.sources.fast.access_batch = counted  # type: ignore[method-assign]
    cache = engine.coordinator.target
    assert isinstance(cache, SyncCache)
    for i in range(800):  # keys without order: stride's guesses are never read
        engine.on_access(f"obj:{(i * 7919) % 99991:05d}".encode(), hit=False)
        engine.step(engine.issue)
    assert not engine.sources.fast_useful and engine.fast_answered == 0
    assert len(asked) == 800 // PROBE_EVERY
