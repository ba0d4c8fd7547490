"""Turns proposals into prefetches: above a confidence threshold, within a budget, never for what is there.

The coordinator talks to the cache through `PrefetchTarget`, three members the service's read-through cache
and the replay harness both provide, so the benchmark exercises the very code the service runs. It keeps the
books (issued, used, late, wasted, and why proposals were skipped) that A/B comparisons and drift detection
read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.prefetch.base import DEFAULT_THRESHOLD, Prediction


class PrefetchTarget(Protocol):
    """What the coordinator needs from a cache."""

    def is_resident(self, key: Any) -> bool:
        """Cached now (a prefetch would be wasted)."""

    def in_flight(self, key: Any) -> bool:
        """An origin fetch for the key is under way (a prefetch would be a duplicate)."""

    def prefetch(self, key: Any) -> Any:
        """Start fetching the key from the origin and insert it as prefetched; may return an awaitable."""


@dataclass(frozen=True, slots=True)
class PrefetchBudget:
    threshold: float = DEFAULT_THRESHOLD  # minimum confidence worth an origin fetch
    per_request: int = 1  # prefetches issued per access at most
    max_in_flight: int = 64  # concurrent prefetch fetches at most

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"prefetch threshold must be within [0, 1], got {self.threshold}")
        if self.per_request < 0 or self.max_in_flight < 1:
            raise ValueError("prefetch budget needs per_request >= 0 and max_in_flight >= 1")


@dataclass(slots=True)
class CoordinatorStats:
    issued: int = 0
    used: int = 0  # read as a hit within the horizon after being issued
    late: int = 0  # read as a miss first: while the prefetch was on its way, or after it was evicted
    late_in_flight: int = 0  # of those, read while its fetch was still running
    wasted: int = 0  # not read within the horizon, or issued again before any read (evicted unread, or not loaded)
    skipped_resident: int = 0
    skipped_in_flight: int = 0
    skipped_concurrency: int = 0
    below_threshold: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class PrefetchCoordinator:
    """Issues prefetches for one tenant's cache; an issued prefetch is settled as used (read as a hit within
    `horizon` accesses), late (read as a miss first) or wasted (not read within the horizon)."""

    target: PrefetchTarget
    budget: PrefetchBudget = field(default_factory=PrefetchBudget)
    decode: Callable[[int], Hashable | None] = lambda key: key  # prefetcher key -> cache key
    horizon: int = 64  # accesses after issue within which a read settles a prefetch as used; 0: no books kept
    # False for a target that never holds what this coordinator issues (a scoring book whose prefetch fetches
    # nothing, `answers.py`): a key issued and not settled yet then counts as resident, as it would be had the
    # prefetch been made, instead of being issued again.
    target_sees_issues: bool = True
    stats: CoordinatorStats = field(default_factory=CoordinatorStats)
    _outstanding: set[Hashable] = field(default_factory=set)
    # issued and not yet settled: key -> access count when issued (reads before it included), oldest first
    _recent: OrderedDict[Hashable, int] = field(default_factory=OrderedDict)
    _clock: int = 0
    # With `track_waits`: the reads each used prefetch spent in the cache between landing and its read, since the
    # last `take_waits()` (the lead tuner aims nearer by them, `lead.py`), and the landing clock of each landed one.
    track_waits: bool = False
    _waits: list[int] = field(default_factory=list)
    _landed: dict[Hashable, int] = field(default_factory=dict)

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def consider(self, proposals: Iterable[Prediction], reads_since: int = 0) -> list[tuple[Hashable, Any]]:
        """Issue the best proposals the budget allows; returns (key, whatever target.prefetch returned).

        `reads_since`: reads that happened after the last one settled (`on_access`) and before this issue. The
        service issues while its worker predicts, hundreds of reads after the drain under load: a prefetch's
        horizon starts at its issue, not at the drain, and a read from before the issue does not settle it."""
        issued: list[tuple[Hashable, Any]] = []
        budget = self.budget
        if budget.per_request == 0:
            return issued
        target = self.target
        for proposal in proposals:
            if proposal.confidence < budget.threshold:
                self.stats.below_threshold += 1
                break  # proposals come best first
            if len(self._outstanding) >= budget.max_in_flight:
                self.stats.skipped_concurrency += 1
                break
            key = self.decode(proposal.key)
            if key is None:
                continue  # names no key (a stride below zero, a forgotten opaque key)
            if key in self._outstanding or target.in_flight(key):
                self.stats.skipped_in_flight += 1
                continue
            if target.is_resident(key) or (not self.target_sees_issues and key in self._recent):
                self.stats.skipped_resident += 1
                continue
            self._outstanding.add(key)
            if self.horizon:
                if self._recent.pop(key, None) is not None:
                    # Issued before and never read (it landed and was evicted, or its load failed): that issue
                    # is wasted, and this one joins the back of the expiry order, which must stay oldest first.
                    self._landed.pop(key, None)
                    self.stats.wasted += 1
                self._recent[key] = self._clock + reads_since
            self.stats.issued += 1
            issued.append((key, target.prefetch(key)))
            if len(issued) >= budget.per_request:
                break
        return issued

    def unsettled(self, key: Hashable) -> bool:
        """Whether this coordinator issued a prefetch of the key that no read has settled yet."""
        return key in self._recent or key in self._outstanding

    def completed(self, key: Hashable, reads_since: int = 0) -> None:
        """The origin fetch for a prefetched key finished (inserted, or failed); `reads_since` as in `consider`:
        reads after the last settled one and before it landed. A second notice of the same landing changes nothing."""
        if key not in self._outstanding:
            return
        self._outstanding.remove(key)
        if self.track_waits and key in self._recent:
            self._landed[key] = self._clock + reads_since

    def take_waits(self) -> list[int]:
        """The waits noted since the last call (`track_waits`)."""
        waits, self._waits = self._waits, []
        return waits

    def on_access(self, key: Hashable, hit: bool | None) -> None:
        """A read happened; settles an earlier prefetch of the key, and those whose horizon passed. `hit` None: a
        miss that found the key's load in flight (`access_log.py`)."""
        self._clock += 1
        recent = self._recent
        if not recent:
            return
        issued_at = recent.get(key)
        if issued_at is not None and issued_at < self._clock:
            del recent[key]
            landed = self._landed.pop(key, None)
            if hit:
                self.stats.used += 1
                if landed is not None:  # the reads between its landing and this one (none if noted after it)
                    self._waits.append(max(0, self._clock - 1 - landed))
            else:
                self.stats.late += 1
                # Aimed too near (`lead.py` moves out). Its fetch may have finished since the read: ask both.
                self.stats.late_in_flight += hit is None or key in self._outstanding
        deadline = self._clock - self.horizon
        while recent and next(iter(recent.values())) <= deadline:
            self._landed.pop(recent.popitem(last=False)[0], None)
            self.stats.wasted += 1

    def settle(self) -> None:
        """Count every prefetch still unread as wasted (end of a replay, or of an A/B window)."""
        self.stats.wasted += len(self._recent)
        self._recent.clear()
        self._landed.clear()
