"""`foresight bench learned-cost`: the learned prefetcher's CPU per read, and where it goes.

Under load the service predicts from as many reads as the prefetch CPU share pays for, so this cost decides how
much of a busy tenant's traffic the model sees. Random keys in batches of 128 (the engine's chunk), a
shadow-selected cache of 5,000 entries (small enough that its shadows are exact, not sampled), one torch
thread (the prefetcher's own setting); after a warm-up, the reads are timed with each part timed on its own.
The baseline in the same run is the same prefetcher training every 1,024 reads throughout, which is what it
did before its schedule settled.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

CHUNK = 128
CACHE_ENTRIES = 5_000
KEY_SPACE = 100_000


@dataclass(frozen=True)
class LearnedCost:
    schedule: str  # "settled" (the default TrainConfig) or "every-1024"
    device: str
    us_per_read: float
    parts_us: dict[str, float]  # per read: training, features, shadows, inference, labels, inputs, proposals


def _timed(parts: dict[str, float], name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            parts[name] += time.perf_counter() - started

    return timed


def measure_one(settled: bool, device: str = "cpu", warmup: int = 50_000, reads: int = 20_000,
                seed: int = 0) -> LearnedCost:
    import torch

    from service.prefetch.learned.prefetcher import LearnedPrefetcher, TrainConfig
    from service.prefetch.shadow import CacheModel

    config = TrainConfig() if settled else TrainConfig(settled_after=1 << 62)
    learned = LearnedPrefetcher(device=device, cache=CacheModel(capacity=CACHE_ENTRIES), config=config)
    rng = random.Random(seed)
    keys = [rng.randrange(KEY_SPACE) for _ in range(warmup + reads)]
    for begin in range(0, warmup, CHUNK):
        learned.access_batch(keys[begin : begin + CHUNK])
    parts: dict[str, float] = defaultdict(float)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    train = learned._train

    def train_synced(steps: int) -> None:
        train(steps)
        sync()  # CUDA runs asynchronously: charge the training to training, not to whatever waits next

    # Instance attributes shadow the methods, so the prefetcher's own calls go through the timers.
    learned._train = _timed(parts, "training", train_synced)  # type: ignore[method-assign]
    learned._label = _timed(parts, "labels", learned._label)  # type: ignore[method-assign]
    learned._inputs = _timed(parts, "inputs", learned._inputs)  # type: ignore[method-assign]
    learned._proposals = _timed(parts, "proposals", learned._proposals)  # type: ignore[method-assign]
    learned.builder.build = _timed(parts, "features", learned.builder.build)  # type: ignore[method-assign]
    learned.runner = _timed(parts, "inference", learned.runner)  # type: ignore[assignment]
    assert learned.selector is not None
    learned.selector.select_batch = _timed(parts, "shadows", learned.selector.select_batch)  # type: ignore[method-assign]
    started = time.perf_counter()
    for begin in range(warmup, warmup + reads, CHUNK):
        learned.access_batch(keys[begin : begin + CHUNK])
    elapsed = time.perf_counter() - started
    per_read = {name: seconds / reads * 1e6 for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1])}
    return LearnedCost("settled" if settled else "every-1024", device, elapsed / reads * 1e6, per_read)


def measure(device: str = "cpu", warmup: int = 50_000, reads: int = 20_000) -> list[LearnedCost]:
    """The baseline schedule first, then the settled one, in the same process."""
    return [measure_one(settled, device, warmup, reads) for settled in (False, True)]


def as_json(costs: list[LearnedCost]) -> dict[str, Any]:
    return {"costs": [asdict(c) for c in costs], "ratio": costs[1].us_per_read / costs[0].us_per_read}
