"""Calibrates a prefetcher's confidence against what actually happened in this tenant's cache.

A prefetcher estimates how likely a key is to be read soon; whether the prefetch pays off also depends on the
cache (a small cache evicts an unread prefetch sooner). The calibrator keeps, per confidence bucket, a decayed
count of issued prefetches and of those read as hits, and maps a raw confidence to that bucket's realised
rate. A prior of `prior` pseudo-outcomes at the raw confidence keeps empty buckets at face value and, as old
outcomes decay, lets a suppressed bucket come back and be measured again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUCKETS = 20


@dataclass(slots=True)
class OutcomeCalibrator:
    prior: float = 16.0
    decay: float = 0.995  # per outcome in the same bucket
    issued: list[float] = field(default_factory=lambda: [0.0] * BUCKETS)
    used: list[float] = field(default_factory=lambda: [0.0] * BUCKETS)

    @staticmethod
    def bucket(confidence: float) -> int:
        return min(BUCKETS - 1, max(0, int(confidence * BUCKETS)))

    def __call__(self, confidence: float) -> float:
        """The realised hit rate of prefetches issued at this confidence."""
        b = self.bucket(confidence)
        centre = (b + 0.5) / BUCKETS
        return (self.used[b] + self.prior * centre) / (self.issued[b] + self.prior)

    def record(self, confidence: float, used: bool) -> None:
        b = self.bucket(confidence)
        self.issued[b] = self.issued[b] * self.decay + 1.0
        self.used[b] = self.used[b] * self.decay + (1.0 if used else 0.0)
