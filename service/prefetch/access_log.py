"""The per-tenant access log: a bounded, sampled ring the GET path appends to and the prefetch worker drains.

A hit, the hot path, costs one C-level `deque.append` of the key the read already holds: no Python frame, no
lock, no torch and no allocation (a `(key, hit)` tuple per read cost two to three times as much: an allocation
the garbage collector tracks for as long as the ring holds it). A miss is about to go to the origin, so it can
afford a small wrapper that marks it. When the worker falls behind, the oldest entries fall off the ring instead
of growing memory, and the drain notes it.

Sampling (`sample_every`; the service never sets it and records every read) keeps every n-th access, through a
Python counter. It does not keep sequences whole: the delta and successor models see every n-th key of a run, and
a workload whose period shares a factor with n aliases (with n = 2, reads alternating A, B log only B).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable

# (key, hit): hit is True, False, or None for a miss that found the key's load already in flight (a prefetch
# issued too late to land before its read, which the lead tuner must tell from one that never came).
Access = tuple[Hashable, bool | None]
Recorder = Callable[[Hashable], None]


class _Miss:
    """A ring entry for a read that missed (any other entry is the key of a hit)."""

    __slots__ = ("in_flight", "key")

    def __init__(self, key: Hashable, in_flight: bool) -> None:
        self.key, self.in_flight = key, in_flight


# Enough for ~200 ms of reads at 80k GET/s between two drains. A bigger ring costs the GET path more once the
# worker falls behind: keeping more request keys alive spreads reads over more memory (`foresight bench
# access-log` measures a full ring).
DEFAULT_CAPACITY = 1 << 14


class AccessLog:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, sample_every: int = 1,
                 in_flight: Callable[[Hashable], bool] = lambda key: False) -> None:
        """`in_flight`: whether a key's load is running (the cache's), asked when a read misses: the miss then
        joins that load, and only at this moment can anyone tell a prefetch that came too late from none."""
        if capacity < 1 or sample_every < 1:
            raise ValueError("access log needs capacity >= 1 and sample_every >= 1")
        self._in_flight = in_flight
        self.capacity = capacity
        self.sample_every = sample_every
        self._ring: deque[Hashable] = deque(maxlen=capacity)
        self._tick = 0
        self.drained = 0
        self.saturated = 0  # drains that found the ring full: accesses may have fallen off before them

    def recorders(self) -> tuple[Recorder, Recorder]:
        """The cheapest callables that record a hit and a miss of a key: a hit is the ring's own append when
        not sampling."""
        hit = self._ring.append if self.sample_every == 1 else self._sampled
        return hit, self._miss

    def _miss(self, key: Hashable) -> None:
        (self._ring.append if self.sample_every == 1 else self._sampled)(_Miss(key, self._in_flight(key)))

    def _sampled(self, entry: Hashable) -> None:
        self._tick += 1
        if self._tick >= self.sample_every:
            self._tick = 0
            self._ring.append(entry)

    def append(self, key: Hashable, hit: bool) -> None:
        """Record a read (every `sample_every`-th one)."""
        self.recorders()[0 if hit else 1](key)

    def drain(self) -> list[Access]:
        """Everything logged since the last drain as `Access` pairs, oldest first. Safe against appends from
        another thread: it pops only as many entries as were there when it started."""
        ring = self._ring
        if len(ring) == self.capacity:
            self.saturated += 1
        entries = [ring.popleft() for _ in range(len(ring))]
        self.drained += len(entries)
        return [(e.key, None if e.in_flight else False) if type(e) is _Miss else (e, True) for e in entries]

    def __len__(self) -> int:
        return len(self._ring)
