"""S3-FIFO eviction (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023).

A small probationary FIFO (10% of capacity) filters one-hit wonders, so a scan of cold keys passes through
it without touching the main FIFO where the working set lives. A ghost FIFO of recently evicted keys lets a
key that comes back skip probation. Hits only bump a 2-bit counter: no list surgery on the read path.

The ghost holds the evicted keys' hashes, not the keys: it only answers "was this key evicted lately?", and a
key of any length costs it the same, about 130 bytes outside the budget (it holds as many as the cache does, so
less than half the budget even for the smallest entries), so evicted long keys do not stay in memory. Two keys
with one hash would share a ghost entry (64-bit hashes: never in practice), which at worst admits a key
straight to main.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

from service.store.policies.base import EvictionPolicy

_MAX_FREQ = 3


class Resident(Protocol):
    """A resident key's record: the store's own entry, or a `_Record` where the caller has none."""

    freq: int
    size: int
    small: bool


class _Record:
    __slots__ = ("freq", "size", "small")

    def __init__(self, size: int) -> None:
        self.freq = 0
        self.size = size
        self.small = False


class S3FIFOPolicy(EvictionPolicy):
    """Three FIFO queues: small (probation) and main, which map keys to their records, and ghost (key hashes)."""

    name = "s3fifo"

    def __init__(self, capacity: int, small_fraction: float = 0.1, move_threshold: int = 1) -> None:
        super().__init__(capacity)
        self._small_fraction = small_fraction
        self._small_limit = max(1, int(capacity * small_fraction))
        self._move_threshold = move_threshold
        self._small: OrderedDict[Hashable, Resident] = OrderedDict()
        self._main: OrderedDict[Hashable, Resident] = OrderedDict()
        self._ghost: OrderedDict[int, None] = OrderedDict()
        self._small_bytes = 0

    def set_capacity(self, capacity: int) -> None:
        super().set_capacity(capacity)
        self._small_limit = max(1, int(capacity * self._small_fraction))

    def admit(self, key: Hashable, size: int, *, prefetched: bool = False, record: Resident | None = None) -> Resident:
        resident: Resident = _Record(size) if record is None else record
        resident.freq, resident.size = 0, size
        if not prefetched and self._ghost.pop(hash(key), 0) is None:
            resident.small = False
            self._main[key] = resident
        else:
            resident.small = True
            self._small[key] = resident
            self._small_bytes += size
        return resident

    def hit(self, key: Hashable, handle: Resident) -> None:
        freq = handle.freq
        if freq < _MAX_FREQ:
            handle.freq = freq + 1

    def resize(self, key: Hashable, size: int, handle: Resident) -> None:
        if handle.small:
            self._small_bytes += size - handle.size
        handle.size = size
        self.hit(key, handle)

    def forget(self, key: Hashable) -> None:
        resident = self._small.pop(key, None)
        if resident is not None:
            self._small_bytes -= resident.size
        else:
            self._main.pop(key, None)

    def evict(self) -> Hashable:
        # Every replay and shadow cache evicts once per miss when full: attributes are kept in locals.
        small, main = self._small, self._main
        while True:
            if small and (self._small_bytes > self._small_limit or not main):
                key, resident = small.popitem(last=False)
                self._small_bytes -= resident.size
                if resident.freq >= self._move_threshold:
                    resident.freq, resident.small = 0, False
                    main[key] = resident
                    continue
                ghost = self._ghost
                ghost[hash(key)] = None
                # The ghost remembers about as many keys as the cache holds (the victim still counts).
                bound = len(small) + len(main) + 1
                while len(ghost) > bound:
                    ghost.popitem(last=False)
            else:
                key, resident = main.popitem(last=False)
                count = resident.freq
                if count > 0:
                    resident.freq = count - 1
                    main[key] = resident
                    continue
            return key

    def coldest_first(self) -> list[Hashable]:
        """By read count (the 2-bit counter), fewest first; among equals probation before main, each oldest first."""
        by_freq: list[list[Hashable]] = [[] for _ in range(_MAX_FREQ + 1)]
        for queue in (self._small, self._main):
            for key, resident in queue.items():
                by_freq[resident.freq].append(key)
        return [key for keys in by_freq for key in keys]

    def __len__(self) -> int:
        return len(self._small) + len(self._main)
