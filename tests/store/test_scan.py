"""SCAN's contract on the store: every key present for a whole scan comes back, whatever changes meanwhile."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Hashable
from typing import cast

from service.store import MemoryStore
from service.store.memory import SCAN_IDLE_MS, SCAN_SNAPSHOTS
from tests.service.harness import RawClient, running_service


def _scan_all(store: MemoryStore, count: int, between: object = None) -> list[bytes]:
    seen: list[bytes] = []
    cursor, calls = 0, 0
    while True:
        cursor, keys = store.scan(cursor, count)
        seen += cast("list[bytes]", keys)
        calls += 1
        assert calls < 100_000, "the scan never ended"
        if cursor == 0:
            return seen
        if callable(between):
            between()


def test_a_quiet_store_is_scanned_once_each_in_pages_of_count() -> None:
    store = MemoryStore(1 << 30, "lru")
    keys = [b"key:%d" % i for i in range(1000)]
    for key in keys:
        store.set(key, b"v")
    seen = _scan_all(store, 7)
    assert sorted(seen) == sorted(keys)  # each exactly once
    cursor, first = store.scan(0, 10)
    assert len(first) == 10 and cursor != 0
    assert store.scan(0, 10_000) == (0, first + store.scan(cursor, 10_000)[1])


def test_keys_present_throughout_are_returned_while_others_come_and_go() -> None:
    rng = random.Random(7)
    store = MemoryStore(1 << 30, "lru")
    stable = [b"stable:%d" % i for i in range(2000)]
    churn = [b"churn:%d" % i for i in range(2000)]
    for key in stable + churn[:1000]:
        store.set(key, b"v")
    ever: set[Hashable] = set(stable + churn[:1000])

    def mutate() -> None:  # between calls: delete some churn keys, add new ones, overwrite stable ones
        for _ in range(5):
            store.delete(rng.choice(churn))
            added = rng.choice(churn)
            store.set(added, b"new")
            ever.add(added)
            store.set(rng.choice(stable), b"rewritten")

    seen = _scan_all(store, 10, mutate)
    assert set(stable) <= set(seen)
    assert set(seen) <= ever  # nothing invented
    assert all(seen.count(key) == 1 for key in stable)


def test_expired_and_deleted_keys_are_not_returned() -> None:
    now = [1_000]
    store = MemoryStore(1 << 30, "lru", clock=lambda: now[0])
    for i in range(100):
        store.set(b"k%d" % i, b"v", expires_at=2_000 if i % 2 else 0)
    cursor, page = store.scan(0, 30)
    now[0] = 3_000
    store.delete(b"k0")
    rest = _scan_all_from(store, cursor)
    assert not any(int(key[1:]) % 2 for key in rest)
    assert b"k0" not in rest
    assert len(page) + len(rest) >= 49


def _scan_all_from(store: MemoryStore, cursor: int) -> list[bytes]:
    seen: list[bytes] = []
    while cursor:
        cursor, keys = store.scan(cursor, 30)
        seen += cast("list[bytes]", keys)
    return seen


def test_concurrent_scans_keep_their_place_while_keys_are_added() -> None:
    store = MemoryStore(1 << 30, "lru")
    stable = [b"stable:%d" % i for i in range(300)]
    for key in stable:
        store.set(key, b"v")
    cursors = [0] * SCAN_SNAPSHOTS
    seen: list[list[bytes]] = [[] for _ in cursors]
    added = 0
    for round_ in range(100):  # round-robin, a new key before every call: each first call takes a snapshot
        for i in range(len(cursors)):
            if round_ and not cursors[i]:
                continue
            store.set(b"new:%d" % added, b"v")
            added += 1
            cursors[i], keys = store.scan(cursors[i], 50)
            seen[i] += cast("list[bytes]", keys)
        if not any(cursors):
            break
    assert not any(cursors)
    for found in seen:
        assert sorted(k for k in found if k.startswith(b"stable")) == sorted(stable)  # each once, none lost


def test_a_scan_whose_snapshot_was_dropped_restarts_and_loses_nothing() -> None:
    store = MemoryStore(1 << 30, "lru")
    stable = {b"stable:%d" % i for i in range(100)}
    for key in stable:
        store.set(key, b"v")
    cursor, seen = store.scan(0, 30)
    for i in range(SCAN_SNAPSHOTS):  # as many other scans, each after a write, push this one's snapshot out
        store.set(b"new:%d" % i, b"v")
        store.scan(0, 30)
    found = set(seen)
    calls = 0
    while cursor:
        cursor, keys = store.scan(cursor, 30)
        found.update(keys)
        calls += 1
    assert stable <= found
    assert calls == 4  # it restarted on a whole snapshot: 108 keys in pages of 30


def test_a_flush_ends_nothing_it_should_not() -> None:
    store = MemoryStore(1 << 30, "lru")
    for i in range(50):
        store.set(b"old%d" % i, b"v")
    cursor, _ = store.scan(0, 10)
    store.flush()
    store.set(b"after", b"v")
    rest = _scan_all_from(store, cursor)
    assert all(key == b"after" for key in rest)  # nothing flushed comes back


def test_snapshots_of_abandoned_scans_are_dropped_and_a_late_scan_still_finishes() -> None:
    now = [1_000_000]
    store = MemoryStore(1 << 30, "lru", clock=lambda: now[0])
    for i in range(100):
        store.set(b"k%d" % i, b"v")
    cursor, seen = store.scan(0, 30)
    now[0] += SCAN_IDLE_MS - 1
    store.active_expire()
    assert store._scans  # still in use
    now[0] += 2
    store.active_expire()
    assert not store._scans  # the copy of the key list is gone
    found = set(seen)
    while cursor:
        cursor, keys = store.scan(cursor, 30)
        found.update(keys)
    assert len(found) == 100  # the late scan restarted on a new snapshot and missed nothing


def test_an_abandoned_scan_loses_its_snapshot_while_another_scan_goes_on() -> None:
    now = [1_000_000]
    store = MemoryStore(1 << 30, "lru", clock=lambda: now[0])
    for i in range(100):
        store.set(b"k%d" % i, b"v")
    abandoned, _ = store.scan(0, 10)
    store.set(b"late", b"v")  # the next scan needs a snapshot of its own
    active, seen = store.scan(0, 10)
    assert len(store._scans) == 2
    for _ in range(3):  # the active scan reads every 30 s: after 90 s the abandoned one is long idle
        now[0] += SCAN_IDLE_MS // 2
        store.active_expire()
        active, keys = store.scan(active, 10)
        seen += keys
    assert len(store._scans) == 1  # only the active scan's copy of the key list is left
    seen += _scan_all_from(store, active)
    assert sorted(seen) == sorted(store.keys())
    assert len(set(_scan_all_from(store, abandoned))) == 101  # the abandoned cursor restarts and misses nothing


def test_more_concurrent_scans_than_snapshots_all_finish_with_writes_between_every_call() -> None:
    """A restarted scan resumes on the newest snapshot rather than taking one, so scans that lost theirs do not
    push the others' out in turn, and every one of them ends with every key that stayed."""
    store = MemoryStore(1 << 30, "lru")
    stable = [b"stable:%d" % i for i in range(200)]
    for key in stable:
        store.set(key, b"v")
    scans = 2 * SCAN_SNAPSHOTS
    cursors, seen, written = [0] * scans, [set[Hashable]() for _ in range(scans)], 0
    for round_ in range(1000):
        for i in range(scans):
            if round_ and not cursors[i]:
                continue
            store.set(b"new:%d" % written, b"v")
            written += 1
            cursors[i], keys = store.scan(cursors[i], 20)
            seen[i].update(keys)
        if not any(cursors):
            break
    assert not any(cursors), "some scans never finished"
    assert all(set(stable) <= found for found in seen)


def test_a_scan_kept_alone_by_its_weight_still_finishes_beside_a_new_scan() -> None:
    """Long keys: one snapshot of the store weighs most of the budget, so a second scan's snapshot pushes the
    first one's out; the first resumes on the second's and both return every key that stayed."""
    store = MemoryStore(1 << 20, "lru")
    stable = [b"%04d" % i + b"k" * 20_000 for i in range(40)]
    for key in stable:
        store.set(key, b"")
    first, seen_first = store.scan(0, 5)
    store.set(b"new", b"")
    second, seen_second = store.scan(0, 5)
    assert len(store._scans) == 1  # two would pin more than the budget
    while first or second:
        store.set(b"more", b"v")
        if first:
            first, keys = store.scan(first, 5)
            seen_first += keys
        if second:
            second, keys = store.scan(second, 5)
            seen_second += keys
    assert set(stable) <= set(seen_first) and set(stable) <= set(seen_second)


def test_scan_snapshots_do_not_keep_evicted_keys_beyond_about_the_budget() -> None:
    """A budget's worth of fresh long-named keys, then a scan nobody finishes, over and over (the keys evicted
    since each scan began stay referenced by its snapshot): the tenant's memory stays within about twice its
    budget (it was 7.8 times with every snapshot kept while any scan was read)."""
    budget, key_bytes = 8 << 20, 256 << 10
    tracemalloc.start()
    try:
        with running_service(dev=True, prefetcher="none", default_tenant_memory_bytes=budget) as svc:
            client = RawClient(svc.resp_port)
            base, _ = tracemalloc.get_traced_memory()
            worst = 0
            for round_ in range(9):
                for i in range(budget // key_bytes):
                    client.send(("SET", b"%03d-%04d-" % (round_, i) + b"k" * key_bytes, b""))
                worst = max(worst, tracemalloc.get_traced_memory()[0] - base)
                client.send(("SCAN", "0", "COUNT", "1"))
            assert svc.state.tenants.get("default").store.stats.evictions > 200
    finally:
        tracemalloc.stop()
    assert worst < 2.5 * budget, f"{worst / budget:.1f} x the budget"
