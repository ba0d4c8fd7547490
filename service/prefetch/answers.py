"""Live choice between a prefetcher's own answers and an on-time copy of its stride arm.

The learned prefetcher picks among its arms with shadow caches (`shadow.py`), on the reads it is given, as if
its answers came at once. Live they come late whenever it is behind: on the dev box at 1,000 reads a second its
proposals reached the coordinator 150-210 reads after the read they came from, and on lirs-ps the learned
engine kept 0.37 of reads as hits where the stride engine, answering in its worker thread 2-3 reads late, kept
0.79 (`foresight bench live-replay`). The shadows judge a late answer as if it were on time.

So the engine of a prefetcher with arms also runs its own stride prefetcher on the newest reads of its drains
(a few microseconds a read, in the worker thread), scores both sources of proposals live, and chooses whose
to issue:

- the engine's stride has not been useful lately (its score at most zero): the prefetcher's. It then
  answers only every `PROBE_EVERY`-th step, and the engine steps when both CPU budgets allow, as it did
  without it: on keys without order (redis-benchmark's) answering every step cost a 2-core server 7-16 % of
  its GET rate for nothing;
- the prefetcher serves its stride arm: the engine's stride, the same arm without the trip through it;
- the prefetcher's answers come within `lead + 1` reads of their read (a decayed mean), so its prefetches can
  still land before the read they aim at: a duel on the real cache decides (`duel.py`), starting with the
  prefetcher's answers and probing the engine's stride in turns, and the side whose prefetches the cache used
  more per read issues. Its shadows chose the arm as if its answers landed at once and a fixed `lead` ahead; the
  engine's stride aims where the live cache uses its prefetches most (`lead.py`). On an H200 host at 1,000 reads
  a second the learned engine aimed 8 ahead kept 0.91 of lirs-ps's reads as hits with every answer its own,
  where the stride engine kept 0.95 (`foresight bench live-replay`);
- else whichever scores better live. Both sources' proposals are settled on the reads that follow their issue
  by the coordinator's own rule, on books that fetch nothing (`used` within the horizon, `wasted` otherwise),
  net usefulness at the threshold's break-even (a wasted prefetch costs threshold / (1 - threshold) of a used
  one), decayed; the other source must lead by a margin. The score does not see what the cache does with a
  prefetch (an entry evicted before its read still counts as used), which is why it decides only between late
  answers and on-time ones: between on-time answers, the duel judges by the cache itself.

Where the prefetcher serves no arm at all (its shadows say prefetching hurts this cache), nothing is issued.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from service.prefetch.base import Predictions
from service.prefetch.coordinator import PrefetchCoordinator
from service.prefetch.duel import Duel, Verdict
from service.prefetch.stride import StridePrefetcher

FAST = "fast"  # the engine's own stride prefetcher
MODEL = "model"  # the prefetcher's answers
SOURCES = (MODEL, FAST)
FAST_ARM = "stride"  # the arm of the prefetcher's that FAST copies
LAG_HALF_LIFE = 256  # reads over which the prefetcher's measured lag loses half its weight
PROBE_EVERY = 8  # steps between answers of the engine's stride while they are not useful


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
    """The prefetcher's answers and the engine's stride answers, their lag and live scores; `serving` is the
    source to issue."""

    def __init__(self, coordinator: PrefetchCoordinator, lead: int, half_life: int = 1024,
                 margin: float = 1.0) -> None:
        """`coordinator`: the engine's, which issues the serving source's proposals."""
        self.fast = StridePrefetcher(lead)  # aimable: the engine may tune its lead while it serves
        self.distance = lead + 1  # where the prefetcher's answers aim
        budget = coordinator.budget
        # The books' target never holds what they issue: an issued, unsettled key counts as resident there.
        self._books = {name: PrefetchCoordinator(_Unfetched(coordinator), budget, coordinator.decode,
                                                 coordinator.horizon, target_sees_issues=False)
                       for name in SOURCES}
        self._cost = budget.threshold / (1.0 - budget.threshold) if budget.threshold < 1 else 1.0
        self._half_life, self._margin = half_life, margin
        self.scores = dict.fromkeys(SOURCES, 0.0)  # decayed used - cost x wasted
        self._counted = {name: (0, 0) for name in SOURCES}  # (used, wasted) already in the scores
        self._reads = 0  # reads since the last rescore
        self.serving = MODEL  # until the stride answers have shown themselves better
        self.switches = 0
        self.model_lag = 0.0  # decayed mean: reads between a read and the prefetcher's answers to it
        self._steps = 0
        # Between on-time answers: the real cache's verdict. `incumbent` issues but for the duel's probe epochs.
        self.duel = Duel()
        self.incumbent = MODEL
        self._contested = False  # whether the last rescore left the choice to the duel

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

    def note_lag(self, source: str, reads: int, mean_lag: float) -> None:
        """`reads` of `source`'s answers reached the engine `mean_lag` reads after their read, on average."""
        if source == MODEL and reads:
            keep = 0.5 ** (reads / LAG_HALF_LIFE)
            self.model_lag = self.model_lag * keep + mean_lag * (1.0 - keep)

    @property
    def model_on_time(self) -> bool:
        """Whether the prefetcher's answers come before the read they aim at (`lead + 1` reads on)."""
        return self.model_lag <= self.distance

    @property
    def fast_useful(self) -> bool:
        """Whether the engine's stride answers have been worth more than they wasted lately."""
        return self.scores[FAST] > 0

    def fast_due(self) -> bool:
        """Whether the engine's stride answers this step: always while they are useful, else every
        `PROBE_EVERY`-th step (on keys without order, it proposes nothing worth issuing, and each answer costs
        the worker thread, under the interpreter lock, a few microseconds)."""
        self._steps += 1
        return self.fast_useful or self._steps % PROBE_EVERY == 0

    def observe(self, reads: int, used: int) -> None:
        """The real cache's outcome since the last step: `reads` settled and `used` of the engine's prefetches
        used among them. Counts for the duel only where it chose who issued."""
        if not self._contested or not self.duel.observe(reads, used):
            return
        verdict = self.duel.verdict()
        if verdict is Verdict.PROBE:
            self.incumbent = _other(self.incumbent)
            self.duel.adopted()
        elif verdict is Verdict.CURRENT:
            self.duel.kept()

    def rescore(self, arm: str | None) -> str:
        """Fold the settlements since the last call into the scores; returns the source to serve, given the
        prefetcher's serving `arm`."""
        decay = 0.5 ** (self._reads / self._half_life)
        self._reads = 0
        for name, book in self._books.items():
            used, wasted = book.stats.used, book.stats.wasted
            seen_used, seen_wasted = self._counted[name]
            self._counted[name] = used, wasted
            self.scores[name] = self.scores[name] * decay + (used - seen_used) - self._cost * (wasted - seen_wasted)
        contested = False
        if not self.fast_useful:
            serving = MODEL
        elif arm == FAST_ARM:
            serving = FAST  # the same arm, answered sooner
        elif self.model_on_time:
            contested = True  # both can land in time: the duel on the real cache decides
            serving = _other(self.incumbent) if self.duel.probing else self.incumbent
        else:
            other = _other(self.serving)
            better = self.scores[other] > self.scores[self.serving] + self._margin
            serving = other if better else self.serving
        self._contested = contested
        self.switches += serving != self.serving
        self.serving = serving
        return serving


def _other(source: str) -> str:
    return FAST if source == MODEL else MODEL
