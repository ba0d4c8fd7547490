"""Live choice between a prefetcher's own answers and an on-time copy of its stride arm.

The learned prefetcher picks among its arms with shadow caches (`shadow.py`), on the reads it is given, as if
its answers came at once. Live they come late whenever it is behind: on the dev box at 1,000 reads a second its
proposals reached the coordinator 150-210 reads after the read they came from, and on lirs-ps the learned
engine kept 0.37 of reads as hits where the stride engine, answering in its worker thread 2-3 reads late, kept
0.79 (`foresight bench live-replay`). A late answer is judged by the shadows as if it were on time.

So the engine of a prefetcher with arms also runs its own stride prefetcher on the newest reads of every drain
(a few microseconds a read, in the worker thread), and scores both sources of proposals on the reads that
follow their issue: the coordinator's own settlement run on books that fetch nothing (`used` within the
horizon, `wasted` otherwise), net usefulness at the threshold's break-even (a wasted prefetch costs
threshold / (1 - threshold) of a used one), decayed. The better source's proposals are issued; the other is
only scored. Where the prefetcher serves no arm at all (its shadows say prefetching hurts this cache), neither
is issued.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from service.prefetch.base import Predictions
from service.prefetch.coordinator import PrefetchCoordinator
from service.prefetch.stride import StridePrefetcher

FAST = "fast"  # the engine's own stride prefetcher
MODEL = "model"  # the prefetcher's answers
SOURCES = (MODEL, FAST)


class _Unfetched:
    """The real cache as both sources' scoring sees it; a prefetch fetches nothing.

    A key the engine prefetched and nobody has read yet counts as neither resident nor in flight: else
    whichever source is issued would make the other's proposals of the same keys look redundant, and the
    served source would keep its place on that alone."""

    def __init__(self, coordinator: PrefetchCoordinator) -> None:
        self.coordinator, self.target = coordinator, coordinator.target

    def is_resident(self, key: Any) -> bool:
        return self.target.is_resident(key) and not self.coordinator.unsettled(key)

    def in_flight(self, key: Any) -> bool:
        return self.target.in_flight(key) and not self.coordinator.unsettled(key)

    def prefetch(self, key: Any) -> None:
        return None


class AnswerSources:
    """Scores the prefetcher's answers and the engine's stride answers live; `serving` is the one to issue."""

    def __init__(self, coordinator: PrefetchCoordinator, lead: int, half_life: int = 1024,
                 margin: float = 1.0) -> None:
        """`coordinator`: the engine's, which issues the serving source's proposals."""
        self.fast = StridePrefetcher(lead)
        budget = coordinator.budget
        self._books = {name: PrefetchCoordinator(_Unfetched(coordinator), budget, coordinator.decode,
                                                 coordinator.horizon) for name in SOURCES}
        self._cost = budget.threshold / (1.0 - budget.threshold) if budget.threshold < 1 else 1.0
        self._half_life, self._margin = half_life, margin
        self.scores = dict.fromkeys(SOURCES, 0.0)  # decayed used - cost x wasted
        self._counted = {name: (0, 0) for name in SOURCES}  # (used, wasted) already in the scores
        self._reads = 0  # reads since the last rescore
        self.serving = MODEL  # until the stride answers have shown themselves better
        self.switches = 0

    def on_access(self, key: Hashable) -> None:
        """A read settled: it settles the scored proposals of either source it was read after."""
        self._reads += 1
        for book in self._books.values():
            book.on_access(key, True)

    def score(self, source: str, proposals: Predictions, reads_since: int) -> None:
        """Note what `source` proposed for one read, as if issued now (`reads_since`: reads since the last
        settled one)."""
        book = self._books[source]
        for key, _ in book.consider(proposals, reads_since):
            book.completed(key)

    def rescore(self) -> str:
        """Fold the settlements since the last call into the scores; returns the source to serve."""
        decay = 0.5 ** (self._reads / self._half_life)
        self._reads = 0
        for name, book in self._books.items():
            used, wasted = book.stats.used, book.stats.wasted
            seen_used, seen_wasted = self._counted[name]
            self._counted[name] = used, wasted
            self.scores[name] = self.scores[name] * decay + (used - seen_used) - self._cost * (wasted - seen_wasted)
        other = FAST if self.serving == MODEL else MODEL
        if self.scores[other] > self.scores[self.serving] + self._margin:
            self.serving = other
            self.switches += 1
        return self.serving
