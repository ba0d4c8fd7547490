"""Synthetic workloads for choosing and testing the shadow selector, so no constant is fitted to a benchmark trace.

Their shape was fixed before the selector was run on any trace: phases of log-uniform length (long: 4k to
64k requests, where following the phases pays; short: 500 to 4k, where chasing them costs) of four kinds,
each kind with its own keys, so returning to a kind finds (or has lost) its keys in the cache:

- scan: sequential runs of 8 to 256 keys from random starts (stride wins);
- tour: a fixed random order of 8k keys, read round and round (only successors predict it);
- hot: Zipf(1.1) reads of 5k keys (caching works, every prefetch is a gamble);
- noisy tour: a tour where half the reads are random keys (Markov stays above threshold and wastes half).

Two kinds where every arm misses well under 1 % once warm, added to choose the selector's relative margin:

- loop: a run of 500 to 4k consecutive keys read round and round (stride misses at every wrap, Markov
  misses the first lap and then almost nothing);
- long scan: sequential runs of 2k to 20k fresh keys (stride misses at each jump, Markov at every key).

Short traces (8k requests of short phases) stand for the benchmark's smallest traces, where a switch's
warm-up is a large part of the whole; in three of them (hot with noisy tours or tours) the arms are within a
few percent of each other and of no prefetching, so switching can only cost.

`python -m tests.prefetch.workloads [PART PARTS]` runs the sweep that chose `SelectorConfig` (docs/prefetch.md);
PART/PARTS splits the candidate configurations over processes.
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
from service.prefetch.learned.prefetcher import LearnedPrefetcher
from service.prefetch.shadow import CacheModel, SelectorConfig, ShadowSelector

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


def _loop(rng: random.Random, n: int, _state: dict) -> list[int]:
    base, length = 4 * _REGION + rng.randrange(10**6), rng.randint(500, 4_000)
    return [base + i % length for i in range(n)]


def _long_scan(rng: random.Random, n: int, state: dict) -> list[int]:
    keys: list[int] = []
    while len(keys) < n:
        base = state.get("long_scan", 5 * _REGION) + rng.randrange(1, 10**4)  # always fresh keys
        run = rng.randint(2_000, 20_000)
        keys += range(base, base + run)
        state["long_scan"] = base + run
    return keys[:n]


KINDS: dict[str, Callable[[random.Random, int, dict], list[int]]] = {
    "scan": _scan,
    "tour": _tour,
    "hot": _hot,
    "noisy": _noisy_tour,
    "loop": _loop,
    "long_scan": _long_scan,
}
PHASE_KINDS = ("scan", "tour", "hot", "noisy")
LOW_MISS_KINDS = ("loop", "long_scan")


def phase_mix(
    n: int, seed: int, kinds: Sequence[str] = PHASE_KINDS, shortest: int = 4_000, longest: int = 64_000
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

# name -> (requests, seed, kinds, shortest phase, longest phase)
SWEEP_WORKLOADS: dict[str, tuple[int, int, Sequence[str], int, int]] = {
    "long": (60_000, 1, PHASE_KINDS, 4_000, 64_000),
    "short-phases": (60_000, 2, PHASE_KINDS, 500, 4_000),
    "low-miss": (60_000, 3, LOW_MISS_KINDS, 4_000, 64_000),
    "loop": (30_000, 4, ("loop",), 30_000, 30_000),
    **{f"short-trace{seed}": (8_000, seed, PHASE_KINDS, 500, 4_000) for seed in (5, 6, 7)},
    "short-low-miss": (8_000, 8, LOW_MISS_KINDS, 1_000, 4_000),
    # Short traces whose arms are within a few percent of each other and of no prefetching: switching only costs.
    **{f"short-close{seed}": (8_000, seed, ("hot", "noisy"), 500, 4_000) for seed in (5, 6)},
    "short-close-tour": (8_000, 5, ("hot", "tour"), 500, 4_000),
    # The same near-ties over long traces: a selector that switches on noise pays for it at every switch.
    "close": (60_000, 9, ("hot", "noisy"), 500, 4_000),
    "close-tour": (60_000, 10, ("hot", "tour"), 500, 4_000),
}

CANDIDATES = [
    SelectorConfig(margin=m, relative_margin=r, persist=k)
    for m, r, k in itertools.product((1.0, 2.0, 8.0), (0.0, 0.25), (1, 16, 128))
]


def learned_arms(keys: list[int], lead: int) -> dict[str, list[Predictions]]:
    """The learned prefetcher's arms (stride, Markov, network) over the whole trace, as its selector sees them."""
    learned = LearnedPrefetcher(lead=lead)
    out: dict[str, list[Predictions]] = {arm: [] for arm in learned.arms}
    for b in range(0, len(keys), CHUNK):
        for arm, proposals in learned.propose_arms(keys[b : b + CHUNK]).items():
            out[arm] += proposals
    return out


def sweep(configs: Sequence[SelectorConfig] = CANDIDATES) -> dict[SelectorConfig, dict[str, float]]:
    """Selected/best-single-arm (stride, Markov) per config and case: workloads x cache 1/5/10 % x lead 0/10.

    The selector chooses among the learned prefetcher's arms, the network included, as in the service."""
    ratios: dict[SelectorConfig, dict[str, float]] = {c: {} for c in configs}
    for name, (n, seed, kinds, shortest, longest) in SWEEP_WORKLOADS.items():
        keys = phase_mix(n, seed, kinds, shortest, longest)
        trace = Trace(name, np.array(keys, dtype=np.int64))
        for lead in (0, 10):
            answers = learned_arms(keys, lead)
            for frac in (0.01, 0.05, 0.1):
                model = CacheModel(max(1, round(trace.unique * frac)), lead=lead)
                best = min(arm_miss_ratio(trace, answers[a], model) for a in ("stride", "markov"))
                for config in configs:
                    ratio = selected_miss_ratio(trace, answers, model, config)[0] / max(best, 1e-9)
                    ratios[config][f"{name} lead {lead} frac {frac}"] = ratio
                    print(f"{name} lead {lead} frac {frac} best {best:.4f} {config}: {ratio:.3f}", file=sys.stderr)
    return ratios


def summary(ratios: dict[str, float]) -> str:
    values = list(ratios.values())
    low = [v for k, v in ratios.items() if "low-miss" in k or k.startswith("loop")]
    short = [v for k, v in ratios.items() if k.startswith(("short-trace", "short-low", "short-close"))]
    close = [v for k, v in ratios.items() if k.startswith("close")]
    return (
        f"worst {max(values):.3f} mean {sum(values) / len(values):.3f} above 1: {sum(v > 1 for v in values)}"
        f" | low-miss worst {max(low):.3f}"
        f" mean {sum(low) / len(low):.3f} | short worst {max(short):.3f} mean {sum(short) / len(short):.3f}"
        f" | long close worst {max(close):.3f} mean {sum(close) / len(close):.3f}"
    )


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    part, parts = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (0, 1)
    for config, values in sweep(CANDIDATES[part::parts]).items():
        print(f"{config}: {summary(values)}", flush=True)
    print(f"{time.perf_counter() - started:.0f} s")
