"""The learned prefetcher learns stride and successor patterns, and beats both on a richer one (CPU)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from service.prefetch.learned.features import delta_token, delta_tokens, key_bucket, key_buckets
from service.prefetch.learned.prefetcher import LearnedPrefetcher, TrainConfig
from service.prefetch.markov import MarkovPrefetcher
from service.prefetch.stride import StridePrefetcher

torch.set_num_threads(1)
FAST = TrainConfig(warmup=512, train_every=256, buffer=4096)


def top1_accuracy(prefetcher, keys: list[int], start: int, chunk: int = 128) -> float:  # type: ignore[no-untyped-def]
    """Share of accesses after `start` whose first proposal is the key read `distance` accesses later."""
    d = prefetcher.distance
    proposals = []
    for i in range(0, len(keys), chunk):
        proposals += prefetcher.access_batch(keys[i : i + chunk])
    hits = total = 0
    for t in range(start, len(keys) - d):
        total += 1
        hits += bool(proposals[t]) and proposals[t][0].key == keys[t + d]
    return hits / total


def stride_runs(n: int, seed: int) -> list[int]:
    """Runs of 32 keys at a run-specific stride, each starting somewhere new."""
    rng = random.Random(seed)
    keys: list[int] = []
    while len(keys) < n:
        base, step = rng.randrange(10**9), rng.choice([1, 2, 8, -1])
        keys += [base + step * i for i in range(32)]
    return keys[:n]


def successor_cycle(n: int, seed: int) -> list[int]:
    """A fixed random tour of 300 keys, repeated: only successors predict it."""
    rng = random.Random(seed)
    tour = rng.sample(range(10**6), 300)
    return (tour * (n // 300 + 1))[:n]


def test_network_learns_a_stride_pattern_within_bounded_steps() -> None:
    learned = LearnedPrefetcher(config=FAST, use_experts=False)
    accuracy = top1_accuracy(learned, stride_runs(4000, seed=1), start=3000)
    assert learned.train_steps <= 100
    assert accuracy > 0.85


def test_network_learns_a_successor_pattern_within_bounded_steps() -> None:
    learned = LearnedPrefetcher(config=FAST, use_experts=False)
    accuracy = top1_accuracy(learned, successor_cycle(4000, seed=2), start=3000)
    assert learned.train_steps <= 100
    assert accuracy > 0.9


def test_network_beats_stride_and_markov_on_alternating_deltas() -> None:
    # +1, +3, +1, +3, ... from fresh bases: no constant stride and no key ever repeats.
    rng = random.Random(3)
    keys: list[int] = []
    while len(keys) < 5000:
        key = rng.randrange(10**9)
        for i in range(40):
            keys.append(key)
            key += 1 if i % 2 == 0 else 3
    keys = keys[:5000]
    learned = top1_accuracy(LearnedPrefetcher(config=FAST), keys, start=3500)
    stride = top1_accuracy(StridePrefetcher(), keys, start=3500)
    markov = top1_accuracy(MarkovPrefetcher(), keys, start=3500)
    assert learned > 0.8
    assert learned > stride + 0.3
    assert learned > markov + 0.3


def test_training_rounds_space_out_once_the_model_has_settled() -> None:
    config = TrainConfig(warmup=256, train_every=128, steps=1, settled_after=2048, settled_train_every=512)
    learned = LearnedPrefetcher(config=config)
    steps_at: dict[int, int] = {}  # labelled accesses -> optimiser steps so far
    keys = [random.Random(3).randrange(1000) for _ in range(6144)]
    for begin in range(0, len(keys), 128):
        learned.access_batch(keys[begin : begin + 128])
        steps_at[learned.labelled] = learned.train_steps
    def steps_between(low: int, high: int) -> int:
        return steps_at[max(n for n in steps_at if n <= high)] - steps_at[min(n for n in steps_at if n >= low)]
    assert steps_between(512, 2048) >= 10  # one round per 128 labelled accesses before settling (~12)
    assert steps_between(2560, 5632) <= 7  # one per 512 after (~6), not ~24


def test_learned_respects_the_lead() -> None:
    learned = LearnedPrefetcher(lead=5, config=FAST)
    assert top1_accuracy(learned, stride_runs(3000, seed=4), start=2000) > 0.7


def test_predictions_use_only_the_past() -> None:
    keys = successor_cycle(2000, seed=5)
    a = LearnedPrefetcher(config=FAST)
    b = LearnedPrefetcher(config=FAST)
    first = a.access_batch(keys[:1000])
    b.access_batch(keys[:1000][:500])
    # The same prefix gives the same proposals whatever follows it.
    assert b.access_batch(keys[500:1000]) == first[500:]


def test_delta_tokens_are_distinct_for_small_deltas_and_bounded() -> None:
    small = {delta_token(d) for d in range(-16, 17)}
    assert len(small) == 33
    assert delta_token(10**15) == delta_token(10**16)
    assert delta_token(100) != delta_token(-100)


EDGES = [0, 1, -1, 16, -16, 17, -17, 31, 32, -33, 2**40 - 1, 2**40, 2**53 - 1, 2**53 + 1, 2**63 - 1, -(2**63)]


@pytest.mark.parametrize("beyond_int64", [False, True])
def test_vectorised_tokens_and_buckets_equal_the_scalar_ones(beyond_int64: bool) -> None:
    rng = random.Random(9)
    values = EDGES + [rng.randrange(-(2**62), 2**62) >> rng.randrange(62) for _ in range(2_000)]
    if beyond_int64:  # keys and deltas past int64 take the per-value path
        values += [2**64 + 5, -(2**70)]
    assert delta_tokens(values).tolist() == [delta_token(v) for v in values]
    assert key_buckets(values).tolist() == [key_bucket(v) for v in values]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_inference_matches_eager() -> None:
    from service.prefetch.learned.model import PrefetchNet
    from service.prefetch.learned.runtime import InferenceRunner, random_inputs

    model = PrefetchNet().cuda()
    inputs = random_inputs(16, np.random.default_rng(0))
    eager = InferenceRunner(model, "cuda", cuda_graphs=False)(inputs)
    graphs = InferenceRunner(model, "cuda", cuda_graphs=True)(inputs)
    np.testing.assert_allclose(eager, graphs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lead", [0, 10])
def test_the_arms_propose_exactly_what_the_simple_prefetchers_would(lead: int) -> None:
    # The Markov arm reads the candidate builder's successor table instead of keeping a second one.
    rng = random.Random(5)
    keys = successor_cycle(3_000, seed=6) + [rng.randrange(500) for _ in range(3_000)] + stride_runs(2_000, seed=7)
    learned = LearnedPrefetcher(lead=lead, config=FAST)
    markov, stride = MarkovPrefetcher(lead), StridePrefetcher(lead)
    proposed = 0
    for begin in range(0, len(keys), 128):
        chunk = keys[begin : begin + 128]
        arms = learned.propose_arms(chunk)
        assert arms["markov"] == markov.access_batch(chunk)
        assert arms["stride"] == stride.access_batch(chunk)
        proposed += sum(map(bool, arms["markov"]))
    assert proposed > 4_000  # the tour and the hot keys have successors


def test_a_learned_prefetcher_computes_on_one_cpu_thread_unless_told_otherwise() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        LearnedPrefetcher(cpu_threads=None)
        assert torch.get_num_threads() == 2
        LearnedPrefetcher()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_retraining_is_spread_one_step_per_batch_so_answers_do_not_wait_for_it() -> None:
    config = TrainConfig(warmup=64, train_every=10**9, settled_train_every=10**9, buffer=1024)
    p = LearnedPrefetcher(config=config)
    for start in range(0, 600, 4):
        p.access_batch(list(range(start, start + 4)))
    assert p.buffer.filled and p.train_steps == 0  # no scheduled round in this config
    p.retrain(steps=5)
    assert p.train_steps == 0  # the call itself trains nothing
    steps = []
    for start in range(600, 628, 4):
        p.access_batch(list(range(start, start + 4)))
        steps.append(p.train_steps)
    assert steps == [1, 2, 3, 4, 5, 5, 5]


def test_warming_up_leaves_the_model_and_its_training_as_they_were() -> None:
    """On CUDA the prefetcher warms up at construction (graph capture, a backward pass, an optimiser step on
    zero gradients): the same calls on the CPU must leave it answering and training exactly as an unwarmed one."""
    keys = stride_runs(2048, seed=3)
    cold, warm = LearnedPrefetcher(config=FAST), LearnedPrefetcher(config=FAST)
    warm.warm_up()
    assert not warm.optimizer.state
    assert all(torch.equal(a, b) for a, b in zip(cold.model.parameters(), warm.model.parameters(), strict=True))
    for i in range(0, len(keys), 128):
        assert cold.access_batch(keys[i : i + 128]) == warm.access_batch(keys[i : i + 128])
    assert cold.train_steps == warm.train_steps > 0
    assert all(torch.equal(a, b) for a, b in zip(cold.model.parameters(), warm.model.parameters(), strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_cuda_prefetcher_has_its_graphs_before_its_first_read() -> None:
    from service.prefetch.learned.runtime import BATCH_BUCKETS

    p = LearnedPrefetcher(config=FAST, device="cuda")
    assert sorted(p.runner._graphs) == list(BATCH_BUCKETS[:-1])
    assert not p.optimizer.state
    p.load_state_dict(p.state_dict())  # a rollback: the old graphs are dropped and captured again at once
    assert sorted(p.runner._graphs) == list(BATCH_BUCKETS[:-1])
