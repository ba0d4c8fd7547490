"""The live aim of stride answers (`lead.py`): hill climbing on the prefetches the cache used."""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Callable, Hashable

import pytest

from service.prefetch import make_prefetcher
from service.prefetch.answers import FAST, MODEL
from service.prefetch.base import Predictions, Prefetcher
from service.prefetch.coordinator import PrefetchBudget
from service.prefetch.duel import DUEL, Duel, Verdict
from service.prefetch.engine import PrefetchEngine
from service.prefetch.lead import LeadTuner
from service.prefetch.stride import StridePrefetcher
from tests.prefetch.lead_sim import drive, simulate
from tests.prefetch.test_answers import Armed


def _climb(tuner: LeadTuner, used_per_read: Callable[[int], float], duels: int = 0, reads: int = 0) -> list[int]:
    """Feed the tuner `duels` comparisons' worth of epochs, or `reads` reads' worth, whose outcome depends on the
    aim alone; the aim of each epoch."""
    aims = []
    for _ in range(duels * len(DUEL) + reads // tuner.epoch):
        aim = tuner.aim
        aims.append(aim)
        tuner.observe(tuner.epoch, round(tuner.epoch * used_per_read(aim)))
    return aims


def test_the_tuner_climbs_to_the_aim_that_uses_the_most_prefetches_from_either_side() -> None:
    def peaked(aim: int) -> float:
        return max(0.0, 0.9 - 0.05 * abs(aim - 9))

    for start in (0, 4, 30):
        tuner = LeadTuner(start)
        _climb(tuner, peaked, reads=80_000)
        assert abs(tuner.lead - 9) <= 1, start


def test_the_tuner_stays_put_when_the_aim_makes_no_difference_and_probes_ever_less() -> None:
    tuner = LeadTuner(4)
    aims = _climb(tuner, lambda aim: 0.5, reads=400_000)
    assert tuner.lead == 4 and tuner.moves == 0
    assert set(aims) == {3, 4, 5}  # probes one step either side, alternately
    assert aims[:8].count(4) == 4  # at first every duel is half probes
    later = aims[-len(aims) // 4 :]
    assert later.count(4) >= 0.8 * len(later)  # later a rest, longer after each probe given up, comes before each duel


def test_a_duel_runs_the_current_aim_around_the_probe_and_is_repeated_until_it_has_a_verdict() -> None:
    tuner = LeadTuner(8, epoch=100)
    assert _climb(tuner, lambda aim: 0.5, duels=1) == [8, 10, 10, 8]  # a step is a quarter of the aim
    assert _climb(tuner, lambda aim: 0.5, duels=1) == [8, 10, 10, 8]  # a tie: the same probe again
    # The probe's epochs take more reads with more used in all, but fewer per read: per read decides.
    for aim, reads, used in ((8, 100, 50), (10, 300, 90), (10, 100, 30), (8, 100, 50)):
        assert tuner.aim == aim
        tuner.observe(reads, used)
    assert tuner.lead == 8 and tuner.moves == 0
    assert _climb(tuner, lambda aim: 0.5, duels=2)[:5] == [8, 8, 6, 6, 8]  # given up: a rest, then the other way


def test_a_phase_change_inside_a_duel_is_no_verdict_though_the_reads_alone_would_give_one() -> None:
    def duel(rates: tuple[float, ...]) -> Verdict:
        judge = Duel(epoch=32)
        for rate in rates:  # current, probe, probe, current
            judge.observe(32, round(32 * rate))
        return judge.verdict()

    # The same totals: steady, the probe is ahead by 0.25 a read in both halves; with the trace's sequential run
    # ending in the middle of the duel, it is ahead only across the change.
    assert duel((0.25, 0.5, 0.5, 0.25)) is Verdict.PROBE
    assert duel((0.5, 0.75, 0.25, 0.0)) is Verdict.PENDING



def test_a_rest_lasts_its_epochs_in_reads_however_many_reads_a_step_settles() -> None:
    duel = Duel(epoch=32)
    for _ in range(5):
        duel.kept()  # five probes lost: a rest of 16 epochs
    assert not duel.observe(512, 0)  # one busy step settles the whole rest
    duel.observe(32, 0)  # the duel's first epoch, the current choice's
    assert duel.probing


def test_the_reads_a_step_settles_past_a_rests_end_count_for_the_current_choice_with_their_share_of_used() -> None:
    duel = Duel(epoch=32)
    duel.kept()  # a rest of one epoch
    duel.observe(96, 30)  # 32 reads of rest, then 64 of the duel's first epoch (the current choice, as resting)
    assert duel.tallies[False] == [64, 20, 0] and duel.probing


def test_a_probe_is_given_up_after_its_duels_reads_not_after_so_many_steps() -> None:
    """An epoch ends with the step that completes it (all of a step's reads came under one choice), so under
    load a duel is four steps of hundreds of reads; a duel counts as many duels as its reads would fill."""
    duel = Duel(epoch=32, max_duels=32)
    ended = [duel.observe(512, 256) for _ in range(2 * len(DUEL))]  # two duels, 4,096 reads, no difference
    assert ended.count(True) == 2 and duel.verdict() is Verdict.CURRENT


def test_the_tuner_aims_nearer_by_the_wait_its_used_prefetches_had_to_spare() -> None:
    def one_duel(tuner: LeadTuner, in_flight: int, waits: list[int]) -> int:
        for _ in DUEL:
            tuner.observe(32, 16, in_flight, waits)  # the same outcome at either aim: no verdict
        return tuner.lead

    # A tenth of the used prefetches waited 3 reads or less after landing: 3 nearer would lose none of those, and
    # the tuner keeps one read to spare.
    assert one_duel(LeadTuner(8), 0, [3] * 2 + [5] * 14) == 6
    assert one_duel(LeadTuner(8), 0, [1] * 2 + [5] * 14) == 8  # one read to spare is all they had
    assert one_duel(LeadTuner(8), 0, [0] * 2 + [5] * 14) == 8  # more than a tenth had no time to spare
    assert one_duel(LeadTuner(8), 4, [5] * 16) == 8  # a quarter read while still in flight: not nearer
    assert one_duel(LeadTuner(8), 0, [5] * 3) == 8  # too few to tell (the current aim's epochs only count)
    assert one_duel(LeadTuner(3), 0, [40] * 16) == 0  # no nearer than 0
    assert one_duel(LeadTuner(8), 0, [40] * 16) == 0


def test_the_tuner_keeps_within_its_bounds() -> None:
    tuner = LeadTuner(0, max_lead=2)
    aims = _climb(tuner, lambda aim: 0.1 * aim, duels=10)
    assert tuner.lead == 2 and max(aims) == 2 and min(aims) >= 0
    with pytest.raises(ValueError, match="max_lead"):
        LeadTuner(5, max_lead=4)
    with pytest.raises(ValueError, match="max_lead"):
        LeadTuner(0, max_lead=0)


def test_only_stride_may_be_aimed_once_built() -> None:
    stride = StridePrefetcher(lead=0)
    stride.access_batch([10, 11])
    stride.aim_at(7)
    assert stride.access(12)[0].key == 12 + 8
    with pytest.raises(ValueError, match="lead"):
        stride.aim_at(-1)
    with pytest.raises(TypeError, match="fixed"):
        make_prefetcher("markov").aim_at(3)


class DelayedCache:
    """A target whose prefetches land `delay` reads after their issue and which keeps at most `keep` unread
    prefetched keys (the oldest go first): a prefetch aimed too near comes late, one aimed too far is evicted."""

    def __init__(self, delay: int, keep: int) -> None:
        self.delay, self.keep, self.now = delay, keep, 0
        self.flying: dict[Hashable, tuple[int, asyncio.Future[None]]] = {}  # key -> (the read it lands before, fetch)
        self.unread: OrderedDict[Hashable, None] = OrderedDict()

    def is_resident(self, key: Hashable) -> bool:
        return key in self.unread

    def in_flight(self, key: Hashable) -> bool:
        return key in self.flying

    def prefetch(self, key: Hashable) -> asyncio.Future[None]:
        fetch = asyncio.get_running_loop().create_future()
        self.flying[key] = (self.now + self.delay, fetch)
        return fetch

    def read(self, key: Hashable) -> bool:
        self.now += 1
        for landed in [k for k, (due, _) in self.flying.items() if due <= self.now]:
            self.flying.pop(landed)[1].set_result(None)
            self.unread[landed] = None
        while len(self.unread) > self.keep:
            self.unread.popitem(last=False)
        return self.unread.pop(key, False) is None


async def _scan(engine: PrefetchEngine, cache: DelayedCache, reads: range, model_late_by: int = 0) -> int:
    """A sequential scan read through the engine a read a step (a prefetcher's own answers reaching it
    `model_late_by` reads late); returns the hits."""
    def emit(chunk: list[tuple[Hashable, Predictions]], reads_after: int, source: str) -> None:
        engine.issue(chunk, reads_after + (model_late_by if source == MODEL else 0), source)

    return await drive(engine, cache.read, [f"obj:{i:06d}".encode() for i in reads], 1, emit)


async def _warmed(delay: int, keep: int, tune: bool, prefetcher: Prefetcher | None = None,
                  model_late_by: int = 0) -> tuple[PrefetchEngine, int]:
    """An engine (stride unless another prefetcher is given) after a 10,000-read scan, and its hits over the next
    2,000."""
    cache = DelayedCache(delay, keep)
    engine = PrefetchEngine(cache, prefetcher or StridePrefetcher(lead=0), PrefetchBudget(per_request=1),
                            tune_lead=tune)
    await _scan(engine, cache, range(10_000), model_late_by=model_late_by)
    return engine, await _scan(engine, cache, range(10_000, 12_000), model_late_by=model_late_by)


def test_a_stride_engine_tunes_its_aim_past_the_fetch_delay_and_short_of_eviction() -> None:
    fixed, fixed_hits = asyncio.run(_warmed(delay=6, keep=6, tune=False))
    tuned, tuned_hits = asyncio.run(_warmed(delay=6, keep=6, tune=True))
    assert fixed.tuner is None and fixed.stride_lead == 0
    assert fixed.coordinator.stats.late_in_flight > 10_000  # aimed at the next read, every prefetch came late
    assert tuned.tuner is not None and tuned.stride_lead in range(5, 12)  # lands before its read, unevicted
    assert fixed_hits < 50 and tuned_hits > 1_800


def test_an_engine_with_arms_tunes_its_own_stride_answers_while_they_are_issued() -> None:
    armed = Armed()  # its answers (never read) come 100 reads late: the engine's own stride answers instead
    engine, hits = asyncio.run(_warmed(delay=6, keep=6, tune=True, prefetcher=armed, model_late_by=100))
    assert engine.sources is not None and engine.sources.serving == FAST
    assert engine.stride_lead in range(5, 12) and engine.sources.fast.lead > 0 == armed.lead  # the model keeps its own
    assert hits > 1_800


def test_on_short_runs_the_tuner_comes_nearer_at_once_where_prefetches_land_well_before_their_reads() -> None:
    # Runs of 12 sequential keys from random places, a read a step, prefetches landing 2 reads after issue: aimed 1
    # ahead they land in time, and each read further aims past more of a run's keys. Adjacent aims differ too
    # little for a duel to tell within 1,000 reads; the prefetches' spare wait tells at the first duels. The engine
    # hears of each landing before the next read, as the service's callback does when reads come one at a time.
    rng = random.Random(5)
    runs = [b"k:%09d" % (base + i) for base in rng.sample(range(10**8), 84) for i in range(12)]
    fixed, _, _ = asyncio.run(simulate(runs, 500, burst=1, delay=2, lead=4, tuner=None, landings="read"))
    tuned, lead, _ = asyncio.run(simulate(runs, 500, burst=1, delay=2, lead=4, tuner=LeadTuner(4), landings="read"))
    assert lead <= 2 and tuned > fixed + 0.1


def test_with_pipelined_reads_the_tuner_climbs_past_a_fetch_that_lands_after_the_next_burst() -> None:
    # Bursts of 8 reads, an engine step after each, prefetches landing 6 reads after issue: by the step that
    # settles a late read its fetch has landed, so only the read itself can tell it came while in flight.
    scan = [b"k:%06d" % i for i in range(12_000)]
    fixed, _, _ = asyncio.run(simulate(scan, 500, burst=8, delay=6, lead=4, tuner=None))
    tuned, lead, _ = asyncio.run(simulate(scan, 500, burst=8, delay=6, lead=4, tuner=LeadTuner(4)))
    assert fixed < 0.2  # aimed 4 ahead, nearly every prefetch is read while still being fetched
    assert lead >= 10 and tuned > 0.9
