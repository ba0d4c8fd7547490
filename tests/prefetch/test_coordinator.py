"""The coordinator: threshold, budget, never what is cached or in flight, and its books."""

from __future__ import annotations

import pytest

from service.prefetch.base import Prediction
from service.prefetch.coordinator import PrefetchBudget, PrefetchCoordinator


class FakeCache:
    def __init__(self, resident: set[int] = frozenset(), in_flight: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.resident = set(resident)
        self.flying = set(in_flight)
        self.fetched: list[int] = []

    def is_resident(self, key: int) -> bool:
        return key in self.resident

    def in_flight(self, key: int) -> bool:
        return key in self.flying

    def prefetch(self, key: int) -> None:
        self.fetched.append(key)


def proposals(*keys: int, confidence: float = 0.9) -> list[Prediction]:
    return [Prediction(k, confidence) for k in keys]


def test_coordinator_respects_the_per_request_budget() -> None:
    cache = FakeCache()
    coordinator = PrefetchCoordinator(cache, PrefetchBudget(per_request=2))
    coordinator.consider(proposals(1, 2, 3, 4))
    assert cache.fetched == [1, 2]


def test_coordinator_never_prefetches_cached_or_in_flight_keys() -> None:
    cache = FakeCache(resident={1}, in_flight={2})
    coordinator = PrefetchCoordinator(cache, PrefetchBudget(per_request=1))
    coordinator.consider(proposals(1, 2, 3))
    assert cache.fetched == [3]
    coordinator.consider(proposals(3, 4))  # 3 is now outstanding
    assert cache.fetched == [3, 4]
    assert coordinator.stats.skipped_resident == 1
    assert coordinator.stats.skipped_in_flight == 2


def test_coordinator_skips_proposals_below_threshold() -> None:
    cache = FakeCache()
    coordinator = PrefetchCoordinator(cache, PrefetchBudget(threshold=0.5, per_request=4))
    coordinator.consider([Prediction(1, 0.9), Prediction(2, 0.4), Prediction(3, 0.8)])
    assert cache.fetched == [1]


def test_coordinator_caps_concurrent_fetches() -> None:
    cache = FakeCache()
    coordinator = PrefetchCoordinator(cache, PrefetchBudget(per_request=1, max_in_flight=2))
    for key in range(5):
        coordinator.consider(proposals(key))
    assert cache.fetched == [0, 1]
    coordinator.completed(0)
    coordinator.consider(proposals(7))
    assert cache.fetched == [0, 1, 7]


def test_coordinator_counts_used_late_and_wasted() -> None:
    cache = FakeCache()
    coordinator = PrefetchCoordinator(cache, PrefetchBudget(per_request=3), horizon=3)
    coordinator.consider(proposals(1, 2, 3))
    coordinator.on_access(1, hit=True)
    coordinator.on_access(2, hit=False)
    for key in (10, 11, 12):
        coordinator.on_access(key, hit=False)
    stats = coordinator.stats
    assert (stats.issued, stats.used, stats.late, stats.wasted) == (3, 1, 1, 1)


def test_a_late_read_is_told_apart_by_whether_its_fetch_was_still_running() -> None:
    coordinator = PrefetchCoordinator(FakeCache(), PrefetchBudget(per_request=2))
    coordinator.consider(proposals(1, 2))
    coordinator.completed(2)  # landed (and, read as a miss below, evicted unread before its read)
    coordinator.on_access(1, hit=False)
    coordinator.on_access(2, hit=False)
    assert (coordinator.stats.late, coordinator.stats.late_in_flight) == (2, 1)


def test_a_read_that_found_its_prefetch_in_flight_counts_so_though_the_fetch_finished_before_the_step() -> None:
    coordinator = PrefetchCoordinator(FakeCache(), PrefetchBudget(per_request=2))
    coordinator.consider(proposals(1, 2))
    coordinator.completed(1)
    coordinator.completed(2)  # both landed between their reads and the step that settles them
    coordinator.on_access(1, hit=None)  # the read joined the load in flight (`AccessLog`)
    coordinator.on_access(2, hit=False)  # the read came after it landed and was evicted
    assert (coordinator.stats.late, coordinator.stats.late_in_flight) == (2, 1)


def test_each_used_prefetch_notes_how_many_reads_it_waited_in_the_cache_after_landing() -> None:
    coordinator = PrefetchCoordinator(FakeCache(), PrefetchBudget(per_request=3), track_waits=True)
    coordinator.consider(proposals(1, 2, 3))
    coordinator.completed(1, reads_since=0)  # landed before any read
    coordinator.completed(2, reads_since=2)  # landed after two reads not yet settled
    coordinator.completed(3, reads_since=9)  # noted landing after its read: it waited for nothing
    for key, hit in ((10, False), (11, False), (12, False), (1, True), (3, True), (2, True)):
        coordinator.on_access(key, hit)
    assert coordinator.take_waits() == [3, 0, 3]  # 1: reads 10-12 between; 3: none; 2: reads 12, 1 and 3
    assert coordinator.take_waits() == []
    untracked = PrefetchCoordinator(FakeCache(), PrefetchBudget(per_request=1))
    untracked.consider(proposals(1))
    untracked.completed(1)
    untracked.on_access(1, True)
    assert untracked.take_waits() == [] and untracked.stats.used == 1


def test_budget_rejects_nonsense() -> None:
    for bad in ({"threshold": 1.5}, {"per_request": -1}, {"max_in_flight": 0}):
        with pytest.raises(ValueError, match="prefetch"):
            PrefetchBudget(**bad)  # type: ignore[arg-type]


def test_a_prefetch_issued_after_unsettled_reads_is_settled_only_by_later_ones() -> None:
    """The service issues while its worker predicts, many reads after the drain: the horizon starts at the
    issue, and a read from before it (still in the access log) does not count as using the prefetch."""
    cache = FakeCache()
    coordinator = PrefetchCoordinator(cache, PrefetchBudget(per_request=2), horizon=3)
    coordinator.consider(proposals(1, 2), reads_since=10)
    coordinator.on_access(1, hit=True)  # one of the 10 reads logged before the issue
    for key in range(100, 109):
        coordinator.on_access(key, hit=True)
    assert (coordinator.stats.used, coordinator.stats.wasted) == (0, 0)  # 10 reads in: nothing settled yet
    coordinator.on_access(1, hit=True)  # the first read after the issue
    coordinator.on_access(200, hit=False)
    assert (coordinator.stats.used, coordinator.stats.wasted) == (1, 0)
    coordinator.on_access(201, hit=False)  # the third read after the issue: 2's horizon has passed
    assert (coordinator.stats.used, coordinator.stats.wasted) == (1, 1)


class EvictingCache(FakeCache):
    """A prefetch lands at once; `evict` drops a key unread, as a small cache's eviction policy would."""

    def prefetch(self, key: int) -> None:
        super().prefetch(key)
        self.resident.add(key)

    def evict(self, key: int) -> None:
        self.resident.discard(key)


def test_a_key_issued_again_before_its_first_issue_settled_settles_the_first_as_wasted() -> None:
    """A prefetch that landed and was evicted unread is proposed again: two issues, two settlements, and the
    re-issued key moves to the back of the expiry order instead of holding back the keys issued after it."""
    cache = EvictingCache()
    coordinator = PrefetchCoordinator(cache, PrefetchBudget(per_request=1), horizon=64)

    def issue(key: int) -> None:
        for issued, _ in coordinator.consider(proposals(key)):
            coordinator.completed(issued)

    issue(1)  # at read 0
    coordinator.on_access(100, hit=True)
    issue(2)  # at read 1
    cache.evict(1)
    for key in range(200, 210):
        coordinator.on_access(key, hit=False)
    issue(1)  # at read 11, its first issue unread
    stats = coordinator.stats
    assert (stats.issued, stats.wasted) == (3, 1)
    for key in range(300, 354):  # to read 65, the first past the horizon of 2 (issued at read 1)
        coordinator.on_access(key, hit=False)
    assert stats.wasted == 2 and not coordinator.unsettled(2)
    coordinator.on_access(2, hit=True)  # read after its horizon: not used
    coordinator.settle()
    assert stats.used == 0
    assert stats.used + stats.late + stats.wasted == stats.issued == 3


def test_a_scoring_book_counts_its_own_unsettled_issue_as_resident_instead_of_issuing_it_again() -> None:
    """A book whose target never holds its prefetches (`answers.py`) would have the first prefetch in the cache:
    a second proposal of the key before its read is no second prefetch, and costs nothing."""
    book = PrefetchCoordinator(FakeCache(), PrefetchBudget(per_request=1), target_sees_issues=False)
    for _ in range(3):
        for key, _ in book.consider(proposals(1)):
            book.completed(key)
    book.on_access(1, hit=True)
    stats = book.stats
    assert (stats.issued, stats.skipped_resident, stats.used, stats.wasted) == (1, 2, 1, 0)
