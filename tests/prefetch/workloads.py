"""Synthetic workloads for choosing and testing the shadow selector, so no constant is fitted to a benchmark trace.

Their shape was fixed before the selector was run on any trace: phases of log-uniform length (long: 4k to
64k requests, where following the phases pays; short: 500 to 4k, where chasing them costs) of four kinds,
each kind with its own keys, so returning to a kind finds (or has lost) its keys in the cache:

- scan: sequential runs of 8 to 256 keys from random starts (stride wins);
- tour: a fixed random order of 8k keys, read round and round (only successors predict it);
- hot: Zipf(1.1) reads of 5k keys (caching works, every prefetch is a gamble);
- noisy tour: a tour where half the reads are random keys (Markov stays above threshold and wastes half).

`python -m tests.prefetch.workloads` runs the sweep that chose `SelectorConfig` (docs/prefetch.md).
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from service.bench.replay import CHUNK, replay
from service.bench.traces import Trace
from service.prefetch.base import Predictions, Prefetcher
from service.prefetch.markov import MarkovPrefetcher
from service.prefetch.shadow import CacheModel, SelectorConfig, ShadowSelector
from service.prefetch.stride import StridePrefetcher

_REGION = 10**7  # key regions of the phase kinds never overlap


def _scan(rng: random.Random, n: int, _state: dict) -> list[int]:
    keys: list[int] = []
    while len(keys) < n:
        base = rng.randrange(200_000)
        keys += range(base, base + rng.randint(8, 256))
    return keys[:n]


def _tour(rng: random.Random, n: int, state: dict, noise: float = 0.0, name: str = "tour") -> list[int]:
    order, pos = state.setdefault(name, (rng.sample(range(_REGION, _REGION + 10**6), 8_000), 0))
    keys: list[int] = []
    while len(keys) < n:
        if noise and rng.random() < noise:
            keys.append(3 * _REGION + rng.randrange(10**6))
            continue
        keys.append(order[pos])
        pos = (pos + 1) % len(order)
    state[name] = (order, pos)
    return keys


def _hot(rng: random.Random, n: int, _state: dict) -> list[int]:
    weights = 1.0 / np.arange(1, 5001) ** 1.1
    picks = np.random.default_rng(rng.randrange(2**32)).choice(5000, size=n, p=weights / weights.sum())
    return (2 * _REGION + picks).tolist()


def _noisy_tour(rng: random.Random, n: int, state: dict) -> list[int]:
    return _tour(rng, n, state, noise=0.5, name="noisy")


KINDS: dict[str, Callable[[random.Random, int, dict], list[int]]] = {
    "scan": _scan,
    "tour": _tour,
    "hot": _hot,
    "noisy": _noisy_tour,
}


def phase_mix(
    n: int, seed: int, kinds: Sequence[str] = tuple(KINDS), shortest: int = 4_000, longest: int = 64_000
) -> list[int]:
    """Phases of random kinds and log-uniform lengths."""
    rng = random.Random(seed)
    state: dict = {}
    keys: list[int] = []
    while len(keys) < n:
        length = int(math.exp(rng.uniform(math.log(shortest), math.log(longest))))
        keys += KINDS[rng.choice(list(kinds))](rng, length, state)
    return keys[:n]


def arm_proposals(keys: list[int], arms: dict[str, Prefetcher]) -> dict[str, list[Predictions]]:
    """Every arm's proposals for the whole trace, in replay-sized chunks."""
    out: dict[str, list[Predictions]] = {}
    for name, prefetcher in arms.items():
        out[name] = [p for b in range(0, len(keys), CHUNK) for p in prefetcher.access_batch(keys[b : b + CHUNK])]
    return out


def selected_miss_ratio(
    trace: Trace, answers: dict[str, list[Predictions]], model: CacheModel, config: SelectorConfig | None = None
) -> tuple[float, ShadowSelector]:
    """Miss ratio of the cache fed by a shadow selector over the given arms."""
    keys = trace.keys.tolist()
    selector = ShadowSelector(tuple(answers), model, config)
    chosen = [
        p
        for b in range(0, len(keys), CHUNK)
        for p in selector.select_batch(keys[b : b + CHUNK], {a: v[b : b + CHUNK] for a, v in answers.items()})
    ]
    result = replay(trace, model.capacity, _Named(model.lead), lead=model.lead, predictions=chosen)
    return result.miss_ratio, selector


def arm_miss_ratio(trace: Trace, proposals: list[Predictions], model: CacheModel) -> float:
    return replay(trace, model.capacity, _Named(model.lead), lead=model.lead, predictions=proposals).miss_ratio


class _Named(Prefetcher):
    """Stands in for a prefetcher whose proposals are given to the replay."""

    name = "given"

    def access(self, key: int) -> Predictions:
        raise AssertionError("proposals are precomputed")


PHASES = {"long": (4_000, 64_000), "short": (500, 4_000)}


def sweep(n: int = 150_000, seeds: Sequence[int] = (1, 2)) -> None:
    """Worst and mean selected/best-single-arm over phase mixes, sizes and leads, per candidate config."""
    configs = [SelectorConfig(half_life=h) for h in (512, 1024, 2048, 4096, 16384)]
    ratios: dict[SelectorConfig, list[float]] = {c: [] for c in configs}
    for (phases, (shortest, longest)), seed in itertools.product(PHASES.items(), seeds):
        keys = phase_mix(n, seed, shortest=shortest, longest=longest)
        trace = Trace(f"{phases}{seed}", np.array(keys, dtype=np.int64))
        for lead in (0, 10):
            answers = arm_proposals(keys, {"stride": StridePrefetcher(lead), "markov": MarkovPrefetcher(lead)})
            for frac in (0.01, 0.05, 0.1):
                model = CacheModel(max(1, round(trace.unique * frac)), lead=lead)
                best = min(arm_miss_ratio(trace, answers[a], model) for a in answers)
                for config in configs:
                    ratio = selected_miss_ratio(trace, answers, model, config)[0] / best
                    ratios[config].append(ratio)
                    print(f"{trace.name} lead {lead} frac {frac} {config}: {ratio:.3f}", file=sys.stderr, flush=True)
    for config, values in ratios.items():
        print(f"{config}: worst {max(values):.3f} mean {sum(values) / len(values):.3f}")


if __name__ == "__main__":
    started = time.perf_counter()
    sweep()
    print(f"{time.perf_counter() - started:.0f} s")
