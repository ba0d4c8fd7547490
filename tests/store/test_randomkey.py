"""RANDOMKEY on the store: a draw is O(1) from a key list kept from the first draw on, reaches every live key and
never a key that is gone; a store that never draws keeps no list."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import pytest

from service.store import MemoryStore
from service.store.key_index import KeyIndex
from service.store.memory import KEY_INDEX_IDLE_MS, Entry
from tests.store.test_expiry import Clock


def _drawn(store: MemoryStore, draws: int = 3000) -> set[Hashable | None]:
    return {store.random_key() for _ in range(draws)}


def _index(store: MemoryStore) -> KeyIndex:
    index = store._key_index
    assert index is not None
    return index


def _assert_index_matches(store: MemoryStore) -> None:
    """Every resident key has exactly one slot; the other slots are exactly the stale ones."""
    index = _index(store)
    assert len(set(index.keys)) == len(index.keys)
    assert set(index.keys) - index.gone == set(store.keys())
    assert index.gone <= set(index.keys)


class _WalkCountingDict(dict[Hashable, Entry]):
    """A store's dict that counts the walks over its keys or entries."""

    walks = 0

    def __iter__(self) -> Iterator[Hashable]:
        self.walks += 1
        return super().__iter__()

    def values(self) -> Any:  # dict_values, which typing does not name
        self.walks += 1
        return super().values()


def test_a_store_that_never_draws_keeps_no_index() -> None:
    now = [1_000]
    store = MemoryStore(20_000, "s3fifo", clock=lambda: now[0])
    for i in range(200):  # past the budget: evictions
        store.set(b"k%d" % i, b"v", expires_at=1_500 if i % 3 == 0 else 0)
    store.set(b"k199", b"overwritten")
    store.get(b"k199")
    store.delete(b"k198")
    store.scan(0, 10)
    now[0] = 2_000
    assert b"k195" not in store  # expired, lazily
    store.active_expire()
    store.set_budget(5_000)
    store.flush()
    store.set(b"after", b"v")
    assert store.stats.evictions and store.stats.expired
    assert store._key_index is None


def test_an_index_undrawn_for_ten_minutes_is_dropped_and_built_again_at_the_next_draw() -> None:
    clock = Clock()
    store = MemoryStore(1 << 20, "lru", clock=clock)
    for i in range(100):
        store.set(b"k%d" % i, b"v")
    assert store.random_key() is not None
    clock.now += KEY_INDEX_IDLE_MS
    store.active_expire()
    assert store._key_index is not None  # drawn exactly KEY_INDEX_IDLE_MS ago: kept
    assert store.random_key() is not None
    clock.now += KEY_INDEX_IDLE_MS // 2
    store.active_expire()
    assert store._key_index is not None  # drawn since: kept
    clock.now += KEY_INDEX_IDLE_MS + 1
    store.active_expire()
    assert store._key_index is None
    store.delete(b"k0")  # no index to keep up to date meanwhile
    store.set(b"new", b"v")
    assert _drawn(store) == {b"k%d" % i for i in range(1, 100)} | {b"new"}
    _assert_index_matches(store)


def test_an_empty_store_draws_none() -> None:
    store = MemoryStore(1 << 20, "lru")
    assert store.random_key() is None
    store.set(b"only", b"v")
    assert store.random_key() == b"only"
    store.delete(b"only")
    assert store.random_key() is None
    assert _index(store).keys == []


def test_every_key_can_be_drawn() -> None:
    store = MemoryStore(1 << 20, "lru")
    keys = {b"key:%d" % i for i in range(20)}
    for key in keys:
        store.set(key, b"v")
    assert _drawn(store) == keys


def test_keys_deleted_evicted_expired_or_renamed_after_the_first_draw_are_never_drawn() -> None:
    now = [1_000]
    store = MemoryStore(1 << 20, "lru", clock=lambda: now[0])
    for i in range(40):
        store.set(b"k%02d" % i, b"v", expires_at=1_500 if i >= 30 else 0)
    assert len(_drawn(store)) == 40
    for i in range(5):
        store.delete(b"k%02d" % i)
    store.delete(b"k05")  # RENAME k05 renamed: the old name goes first, then the new one is set (keyspace._rename)
    store.set(b"renamed", b"v")
    store.set_budget(store.used - 2 * store.size_of(b"k10", b"v"))  # evicts two (LRU: the oldest left)
    now[0] = 2_000  # k30..k39 expired; the first draw that meets each reclaims it
    expected = {b"k%02d" % i for i in range(6, 30)} | {b"renamed"}
    evicted = {key for key in expected if key not in store}
    assert len(evicted) == 2
    assert _drawn(store) == expected - evicted
    assert store.stats.expired == 10
    _assert_index_matches(store)


def test_keys_added_after_the_first_draw_are_drawn_including_ones_that_came_back() -> None:
    store = MemoryStore(1 << 20, "lru")
    for i in range(10):
        store.set(b"old:%d" % i, b"v")
    store.random_key()
    store.delete(b"old:0")
    store.set(b"old:0", b"back")  # retakes its stale slot: still one slot
    for i in range(10):
        store.set(b"new:%d" % i, b"v")
    _assert_index_matches(store)
    assert _drawn(store) == {b"old:%d" % i for i in range(10)} | {b"new:%d" % i for i in range(10)}


def test_a_flush_empties_the_index_and_keeps_it_up_to_date() -> None:
    store = MemoryStore(1 << 20, "lru")
    for i in range(10):
        store.set(b"before:%d" % i, b"v")
    store.random_key()
    store.flush()
    assert store.random_key() is None
    index = _index(store)
    assert index.keys == [] and not index.gone
    for i in range(5):
        store.set(b"after:%d" % i, b"v")
    assert _drawn(store) == {b"after:%d" % i for i in range(5)}
    assert store._key_index is index  # kept up to date across the flush, not built again


def test_no_draw_after_the_first_walks_the_store() -> None:
    store = MemoryStore(1 << 30, "lru")
    counting = _WalkCountingDict()
    store._data = counting
    for i in range(2000):
        store.set(b"k%d" % i, b"v")
    store.random_key()
    assert counting.walks == 1
    for i in range(2000):
        store.delete(b"k%d" % (i * 7 % 2000))
        store.set(b"n%d" % i, b"v")
        store.random_key()
    assert counting.walks == 1


def test_expired_draws_go_and_the_live_key_is_found() -> None:
    now = [1_000]
    store = MemoryStore(1 << 20, "lru", clock=lambda: now[0])
    store.random_key()
    store.set(b"stays", b"v")
    for i in range(500):
        store.set(b"goes:%d" % i, b"v", expires_at=1_500)
    now[0] = 2_000
    assert store.random_key() == b"stays"
    store.delete(b"stays")
    assert store.random_key() is None
    assert len(store) == 0 and store.stats.expired == 500


def _random_churn(store: MemoryStore, rng: random.Random, n: int) -> Iterator[None]:
    for _ in range(20 * n):
        key = b"k%d" % rng.randrange(2 * n)
        if rng.random() < 0.5:
            store.set(key, b"v")
        else:
            store.delete(key)
        yield


def _delete_in_insertion_order(store: MemoryStore, rng: random.Random, n: int) -> Iterator[None]:
    for i in range(n):
        store.delete(b"k%d" % i)
        yield


def _delete_just_behind_the_sweep(store: MemoryStore, rng: random.Random, n: int) -> Iterator[None]:
    """The worst order for the sweep: it has just checked the slot, and comes back to it last."""
    for i in range(5 * n):
        index = _index(store)
        place = index.cursor - 1
        while place >= 0 and index.keys[place] in index.gone:
            place -= 1
        store.delete(index.keys[place])
        store.set(b"n%d" % i, b"v")
        yield


def _evict(store: MemoryStore, rng: random.Random, n: int) -> Iterator[None]:
    store.set_budget(store.used)
    for i in range(5 * n):
        store.set(b"n%d" % i, b"v")
        yield


@pytest.mark.parametrize("workload", [_random_churn, _delete_in_insertion_order, _delete_just_behind_the_sweep,
                                      _evict])
def test_stale_slots_never_outnumber_live_keys(
        workload: Callable[[MemoryStore, random.Random, int], Iterator[None]]) -> None:
    n = 2000
    store = MemoryStore(1 << 30, "lru")
    for i in range(n):
        store.set(b"k%d" % i, b"v")
    store.random_key()
    for step, _ in enumerate(workload(store, random.Random(5), n)):
        assert len(_index(store).gone) <= len(store)
        if step % 500 == 0:
            _assert_index_matches(store)
    _assert_index_matches(store)


def test_the_index_costs_8_bytes_a_key_once_built_and_under_100_in_eviction_churn() -> None:
    """LRU evicts in insertion order, the sweep's worst order in practice: the most stale slots a key."""
    n = 10_000

    def filled() -> MemoryStore:
        store = MemoryStore(1 << 40, "lru")
        for i in range(n):
            store.set(b"key:%08d" % i, b"v" * 10)
        return store

    def churn(store: MemoryStore) -> None:
        store.set_budget(store.used)
        for i in range(3 * n):
            store.set(b"new:%08d" % i, b"v" * 10)  # each evicts one

    tracemalloc.start()
    try:
        store = filled()
        before = tracemalloc.get_traced_memory()[0]
        store.random_key()
        built = tracemalloc.get_traced_memory()[0] - before
        plain, indexed = filled(), filled()
        indexed.random_key()
        start = tracemalloc.get_traced_memory()[0]
        churn(plain)
        middle = tracemalloc.get_traced_memory()[0]
        churn(indexed)
        end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert built / n < 9
    assert 0 < ((end - middle) - (middle - start)) / n < 100
