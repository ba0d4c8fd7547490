"""The contract every prefetcher meets: see the accesses in order, propose keys with confidences.

Prefetchers work on integer keys (the service maps its byte keys through `KeyCodec`) and know the prefetch
lead: a prefetch issued after access t lands before access t+lead+1, so what is worth proposing is what will
be read from then on. They never see the cache; the coordinator filters out what is resident or in flight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

# A prefetch counts as useful when its key is read within this many accesses after it lands. Prefetchers
# that measure their own accuracy, and the learned one's labels, use this one definition.
USEFUL_WINDOW = 16
# Confidence below which a prefetch is not worth an origin fetch: issuing at confidence p gains p hits and
# costs (1 - p) wasted slots; at this threshold a wasted slot is valued at a third of a hit.
DEFAULT_THRESHOLD = 0.25


class Prediction(NamedTuple):
    key: int
    confidence: float  # estimated probability that the key is read soon after the prefetch lands


Predictions = list[Prediction]


class Prefetcher(ABC):
    """Observes one tenant's accesses and proposes what comes next, best first."""

    name: ClassVar[str]
    aimable: ClassVar[bool] = False  # whether `aim_at` may move its aim once built

    def __init__(self, lead: int = 0, max_candidates: int = 4) -> None:
        self._set_lead(lead)
        self.max_candidates = max_candidates

    def _set_lead(self, lead: int) -> None:
        if lead < 0:
            raise ValueError(f"prefetch lead must be >= 0, got {lead}")
        self.lead = lead
        self.distance = lead + 1  # how many accesses ahead a useful prediction looks

    @abstractmethod
    def access(self, key: int) -> Predictions:
        """Record one access and return proposals for what follows it, most confident first."""

    def access_batch(self, keys: Sequence[int]) -> list[Predictions]:
        """Record several accesses in order; one proposal list per access, each using only the past."""
        return [self.access(key) for key in keys]

    def aim_at(self, lead: int) -> None:
        """Aim later proposals `lead` reads ahead (the engine tunes the aim live, `lead.py`). Only an `aimable`
        prefetcher: the others keep successor tables or a model learned for the distance they were built with."""
        if not self.aimable:
            raise TypeError(f"the {self.name} prefetcher's lead is fixed when it is built")
        self._set_lead(lead)

    @property
    def serving_arm(self) -> str | None:
        """For a prefetcher that chooses among arms (the learned one), the arm whose proposals it returns now;
        None for one without arms."""
        return None

    @property
    def offloaded_cpu_s(self) -> float:
        """CPU seconds spent for this prefetcher outside the calling thread (a child process): CPU budgets
        charge it too."""
        return 0.0

    def close(self) -> None:  # noqa: B027 - optional: most prefetchers hold nothing to release
        """Release what the prefetcher holds beyond memory (a child process)."""


class NoPrefetcher(Prefetcher):
    """Proposes nothing: the baseline of baselines."""

    name = "none"

    def access(self, key: int) -> Predictions:
        return []
