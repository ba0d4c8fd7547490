"""Per-tenant A/B assignment between prefetchers, and the live metrics that compare them.

A tenant's arm is a hash of (experiment salt, tenant id): stable across restarts and processes with no
state to store, and a new salt reshuffles everyone for the next experiment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field


class ABAssignment:
    """Weighted, deterministic assignment of tenants to arms (prefetcher names)."""

    def __init__(self, arms: Mapping[str, float], salt: str = "prefetch-ab-1") -> None:
        if not arms or any(w < 0 for w in arms.values()) or sum(arms.values()) <= 0:
            raise ValueError("A/B arms need at least one positive weight and no negative ones")
        total = sum(arms.values())
        self.salt = salt
        self._cumulative: list[tuple[float, str]] = []
        acc = 0.0
        for name, weight in sorted(arms.items()):
            acc += weight / total
            self._cumulative.append((acc, name))

    def arm(self, tenant: str) -> str:
        digest = hashlib.sha256(f"{self.salt}\0{tenant}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        for edge, name in self._cumulative:
            if point < edge:
                return name
        return self._cumulative[-1][1]


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
