"""The contract every eviction policy meets, so the service and the replay benchmark run the same classes.

A policy sees keys and sizes, never values. The store owns the data and asks the policy two things: to
remember what happened to a key (admit, hit, forget, resize) and, while the store is over budget, which key
should leave next (evict).

A policy may keep its per-key state in a record with `freq`, `size` and `small` attributes. The store passes
its own entry as that record to `admit` and hands the entry back on every hit and resize (the policy never
reads the value), so a read touches no memory the store did not already touch: a dictionary lookup of the
policy's own (a random key of a large table misses the CPU cache) was a fifth of the store's read. A caller
without entries (a shadow cache) keeps what `admit` returns and hands that back instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any, ClassVar


class EvictionPolicy(ABC):
    """Orders resident keys for eviction. Capacity is in the store's size units (bytes, or 1 per key)."""

    name: ClassVar[str]

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"eviction policy capacity must be positive, got {capacity}")
        self.capacity = capacity

    @abstractmethod
    def admit(self, key: Hashable, size: int, *, prefetched: bool = False, record: Any = None) -> Any:
        """A new key became resident; returns its handle (None for a policy that needs none), which is
        `record` when given, else a record of the policy's own. Prefetched keys are placed where a wasted
        prefetch leaves first."""

    @abstractmethod
    def hit(self, key: Hashable, handle: Any) -> None:
        """A resident key was read; `handle` is its record (what `admit` returned for it)."""

    @abstractmethod
    def forget(self, key: Hashable) -> None:
        """A resident key left for a reason other than eviction (delete, expiry)."""

    @abstractmethod
    def evict(self) -> Hashable:
        """Choose a resident key to evict, stop tracking it and return it. Only called when non-empty."""

    @abstractmethod
    def coldest_first(self) -> list[Hashable]:
        """The resident keys, the likeliest victims first and the hottest last (a warm-restart snapshot is
        written in this order, so restoring it into a smaller budget keeps the hot ones)."""

    def set_capacity(self, capacity: int) -> None:
        """The store's budget changed (a tenant's quota was edited)."""
        self.capacity = capacity

    def resize(self, key: Hashable, size: int, handle: Any) -> None:
        """A resident key was overwritten with a value of another size (an overwrite of the same size is
        reported as a hit), before its record's size changes; by default that counts as a hit too."""
        self.hit(key, handle)

    @abstractmethod
    def __len__(self) -> int:
        """Number of resident keys tracked."""
