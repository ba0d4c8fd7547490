"""Per-tenant A/B assignment between prefetchers, and the live metrics that compare them.

A tenant's arm is chosen by weighted rendezvous hashing: each (experiment salt, tenant, arm) hashes to a draw
from an exponential distribution, divided by the arm's weight, and the smallest wins, so an arm gets tenants in
proportion to its weight. It is stable across restarts and processes with no state to store (sha256, not
Python's salted `hash`), a new salt reshuffles everyone for the next experiment, and adding, removing or
reweighting one arm moves tenants only to or from that arm.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field


def check_weights(arms: Mapping[str, float]) -> dict[str, float]:
    """The arms' weights as floats; ValueError, naming the arm, unless each is finite and >= 0 and one is > 0
    (what a configuration validator calls)."""
    weights: dict[str, float] = {}
    for name, weight in arms.items():
        try:
            value = float(weight)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"A/B arm {name!r} has weight {weight!r}: a weight must be a finite number >= 0")
        weights[name] = value
    if not any(weights.values()):
        raise ValueError(f"A/B arms need a weight above 0, got {dict(arms)!r}")
    return weights


class ABAssignment:
    """Weighted, deterministic assignment of tenants to arms (prefetcher names)."""

    def __init__(self, arms: Mapping[str, float], salt: str = "prefetch-ab-1") -> None:
        self.salt = salt
        self._weights = sorted((name, weight) for name, weight in check_weights(arms).items() if weight > 0)

    def arm(self, tenant: str) -> str:
        return min(self._weights, key=lambda arm: self._draw(tenant, arm[0]) / arm[1])[0]

    def _draw(self, tenant: str, arm: str) -> float:
        """The tenant's exponential draw (mean 1) for an arm. Divided by the arm's weight, the smallest of them
        names the tenant's arm: each arm's with a probability of its share of the weights."""
        digest = hashlib.sha256(f"{self.salt}\0{tenant}\0{arm}".encode()).digest()
        uniform = ((int.from_bytes(digest[:8], "big") >> 11) + 1) / 2**53  # in (0, 1]: its log is finite
        return -math.log(uniform)


@dataclass(slots=True)
class ArmMetrics:
    tenants: set[str] = field(default_factory=set)
    hits: int = 0
    misses: int = 0
    prefetch_issued: int = 0
    prefetch_used: int = 0

    @property
    def miss_ratio(self) -> float:
        total = self.hits + self.misses
        return self.misses / total if total else 0.0

    @property
    def prefetch_accuracy(self) -> float:
        return self.prefetch_used / self.prefetch_issued if self.prefetch_issued else 0.0


class LiveComparison:
    """Aggregates each arm's reads and prefetch outcomes as they happen."""

    def __init__(self, assignment: ABAssignment) -> None:
        self.assignment = assignment
        self.arms: dict[str, ArmMetrics] = {}

    def _arm(self, tenant: str) -> ArmMetrics:
        metrics = self.arms.setdefault(self.assignment.arm(tenant), ArmMetrics())
        metrics.tenants.add(tenant)
        return metrics

    def record_read(self, tenant: str, hit: bool) -> None:
        metrics = self._arm(tenant)
        if hit:
            metrics.hits += 1
        else:
            metrics.misses += 1

    def record_prefetch(self, tenant: str, issued: int = 0, used: int = 0) -> None:
        metrics = self._arm(tenant)
        metrics.prefetch_issued += issued
        metrics.prefetch_used += used

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "tenants": len(m.tenants),
                "miss_ratio": m.miss_ratio,
                "prefetch_accuracy": m.prefetch_accuracy,
                "requests": m.hits + m.misses,
            }
            for name, m in sorted(self.arms.items())
        }
