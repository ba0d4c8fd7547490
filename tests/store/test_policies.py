"""Eviction policies: LRU order, S3-FIFO scan resistance, and the contract both share."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest

from service.store import MemoryStore, unit_size
from service.store.policies import POLICIES, make_policy


def _store(policy: str, capacity: int) -> MemoryStore:
    return MemoryStore(capacity, policy, sizer=unit_size)


def test_unknown_policy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of: lru, s3fifo"):
        make_policy("clock", 10)


def test_lru_evicts_least_recently_used() -> None:
    store = _store("lru", 3)
    for key in (1, 2, 3):
        store.set(key, b"")
    store.get(1)
    store.set(4, b"")
    assert 2 not in store and all(k in store for k in (1, 3, 4))


def test_prefetch_into_a_full_lru_cache_survives_until_the_next_insert() -> None:
    store = _store("lru", 3)
    for key in (1, 2, 3):
        store.set(key, b"")
    store.set(99, b"", prefetched=True)
    assert 99 in store and 1 not in store
    assert store.get(99) == b"" and store.stats.prefetch_used == 1


def test_lru_puts_prefetched_keys_first_in_line() -> None:
    store = _store("lru", 3)
    store.set(1, b"")
    store.set(2, b"")
    store.set(3, b"", prefetched=True)
    store.set(4, b"")
    assert 3 not in store and store.stats.prefetch_evicted_unused == 1


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policy_never_exceeds_capacity_and_tracks_residents(policy: str) -> None:
    rng = random.Random(7)
    store = _store(policy, 50)
    for _ in range(5000):
        key = rng.randrange(200)
        if rng.random() < 0.1:
            store.delete(key)
        elif store.get(key) is None:
            store.set(key, b"", prefetched=rng.random() < 0.2)
        assert len(store) <= 50
        assert len(store.policy) == len(store)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_byte_budget_holds_with_variable_sizes(policy: str) -> None:
    store = MemoryStore(10_000, policy)
    rng = random.Random(3)
    for i in range(2000):
        store.set(f"k{i % 300}".encode(), b"x" * rng.randrange(1, 400))
        assert store.used <= 10_000
    assert store.used == sum(store.entry(k).size for k in list(store.keys()))  # type: ignore[union-attr]


def test_s3fifo_keeps_working_set_through_a_scan_where_lru_does_not() -> None:
    def hits_after_scan(policy: str) -> int:
        store = _store(policy, 100)
        for _ in range(5):
            for key in range(80):  # working set, read repeatedly
                if store.get(key) is None:
                    store.set(key, b"")
        for key in range(10_000, 10_500):  # one pass over cold keys
            if store.get(key) is None:
                store.set(key, b"")
        return sum(1 for key in range(80) if key in store)

    assert hits_after_scan("s3fifo") >= 75
    assert hits_after_scan("lru") == 0


def test_s3fifo_ghost_hit_goes_straight_to_main() -> None:
    store = _store("s3fifo", 10)
    store.set("a", b"")
    for key in range(20):
        store.set(key, b"")
    assert "a" not in store
    store.set("a", b"")  # remembered in the ghost queue: admitted to main
    for key in range(100, 108):
        store.set(key, b"")
    assert "a" in store


def test_budget_shrink_evicts_down_immediately() -> None:
    store = _store("s3fifo", 100)
    for key in range(100):
        store.set(key, b"")
    store.set_budget(10)
    assert len(store) == 10 and store.stats.evictions == 90


def test_s3fifo_keeps_its_per_key_state_in_the_stores_entries() -> None:
    """The entry is the policy's record: reads bump its counter (2 bits), and an overwrite of another size
    moves the probation queue's byte count by the difference, however the store orders its own update."""
    store = MemoryStore(1000, "s3fifo")
    store.set(b"k", b"x" * 10, prefetched=True)  # prefetched keys start on probation (the small queue)
    entry = store.entry(b"k")
    assert entry is not None and entry.small and entry.freq == 0
    for expected in (1, 2, 3, 3):
        store.get(b"k")
        assert entry.freq == expected
    policy = store.policy
    before = entry.size
    assert policy._small_bytes == before  # type: ignore[attr-defined]
    store.set(b"k", b"x" * 50)
    assert store.entry(b"k") is entry and entry.size == before + 40
    assert policy._small_bytes == entry.size  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_the_budget_charges_about_what_cpython_spends_per_entry(policy: str) -> None:
    """ENTRY_OVERHEAD stays calibrated: for small values, where it matters most, what the entries really take
    (tracemalloc) is within 0.8 to 1.25 times what the budget charges. The sizes straddle a doubling of the
    dicts, where the real cost per entry is highest and lowest."""
    for entries in (10_000, 11_000, 40_000, 50_000):
        gc.collect()
        tracemalloc.start()
        try:
            store = MemoryStore(1 << 40, policy)
            base, _ = tracemalloc.get_traced_memory()
            for i in range(entries):
                store.set(b"key:%08d" % i, b"%016d" % i)  # each value its own object, as values from clients are
            gc.collect()
            real = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert 0.8 <= real / store.used <= 1.25, f"{entries} entries: real/charged {real / store.used:.2f}"


def test_s3fifo_ghost_does_not_keep_evicted_long_keys_in_memory() -> None:
    """The ghost queue remembers evicted keys outside the budget: by their hashes, so a budget's worth of long
    keys pushed out by short ones leaves the store at about its budget (it was twice with the keys kept)."""
    budget, key_bytes = 4 << 20, 64 << 10
    gc.collect()
    tracemalloc.start()
    try:
        store = MemoryStore(budget, "s3fifo")
        long_keys = [b"%06d" % i + b"k" * key_bytes for i in range(budget // (key_bytes + 400))]
        for key in long_keys:
            store.set(key, b"")
        i = 0
        while any(key in store for key in long_keys):
            store.set(b"s%d" % i, b"%016d" % i)
            i += 1
        del long_keys
        gc.collect()
        real = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert store.stats.evictions > 60
    assert real < 1.5 * budget, f"{real / budget:.2f} x the budget"
