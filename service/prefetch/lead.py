"""The live aim of a prefetcher that can change it: hill climbing on the prefetches the real cache used.

A prefetch aimed `lead` reads ahead counts only if it is issued, fetched and still cached when its read comes.
How far ahead that is depends on what the offline replay does not see: the engine's issue lag, the origin's
latency at the read rate, how many reads clients pipeline, and how long the eviction policy keeps an unread
prefetch. With stride on the dev box at 1,000 reads a second (`foresight bench live-replay`, pipeline 8),
lirs-ps kept 0.79 of its reads as hits aimed 4 ahead, 0.97 aimed 8 ahead and 0.46 aimed 16 ahead (its
prefetches were evicted before their reads), while lirs-multi2, lirs-sprite and lirs-cpp did best aimed 2
ahead (short runs: a far guess falls past a run's end). No fixed aim suits them all.

So the engine tunes the aim live, by duels (`duel.py`) between the current aim and a probe one step away: the
aim moves to the probe when the probe's prefetches are used more per read. Probes keep their direction after a
move and turn after a probe is lost; a step is a quarter of the aim, at least 1, within [0, `max_lead`]. One
exception: where more of the current aim's prefetches were read while still being fetched than were used, the
aim moves up a step without a verdict. Below the origin's latency every aim uses nothing, and comparing nothing
with nothing would never leave it.

And the other way: each used prefetch tells how many reads it waited in the cache between landing and its read
(the coordinator notes it, `track_waits`). Where a tenth of the current aim's used prefetches waited less than
`w` reads, and hardly any (under a tenth as many as were used) were read in flight, an aim `w` nearer would have
landed them all the same, and it would aim `w` fewer keys past the start of each run. So after a duel the aim
comes `w - 1` nearer without a verdict: one read is kept to spare, because a wait is counted from when the engine
hears of the landing, which may be a read or a burst after the landing itself (simulated both ways, the tuner
coming `w` nearer kept 0.952 of the best fixed lead's hits where landings were heard at once and 0.970 where they
were heard after the burst; `w - 1` kept 0.966 and 0.966). A duel could not tell: neighbouring aims differ by a
key a run, within a duel's noise on short runs, so the tuner stayed at 3-5 where 1 was best (lirs-multi2 without
pipelining, a prefetch landing 2 reads after issue: 0.59-0.63 of reads as hits against 0.74 aimed 1 ahead, in the
simulation below).

Epochs are short (32 settled reads; a probe is given up after 32 duels without a verdict, 4,096 reads, and rests
up to 256 epochs, 8,192 reads): the shorter a duel, the likelier both its sides fall in the same phase of the
workload, and a move takes 128 reads where it took 1,024. Chosen on a simulation of the live engine, without live
noise (`python -m tests.prefetch.lead_sim`, docs/prefetch-live.md "How the tuner was chosen"), each tuner started
at 7 points of each trace: on the four development traces the tuned stride engine kept 0.970 of the best fixed
lead's hits on average (0.945 without aiming nearer by the waits, 0.949 with epochs of 256 reads, 0.957 with
epochs of 32 judged by the binomial error alone, `duel.py`); on six traces it was not chosen on, 0.944 (0.934
without aiming nearer, 0.951 with the binomial error alone). With the read to spare: 0.966 and 0.947.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from itertools import accumulate

from service.prefetch.duel import EPOCH, MAX_DUELS, MAX_REST, Duel, Verdict

MAX_LEAD = 32  # half the coordinator's 64-read horizon: a prefetch must settle as used within it
WAIT_QUANTILE = 0.1  # the aim comes nearer by the wait this share of the current aim's used prefetches stayed under
MIN_WAITS = 16  # used prefetches whose waits are enough to aim nearer by them


class LeadTuner:
    """Chooses the aim (`lead`) of later proposals from the prefetches used at each aim so far."""

    def __init__(self, lead: int, max_lead: int = MAX_LEAD, epoch: int = EPOCH, z: float = 2.0,
                 max_duels: int = MAX_DUELS, max_rest: int = MAX_REST) -> None:
        if max_lead < 1 or not 0 <= lead <= max_lead:
            raise ValueError(f"the lead tuner needs max_lead >= 1 and a starting lead within [0, max_lead], got "
                             f"{lead} and {max_lead}")
        self.lead, self.max_lead = lead, max_lead
        self.moves = 0
        self._duel = Duel(epoch, z, max_duels, max_rest)
        self._up = True
        self._probe = self._next_probe()
        self._waits = [0] * (max_lead + 1)  # the current aim's used prefetches by their wait (the last: longer)

    @property
    def epoch(self) -> int:
        return self._duel.epoch

    @property
    def aim(self) -> int:
        """The lead proposals should be aimed with now (the probe's during its epochs)."""
        return self._probe if self._duel.probing else self.lead

    def observe(self, reads: int, used: int, in_flight: int = 0, waits: Iterable[int] = ()) -> int:
        """`reads` settled, `used` prefetches used among them and `in_flight` read while still being fetched: the
        outcome of proposals aimed with the last `aim` returned (they settle on the reads after their issue).
        `waits`: of the used ones, the reads each stayed in the cache between landing and its read. Returns the
        aim from now on."""
        if not self._duel.probing:
            counts, last = self._waits, self.max_lead
            for wait in waits:
                counts[min(wait, last)] += 1
        if self._duel.observe(reads, used, in_flight):
            self._decide()
        return self.aim

    def _decide(self) -> None:
        """After each duel: move, give the probe up, or duel again (a difference within the noise)."""
        _, used, in_flight = self._duel.tallies[False]
        if in_flight > used and self.lead < self.max_lead:
            self._up = True
            self._move(min(self.max_lead, self.lead + self._step))
            return
        nearer = self._short_wait() - 1  # one read to spare: when the engine hears of a landing varies by a read
        if nearer > 0 and in_flight * 10 <= used and self.lead:
            self._up = False
            self._move(max(0, self.lead - nearer))
            return
        verdict = self._duel.verdict()
        if verdict is Verdict.PROBE:
            self._move(self._probe)
        elif verdict is Verdict.CURRENT:
            self._up = not self._up
            self._duel.kept()
            self._probe = self._next_probe()

    def _short_wait(self) -> int:
        """The wait that `WAIT_QUANTILE` of the current aim's used prefetches stayed under (0 with fewer than
        `MIN_WAITS` of them)."""
        cumulative = list(accumulate(self._waits))
        if cumulative[-1] < MIN_WAITS:
            return 0
        return bisect_right(cumulative, int(cumulative[-1] * WAIT_QUANTILE))

    def _move(self, lead: int) -> None:
        self.moves += 1
        self.lead = lead
        self._waits = [0] * (self.max_lead + 1)
        self._duel.adopted()
        self._probe = self._next_probe()

    @property
    def _step(self) -> int:
        return max(1, self.lead // 4)

    def _next_probe(self) -> int:
        step = self._step
        if self.lead + step > self.max_lead if self._up else self.lead - step < 0:
            self._up = not self._up
        return self.lead + step if self._up else self.lead - step
