"""Live duels between two ways of prefetching, judged by the prefetches the real cache used.

The offline replay can compare prefetchers on a trace; a live server cannot run two at once on one cache. So it
takes turns: epochs of `epoch` settled reads alternate the current choice and a probe, in the order current,
probe, probe, current (which cancels a workload's linear drift), and after the four compares the prefetches used
per read under each. The probe wins if it is better by more than `z` standard errors; it loses if it is worse
by as much, or after `max_duels` duels without a verdict (else they duel again, on the tallies so far: live a
difference is a few percent and a tenant's reads are noisy).

The standard error is the larger of two. Reads taken as independent draws (binomial) give one. But a workload's
phases move whole epochs (a run of sequential reads, then none), and a phase change inside a duel is not
cancelled by its order: a probe then wins or loses on the phase, not on its merit. So the two epochs of each
choice in a duel also measure how much epochs differ by themselves, and the duels so far give the standard error
of the difference from that.

Probing costs the probe's worse epochs, so each probe lost is followed by a rest without probes, twice as long as
the last (1 epoch, 2, 4, up to `max_rest`), until a probe wins again.

All of this is counted in reads, not in the caller's steps, which settle hundreds of reads each under load: a
rest ends after its epochs' reads, however few steps brought them, and a duel counts towards `max_duels` as many
times as its reads fill four epochs. Only a duel's epochs end with a step, the first to complete them: a step's
reads all came under one choice, and the current choice's epochs and the probe's must not share them.

What is compared is up to the caller: the aim of stride answers (`lead.py`), or whose answers to issue
(`answers.py`).
"""

from __future__ import annotations

from enum import Enum

DUEL = (False, True, True, False)  # epochs of one comparison: is it the probe's?
# Epochs of 32 settled reads; a probe is given up after 32 duels without a verdict (4,096 reads), and rests last up
# to 256 epochs (8,192 reads). Chosen for the lead tuner and then for the answer sources on simulations of the live
# engine (`tests/prefetch/lead_sim.py`, `tests/prefetch/answer_sim.py`; docs/prefetch-live.md).
EPOCH, MAX_DUELS, MAX_REST = 32, 32, 256


class Verdict(Enum):
    PROBE = "probe"  # the probe is better: adopt it
    CURRENT = "current"  # the current choice is better, or no verdict came in time: keep it, rest
    PENDING = "pending"  # within the noise: duel again


class Duel:
    """Which of the current choice and the probe serves now, and the verdict after each four epochs."""

    def __init__(self, epoch: int = EPOCH, z: float = 2.0, max_duels: int = MAX_DUELS,
                 max_rest: int = MAX_REST) -> None:
        self.epoch, self.z, self.max_duels, self.max_rest = epoch, z, max_duels, max_rest
        self._slot = 0  # which epoch of the duel runs now
        self._duels = 0  # duels of the current choice against the current probe so far
        self._epoch_reads = 0
        self._epoch_used = 0
        self._duel_reads = 0  # reads of the duel under way
        self._rates: list[float] = []  # used per read of each epoch of the duels so far, in `DUEL` order
        self._rest = 0  # epochs of the current choice, no probe, before the next duel
        self._backoff = 0  # the rest after the next probe lost: doubles with each, 0 after a probe wins
        self.tallies = {False: [0, 0, 0], True: [0, 0, 0]}  # current / probe: [reads, used, read in flight]

    @property
    def probing(self) -> bool:
        """Whether the probe serves now."""
        return DUEL[self._slot] and not self._rest

    def observe(self, reads: int, used: int, in_flight: int = 0) -> bool:
        """`reads` settled, `used` prefetches used among them and `in_flight` read while still being fetched,
        under whichever `probing` said. True when a duel has just ended: the caller asks `verdict()` and
        answers with `adopted()`, `kept()` or nothing (a pending verdict). Reads past a rest's end go to the
        duel's first epoch, the current choice's as the rest's, with their share of `used` and `in_flight`."""
        if self._rest:
            reads, used, in_flight = self._rest_through(reads, used, in_flight)
            if not reads:
                return False
        self._epoch_reads += reads
        self._duel_reads += reads
        tally = self.tallies[DUEL[self._slot]]
        tally[0] += reads
        tally[1] += used
        tally[2] += in_flight
        self._epoch_used += used
        if self._epoch_reads < self.epoch:
            return False
        self._rates.append(self._epoch_used / self._epoch_reads)
        self._epoch_reads = self._epoch_used = 0
        self._slot = (self._slot + 1) % len(DUEL)
        if self._slot:
            return False
        # A duel whose steps were long holds the reads of several: it counts as many towards giving the probe up.
        self._duels += max(1, self._duel_reads // (len(DUEL) * self.epoch))
        self._duel_reads = 0
        return True

    def _rest_through(self, reads: int, used: int, in_flight: int) -> tuple[int, int, int]:
        """Count `reads` against the rest; returns the reads past its end, with their share of `used` and
        `in_flight` (none while it lasts)."""
        epochs, self._epoch_reads = divmod(self._epoch_reads + reads, self.epoch)
        if epochs < self._rest:
            self._rest -= epochs
            return 0, 0, 0
        past = (epochs - self._rest) * self.epoch + self._epoch_reads
        self._rest = self._epoch_reads = 0
        return past, used * past // reads, in_flight * past // reads

    def verdict(self) -> Verdict:
        (reads, used, _), (probe_reads, probe_used, _) = self.tallies[False], self.tallies[True]
        rate, probe_rate = used / max(1, reads), probe_used / max(1, probe_reads)
        # Used prefetches per read are near binomial shares: their difference's standard error.
        binomial = (rate * (1 - rate) / max(1, reads) + probe_rate * (1 - probe_rate) / max(1, probe_reads)) ** 0.5
        noise = max(binomial, self._epoch_noise())
        if probe_rate - rate > self.z * noise:
            return Verdict.PROBE
        if rate - probe_rate > self.z * noise or self._duels >= self.max_duels:
            return Verdict.CURRENT
        return Verdict.PENDING

    def _epoch_noise(self) -> float:
        """The standard error of the probe's lead from how much epochs of the same choice differ (0 before a
        whole duel)."""
        duels = len(self._rates) // len(DUEL)
        if not duels:
            return 0.0
        rates = self._rates
        # An epoch's variance: the squared difference of a choice's two epochs in a duel averages twice it.
        variance = sum((rates[i] - rates[i + 3]) ** 2 + (rates[i + 1] - rates[i + 2]) ** 2
                       for i in range(0, duels * len(DUEL), len(DUEL))) / (4 * duels)
        # Each choice's mean rate averages 2 x duels epochs: their difference's variance is variance / duels.
        return (variance / duels) ** 0.5

    def adopted(self) -> None:
        """The caller moved to the probe, or elsewhere for a reason of its own: fresh tallies, no backoff."""
        self._backoff = 0
        self._restart()

    def kept(self) -> None:
        """The caller keeps its choice and gives the probe up: a rest, longer than the last."""
        self._backoff = min(self.max_rest, max(1, 2 * self._backoff))
        self._rest = self._backoff
        self._restart()

    def _restart(self) -> None:
        self._duels = 0
        self._duel_reads = 0
        self._rates = []
        self.tallies = {False: [0, 0, 0], True: [0, 0, 0]}
