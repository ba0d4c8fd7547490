"""The live aim of a prefetcher that can change it: hill climbing on the prefetches the real cache used.

A prefetch aimed `lead` reads ahead counts only if it is issued, fetched and still cached when its read comes.
How far ahead that is depends on what the offline replay does not see: the engine's issue lag, the origin's
latency at the read rate, how many reads clients pipeline, and how long the eviction policy keeps an unread
prefetch. With stride on the dev box at 1,000 reads a second (`foresight bench live-replay`, pipeline 8),
lirs-ps kept 0.79 of its reads as hits aimed 4 ahead, 0.97 aimed 8 ahead and 0.46 aimed 16 ahead (its
prefetches were evicted before their reads), while lirs-multi2, lirs-sprite and lirs-cpp did best aimed 2
ahead (short runs: a far guess falls past a run's end). No fixed aim suits them all.

So the engine tunes the aim live. Epochs of `epoch` settled reads alternate between the current aim and a
probe one step away, in the order current, probe, probe, current (which cancels a workload's linear drift);
after the four, the aim moves to the probe if the prefetches used per read at the probe beat those at the
current aim by more than `z` standard errors; it keeps the aim and turns the probe the other way if they fall
short by as much, or after `max_duels` duels without a verdict (else they duel again, on the tallies so far:
live a step's difference is a few percent, and a tenant's reads are noisy). Probes keep their direction after
a move; a step is a quarter of the aim, at least 1, within [0, `max_lead`]. Probing costs the probe's worse
epochs, so each probe given up is followed by a rest at the current aim before the next duel, twice as long
as the last (1 epoch, 2, 4, up to `max_rest`), until the aim moves again. One exception: where more of the
current aim's prefetches were read while still being fetched than were used, the aim moves up a step without
a verdict. Below the origin's latency every aim uses nothing, and comparing nothing with nothing would never
leave it.
"""

from __future__ import annotations

DUEL = (False, True, True, False)  # epochs of one comparison: is it the probe's?
MAX_LEAD = 32  # half the coordinator's 64-read horizon: a prefetch must settle as used within it


class LeadTuner:
    """Chooses the aim (`lead`) of later proposals from the prefetches used at each aim so far."""

    def __init__(self, lead: int, max_lead: int = MAX_LEAD, epoch: int = 256, z: float = 2.0,
                 max_duels: int = 4, max_rest: int = 32) -> None:
        if max_lead < 1 or not 0 <= lead <= max_lead:
            raise ValueError(f"the lead tuner needs max_lead >= 1 and a starting lead within [0, max_lead], got "
                             f"{lead} and {max_lead}")
        self.lead, self.max_lead, self.epoch, self.z, self.max_duels = lead, max_lead, epoch, z, max_duels
        self.max_rest = max_rest
        self.moves = 0
        self._up = True
        self._probe = self._next_probe()
        self._slot = 0  # which epoch of the duel runs now
        self._duels = 0  # duels of the current aim against the current probe so far
        self._epoch_reads = 0
        self._rest = 0  # epochs at the current aim, no probe, before the next duel
        self._backoff = 0  # the rest after the next probe given up: doubles with each, 0 after a move
        self._tally = {False: [0, 0, 0], True: [0, 0, 0]}  # current aim / probe: [reads, used, read in flight]

    @property
    def aim(self) -> int:
        """The lead proposals should be aimed with now (the probe's during its epochs)."""
        return self._probe if DUEL[self._slot] and not self._rest else self.lead

    def observe(self, reads: int, used: int, in_flight: int = 0) -> int:
        """`reads` settled, `used` prefetches used among them and `in_flight` read while still being fetched: the
        outcome of proposals aimed with the last `aim` returned (they settle on the reads after their issue).
        Returns the aim from now on."""
        self._epoch_reads += reads
        if self._rest:
            if self._epoch_reads >= self.epoch:
                self._epoch_reads, self._rest = 0, self._rest - 1
            return self.aim
        tally = self._tally[DUEL[self._slot]]
        tally[0] += reads
        tally[1] += used
        tally[2] += in_flight
        if self._epoch_reads >= self.epoch:
            self._epoch_reads = 0
            self._slot = (self._slot + 1) % len(DUEL)
            if self._slot == 0:
                self._decide()
        return self.aim

    def _decide(self) -> None:
        """After each duel: move, give the probe up, or duel again (a difference within the noise)."""
        self._duels += 1
        (reads, used, in_flight), (probe_reads, probe_used, _) = self._tally[False], self._tally[True]
        rate, probe_rate = used / max(1, reads), probe_used / max(1, probe_reads)
        # Used prefetches per read are near binomial shares: their difference's standard error.
        noise = (rate * (1 - rate) / max(1, reads) + probe_rate * (1 - probe_rate) / max(1, probe_reads)) ** 0.5
        if in_flight > used and self.lead < self.max_lead:
            self._up = True
            self._move(min(self.max_lead, self.lead + self._step))
        elif probe_rate - rate > self.z * noise:
            self._move(self._probe)
        elif rate - probe_rate > self.z * noise or self._duels >= self.max_duels:
            self._up = not self._up
            self._backoff = min(self.max_rest, max(1, 2 * self._backoff))
            self._rest = self._backoff
            self._move(self.lead)
        # else: no verdict yet; the same probe duels again, on the tallies so far

    def _move(self, lead: int) -> None:
        if lead != self.lead:
            self.moves += 1
            self._backoff = 0
        self.lead = lead
        self._duels = 0
        self._tally = {False: [0, 0, 0], True: [0, 0, 0]}
        self._probe = self._next_probe()

    @property
    def _step(self) -> int:
        return max(1, self.lead // 4)

    def _next_probe(self) -> int:
        step = self._step
        if self.lead + step > self.max_lead if self._up else self.lead - step < 0:
            self._up = not self._up
        return self.lead + step if self._up else self.lead - step
