"""The per-tenant access log: a bounded, sampled ring the GET path appends to and the prefetch worker drains.

The hot path is one C-level `deque.append` of a `(key, hit)` tuple (no Python frame, no lock, no torch): the
service calls the bound method `recorder()` returns. When the worker falls behind, the oldest entries fall off
the ring instead of growing memory, and the drain notes it. Sampling keeps every n-th access (that path runs a
Python counter first): sequences stay contiguous between gaps, which is what the delta and successor models
need.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable

Access = tuple[Hashable, bool]


class AccessLog:
    def __init__(self, capacity: int = 1 << 16, sample_every: int = 1) -> None:
        if capacity < 1 or sample_every < 1:
            raise ValueError("access log needs capacity >= 1 and sample_every >= 1")
        self.capacity = capacity
        self.sample_every = sample_every
        self._ring: deque[Access] = deque(maxlen=capacity)
        self._tick = 0
        self.drained = 0
        self.saturated = 0  # drains that found the ring full: accesses may have fallen off before them

    def recorder(self) -> Callable[[Access], None]:
        """The cheapest callable that records one `(key, hit)` read: the ring's own append when not sampling."""
        return self._ring.append if self.sample_every == 1 else self._sampled

    def _sampled(self, access: Access) -> None:
        self._tick += 1
        if self._tick >= self.sample_every:
            self._tick = 0
            self._ring.append(access)

    def append(self, key: Hashable, hit: bool) -> None:
        """Record a read (every `sample_every`-th one)."""
        self.recorder()((key, hit))

    def drain(self) -> list[Access]:
        """Everything logged since the last drain, oldest first. Safe against appends from another thread:
        it pops only as many entries as were there when it started."""
        ring = self._ring
        if len(ring) == self.capacity:
            self.saturated += 1
        out = [ring.popleft() for _ in range(len(ring))]
        self.drained += len(out)
        return out

    def __len__(self) -> int:
        return len(self._ring)
