"""The per-tenant access log: a bounded, sampled ring the GET path appends to and the prefetch worker drains.

The hot path does one counter check and one deque append (no locks, no torch); when the worker falls
behind, the oldest entries fall off the ring instead of growing memory. Sampling keeps every n-th access:
sequences stay contiguous between gaps, which is what the delta and successor models need.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable


class AccessLog:
    def __init__(self, capacity: int = 1 << 16, sample_every: int = 1) -> None:
        if capacity < 1 or sample_every < 1:
            raise ValueError("access log needs capacity >= 1 and sample_every >= 1")
        self.capacity = capacity
        self.sample_every = sample_every
        self._ring: deque[tuple[Hashable, bool]] = deque(maxlen=capacity)
        self._tick = 0
        self.appended = 0
        self.drained = 0

    def append(self, key: Hashable, hit: bool) -> None:
        """Hot path: record a read (every `sample_every`-th one)."""
        if self.sample_every > 1:
            self._tick += 1
            if self._tick < self.sample_every:
                return
            self._tick = 0
        self._ring.append((key, hit))
        self.appended += 1

    def drain(self) -> list[tuple[Hashable, bool]]:
        """Everything logged since the last drain, oldest first."""
        # Swap in a fresh ring rather than clear(): an append from another thread lands in one or the other.
        ring, self._ring = self._ring, deque(maxlen=self.capacity)
        out = list(ring)
        self.drained += len(out)
        return out

    @property
    def dropped(self) -> int:
        """Accesses that fell off the ring before a drain (0 while the worker keeps up)."""
        return max(0, self.appended - self.drained - len(self._ring))

    def __len__(self) -> int:
        return len(self._ring)
