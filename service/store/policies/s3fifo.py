"""S3-FIFO eviction (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023).

A small probationary FIFO (10% of capacity) filters one-hit wonders, so a scan of cold keys passes through
it without touching the main FIFO where the working set lives. A ghost FIFO of recently evicted keys lets a
key that comes back skip probation. Hits only bump a 2-bit counter: no list surgery on the read path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from service.store.policies.base import EvictionPolicy

_MAX_FREQ = 3


class S3FIFOPolicy(EvictionPolicy):
    """Three FIFO queues: small (probation), main, and ghost (keys only)."""

    name = "s3fifo"

    def __init__(self, capacity: int, small_fraction: float = 0.1, move_threshold: int = 1) -> None:
        super().__init__(capacity)
        self._small_fraction = small_fraction
        self._small_limit = max(1, int(capacity * small_fraction))
        self._move_threshold = move_threshold
        self._small: OrderedDict[Hashable, None] = OrderedDict()
        self._main: OrderedDict[Hashable, None] = OrderedDict()
        self._ghost: OrderedDict[Hashable, None] = OrderedDict()
        self._freq: dict[Hashable, int] = {}
        self._size: dict[Hashable, int] = {}
        self._small_bytes = 0

    def set_capacity(self, capacity: int) -> None:
        super().set_capacity(capacity)
        self._small_limit = max(1, int(capacity * self._small_fraction))

    def admit(self, key: Hashable, size: int, *, prefetched: bool = False) -> None:
        self._freq[key] = 0
        self._size[key] = size
        if not prefetched and self._ghost.pop(key, 0) is None:
            self._main[key] = None
        else:
            self._small[key] = None
            self._small_bytes += size

    def hit(self, key: Hashable) -> None:
        freq = self._freq[key]
        if freq < _MAX_FREQ:
            self._freq[key] = freq + 1

    def resize(self, key: Hashable, size: int) -> None:
        if key in self._small:
            self._small_bytes += size - self._size[key]
        self._size[key] = size
        self.hit(key)

    def forget(self, key: Hashable) -> None:
        if self._freq.pop(key, None) is None:
            return
        size = self._size.pop(key)
        if self._small.pop(key, 0) is None:
            self._small_bytes -= size
        else:
            del self._main[key]

    def evict(self) -> Hashable:
        # Every replay and shadow cache evicts once per miss when full: attributes are kept in locals.
        small, main, freq, sizes = self._small, self._main, self._freq, self._size
        while True:
            if small and (self._small_bytes > self._small_limit or not main):
                key, _ = small.popitem(last=False)
                self._small_bytes -= sizes[key]
                if freq[key] >= self._move_threshold:
                    freq[key] = 0
                    main[key] = None
                    continue
                ghost = self._ghost
                ghost[key] = None
                # The ghost remembers about as many keys as the cache holds (the victim still counts).
                bound = max(1, len(freq))
                while len(ghost) > bound:
                    ghost.popitem(last=False)
            else:
                key, _ = main.popitem(last=False)
                count = freq[key]
                if count > 0:
                    freq[key] = count - 1
                    main[key] = None
                    continue
            del freq[key]
            del sizes[key]
            return key

    def __len__(self) -> int:
        return len(self._freq)
