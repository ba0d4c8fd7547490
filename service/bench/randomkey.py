"""`foresight bench randomkey`: RANDOMKEY's draw against the walk it replaced, and what its index costs writes.

Before the key index (service/store/key_index.py), RANDOMKEY reached a random position by walking the store's key
view (`islice`): O(N), on the event loop every tenant shares. The baseline here is that walk, timed in the same run
on the same store as the index's draw. Keeping the index costs the writes of a tenant that once called RANDOMKEY;
that cost is measured as SET of a new key and DEL on a store with the index against one without, in alternating
rounds (best of each, so that load on a shared machine moves both alike).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any

from service.store.memory import MemoryStore

_BUDGET = 1 << 50  # no eviction: the store holds every key
_WALKS = 50  # walks are milliseconds each at a million keys
_WRITES = 20_000  # SETs and DELs timed per round


@dataclass(frozen=True)
class RandomKeyCost:
    keys: int
    walk_us: float  # median walk to a random position: the former RANDOMKEY
    first_call_ms: float  # the first RANDOMKEY, which builds the index
    draw_us: float  # median later RANDOMKEY
    draw_p99_us: float
    set_ns: dict[str, float]  # SET of a new key, "without" and "with" the index
    del_ns: dict[str, float]

    @property
    def speedup(self) -> float:
        return self.walk_us / self.draw_us

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup}


def _filled(keys: int) -> MemoryStore:
    store = MemoryStore(_BUDGET, policy="lru")
    for i in range(keys):
        store.set(b"key:%d" % i, b"v")
    return store


def _walk_us(store: MemoryStore) -> float:
    times = []
    for _ in range(_WALKS):
        started = time.perf_counter()
        next(islice(store.keys(), random.randrange(len(store)), None))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def _draws_us(store: MemoryStore, draws: int) -> list[float]:
    times = []
    for _ in range(draws):
        started = time.perf_counter()
        store.random_key()
        times.append(time.perf_counter() - started)
    return sorted(t * 1e6 for t in times)


def _writes_ns(store: MemoryStore, first: int) -> tuple[float, float]:
    """ns per SET of a new key, then per DEL of those keys (the store is as before afterwards)."""
    fresh = [b"new:%d" % i for i in range(first, first + _WRITES)]
    started = time.perf_counter()
    for key in fresh:
        store.set(key, b"v")
    added = time.perf_counter()
    for key in fresh:
        store.delete(key)
    done = time.perf_counter()
    return (added - started) / _WRITES * 1e9, (done - added) / _WRITES * 1e9


def measure(keys: int, draws: int = 10_000, rounds: int = 5) -> RandomKeyCost:
    with_index, without = _filled(keys), _filled(keys)
    walk = _walk_us(with_index)
    started = time.perf_counter()
    with_index.random_key()
    first_call = time.perf_counter() - started
    timed = _draws_us(with_index, draws)
    best: dict[str, list[float]] = {"with": [float("inf")] * 2, "without": [float("inf")] * 2}
    for round_ in range(rounds):
        order = [("with", with_index), ("without", without)]
        for name, store in order if round_ % 2 else reversed(order):
            costs = _writes_ns(store, round_ * _WRITES)
            best[name] = [min(old, new) for old, new in zip(best[name], costs, strict=True)]
    return RandomKeyCost(
        keys=keys,
        walk_us=walk,
        first_call_ms=first_call * 1e3,
        draw_us=statistics.median(timed),
        draw_p99_us=timed[int(0.99 * (len(timed) - 1))],
        set_ns={name: costs[0] for name, costs in best.items()},
        del_ns={name: costs[1] for name, costs in best.items()},
    )
