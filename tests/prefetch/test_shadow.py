"""Shadow-cache selection: the cache ends up fed by the arm that misses least in it, whatever the arms' accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.bench.replay import replay
from service.bench.traces import Trace
from service.prefetch.base import Prediction, Predictions, Prefetcher
from service.prefetch.learned.prefetcher import LearnedPrefetcher, TrainConfig
from service.prefetch.markov import MarkovPrefetcher
from service.prefetch.shadow import (
    CacheModel,
    CacheSimulation,
    KeyOnlyStore,
    SelectorConfig,
    ShadowSelector,
    in_sample,
)
from service.prefetch.stride import StridePrefetcher
from service.store.memory import MemoryStore, unit_size
from tests.prefetch.workloads import arm_miss_ratio, arm_proposals, phase_mix, selected_miss_ratio

torch.set_num_threads(1)


class Polluter(Prefetcher):
    """Sure of itself and always wrong: proposes a key nobody ever reads."""

    name = "polluter"

    def __init__(self, lead: int = 0) -> None:
        super().__init__(lead)
        self._next = -1

    def access(self, key: int) -> Predictions:
        self._next -= 1
        return [Prediction(self._next, 1.0)]


def as_trace(keys: list[int]) -> Trace:
    return Trace("synthetic", np.array(keys, dtype=np.int64))


def test_a_selector_that_keeps_one_arm_gives_exactly_that_arms_replay() -> None:
    keys = phase_mix(20_000, seed=7, kinds=("scan",))
    trace = as_trace(keys)
    answers = arm_proposals(keys, {"stride": StridePrefetcher()})
    model = CacheModel(200)
    selected, selector = selected_miss_ratio(trace, answers, model)
    assert selector.served["stride"] == len(keys)
    assert selected == arm_miss_ratio(trace, answers["stride"], model)


def test_an_arm_that_pollutes_the_cache_is_dropped_for_no_prefetching() -> None:
    # A Zipf working set that just fits: every wasted prefetch evicts something that will be read again.
    keys = phase_mix(15_000, seed=8, kinds=("hot",))
    trace = as_trace(keys)
    answers = arm_proposals(keys, {"polluter": Polluter()})
    model = CacheModel(500)
    selected, selector = selected_miss_ratio(trace, answers, model)
    alone = arm_miss_ratio(trace, answers["polluter"], model)
    none = arm_miss_ratio(trace, [[] for _ in keys], model)
    assert none < 0.95 * alone
    assert selected <= none * 1.02
    assert selector.served["none"] > 0.95 * len(keys)


@pytest.mark.parametrize("lead", [0, 10])
def test_selection_over_phases_is_no_worse_than_the_better_single_arm(lead: int) -> None:
    keys = phase_mix(24_000, seed=9, kinds=("scan", "tour", "noisy"), shortest=2_000, longest=8_000)
    trace = as_trace(keys)
    answers = arm_proposals(keys, {"stride": StridePrefetcher(lead), "markov": MarkovPrefetcher(lead)})
    model = CacheModel(round(0.05 * trace.unique), lead=lead)
    stride, markov = (arm_miss_ratio(trace, answers[a], model) for a in ("stride", "markov"))
    selected, selector = selected_miss_ratio(trace, answers, model)
    assert selected <= min(stride, markov) * 1.01
    assert selector.served["stride"] > 0 and selector.served["markov"] > 0


def test_sampled_shadows_pick_the_same_arms() -> None:
    keys = phase_mix(16_000, seed=10, kinds=("scan", "tour"), shortest=2_000, longest=8_000)
    trace = as_trace(keys)
    answers = arm_proposals(keys, {"stride": StridePrefetcher(), "markov": MarkovPrefetcher()})
    model = CacheModel(2000)
    exact, _ = selected_miss_ratio(trace, answers, model)
    sampled, selector = selected_miss_ratio(trace, answers, model, SelectorConfig(max_entries=500))
    assert selector.sample_rate == 4
    assert sampled <= exact * 1.03


def test_key_samples_have_the_asked_for_rate() -> None:
    share = sum(in_sample(k, 8) for k in range(80_000)) / 80_000
    assert 0.11 < share < 0.14
    assert all(in_sample(k, 1) for k in range(100))


def test_selector_always_offers_no_prefetching_as_the_last_arm() -> None:
    selector = ShadowSelector(("stride", "markov"), CacheModel(10))
    assert selector.arms == ("stride", "markov", "none")
    assert selector.serving == "stride"


def test_learned_prefetcher_in_a_replay_selects_with_shadows_of_that_cache() -> None:
    keys = phase_mix(8_000, seed=11, kinds=("scan", "tour"), shortest=2_000, longest=4_000)
    trace = as_trace(keys)
    prefetcher = LearnedPrefetcher(config=TrainConfig(warmup=512, train_every=256, buffer=4096))
    learned = replay(trace, 300, prefetcher, lead=0)
    assert prefetcher.selector is not None
    assert prefetcher.selector.served["stride"] + prefetcher.selector.served["network"] > 0
    stride = replay(trace, 300, StridePrefetcher(), lead=0)
    markov = replay(trace, 300, MarkovPrefetcher(), lead=0)
    assert learned.miss_ratio <= min(stride.miss_ratio, markov.miss_ratio) * 1.02


def test_at_low_miss_rates_the_selector_still_reaches_the_clearly_better_arm() -> None:
    # One loop of consecutive keys: stride misses once per lap, Markov only in the first lap. Both arms miss
    # about one request in a thousand once warm, far below any fixed margin's reach.
    keys = phase_mix(30_000, seed=4, kinds=("loop",), shortest=30_000, longest=30_000)
    trace = as_trace(keys)
    answers = arm_proposals(keys, {"stride": StridePrefetcher(), "markov": MarkovPrefetcher()})
    model = CacheModel(round(0.05 * trace.unique))
    stride = arm_miss_ratio(trace, answers["stride"], model)
    assert stride < 0.002
    selected, selector = selected_miss_ratio(trace, answers, model)
    assert selector.serving == "markov"
    assert selected < 0.75 * stride


@pytest.mark.parametrize("seed", [5, 6])
def test_on_a_short_trace_selection_stays_within_a_bounded_margin_of_the_best_arm(seed: int) -> None:
    keys = phase_mix(8_000, seed=seed, shortest=500, longest=4_000)
    trace = as_trace(keys)
    for lead in (0, 10):
        answers = arm_proposals(keys, {"stride": StridePrefetcher(lead), "markov": MarkovPrefetcher(lead)})
        model = CacheModel(round(0.05 * trace.unique), lead=lead)
        best = min(arm_miss_ratio(trace, answers[a], model) for a in answers)
        assert selected_miss_ratio(trace, answers, model)[0] <= best * 1.02


def test_a_challenger_must_lead_by_the_margin_for_persist_requests_in_a_row() -> None:
    keys = list(range(1_000))  # fresh sequential keys: stride hits, the polluter misses every one
    answers = arm_proposals(keys, {"polluter": Polluter(), "stride": StridePrefetcher()})
    for persist in (1, 50):
        selector = ShadowSelector(("polluter", "stride"), CacheModel(100), SelectorConfig(margin=1.0, persist=persist))
        selector.select_batch(keys, answers)
        assert selector.serving == "stride" and selector.switches == 1
        assert persist <= selector.served["polluter"] <= persist + 5


@pytest.mark.parametrize("policy", ["s3fifo", "lru"])
def test_a_key_only_shadow_store_hits_and_misses_exactly_like_the_memory_store(policy: str) -> None:
    # Shadows run on KeyOnlyStore for speed; the replay's cache is a MemoryStore. Reads, demand inserts and
    # prefetched inserts (which S3-FIFO admits differently), over keys that recur, overflow and come back.
    rng = np.random.default_rng(3)
    fast, full = KeyOnlyStore(300, policy), MemoryStore(300, policy, sizer=unit_size)
    outcomes = []
    for step, key in enumerate(rng.zipf(1.2, 60_000) % 2_000):
        key = int(key)
        if step % 3 == 2:  # a prefetch landing
            if key not in full:
                full.set(key, b"", prefetched=True)
                fast.set(key, b"", prefetched=True)
            continue
        hit = full.get(key) is not None
        assert (fast.get(key) is not None) == hit
        if not hit:
            full.set(key, b"")
            fast.set(key, b"")
        outcomes.append(hit)
        assert len(fast) == len(full)
    assert set(full.keys()) == {k for k in range(2_000) if k in fast}
    assert 0.2 < np.mean(outcomes) < 0.95  # both hits and misses were compared


@pytest.mark.parametrize("lead", [0, 10])
def test_a_shadow_simulation_misses_like_the_replays_and_keeps_no_books(lead: int) -> None:
    # A shadow reads through KeyOnlyStore.read and keeps no used/wasted books; the replay's simulation does both
    # the long way. Proposals (the next key, often already resident or in flight) exercise every skip.
    rng = np.random.default_rng(5)
    model = CacheModel(200, "s3fifo", lead)
    shadow, replay = CacheSimulation(model, key_only=True), CacheSimulation(model)
    for key in (int(k) for k in rng.zipf(1.3, 30_000) % 3_000):
        proposals = [Prediction(key + 1, 0.9)]
        assert shadow.request(key, proposals) == replay.request(key, proposals)
    assert shadow.coordinator.stats.issued == replay.coordinator.stats.issued > 1_000
    assert replay.coordinator.stats.used > 0 and shadow.coordinator.stats.used == 0
    assert not shadow.coordinator.unsettled(key + 1) and not shadow.coordinator._recent
