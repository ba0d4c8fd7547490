"""Least-recently-used eviction: the baseline every paper compares against."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from service.store.policies.base import EvictionPolicy


class LRUPolicy(EvictionPolicy):
    """Evicts the key read or written longest ago. Prefetched keys enter at the cold end."""

    name = "lru"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def admit(self, key: Hashable, size: int, *, prefetched: bool = False, record: Any = None) -> None:
        self._order[key] = None
        if prefetched:
            # An unused prefetch is the first thing to go; a read promotes it like any other key.
            self._order.move_to_end(key, last=False)

    def hit(self, key: Hashable, handle: Any) -> None:
        self._order.move_to_end(key)

    def forget(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def evict(self) -> Hashable:
        return self._order.popitem(last=False)[0]

    def coldest_first(self) -> list[Hashable]:
        return list(self._order)

    def __len__(self) -> int:
        return len(self._order)
