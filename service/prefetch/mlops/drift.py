"""Drift detection: prediction accuracy over a recent window falling well below its long-run level."""

from __future__ import annotations

from collections import deque


class DriftDetector:
    """Feed outcomes (1 = prediction used, 0 = not); `update` returns True once when drift sets in.

    The reference is a slow moving average of accuracy, started from the first full window; drift is the mean of
    the last `window` outcomes falling below `(1 - drop)` of it. After a detection the window is emptied and the
    next full window sets the reference anew: a retrained model is judged against what it faces now, not against
    the past it no longer fits, and one drop fires once, not at every 30 % step of the window's slide down to the
    new level (each firing queues more retraining).
    """

    def __init__(self, window: int = 2048, drop: float = 0.3, reference_weight: float = 1e-4) -> None:
        if window < 1 or not 0 < drop < 1:
            raise ValueError("drift detector needs window >= 1 and 0 < drop < 1")
        self.window = window
        self.drop = drop
        self.reference_weight = reference_weight
        self.reference: float | None = None
        self._recent: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self.detections = 0

    @property
    def recent(self) -> float:
        return self._sum / len(self._recent) if self._recent else 0.0

    def update(self, outcome: float) -> bool:
        if len(self._recent) == self.window:
            self._sum -= self._recent[0]
        self._recent.append(outcome)
        self._sum += outcome
        if len(self._recent) < self.window:
            return False
        if self.reference is None:
            self.reference = self.recent
            return False
        self.reference += self.reference_weight * (outcome - self.reference)
        if self.recent < (1.0 - self.drop) * self.reference:
            self.detections += 1
            self.reference = None
            self._recent.clear()
            self._sum = 0.0
            return True
        return False
