"""Next-key and stride prefetching for keys with a numeric part (block numbers, `user:1234`).

Two rules, each with its own running accuracy as its confidence: a stride seen at least twice in a row
predicts `key + stride * distance`; otherwise the next key (`key + distance`) is proposed. Confidences are
measured online (was the rule's guess the key actually read `distance` accesses later?), so on a workload
with no sequential structure the next-key guess falls below the coordinator's threshold by itself.
"""

from __future__ import annotations

from collections import deque

from service.prefetch.base import Prediction, Predictions, Prefetcher

_EMA = 0.02  # weight of one outcome in a rule's running accuracy (about the last 50 guesses)


class StridePrefetcher(Prefetcher):
    name = "stride"

    def __init__(self, lead: int = 0, max_candidates: int = 2) -> None:
        super().__init__(lead, max_candidates)
        self._last: int | None = None
        self._stride = 0
        self._run = 0  # how many times in a row the current stride repeated
        self.accuracy = {"stride": 0.5, "next": 0.5}
        # (rule, predicted key) made `distance` accesses ago, oldest first
        self._pending: deque[tuple[str, int] | None] = deque()

    def _score(self, key: int) -> None:
        if len(self._pending) < self.distance:
            return
        made = self._pending.popleft()
        if made is not None:
            rule, guess = made
            self.accuracy[rule] += _EMA * ((guess == key) - self.accuracy[rule])

    def access(self, key: int) -> Predictions:
        self._score(key)
        if self._last is not None:
            delta = key - self._last
            if delta == self._stride and delta != 0:
                self._run += 1
            else:
                self._stride, self._run = delta, 0
        self._last = key
        out: Predictions
        if self._run >= 1:
            conf = self.accuracy["stride"]
            step = self._stride
            out = [Prediction(key + step * (self.distance + i), conf) for i in range(self.max_candidates)]
            self._pending.append(("stride", out[0].key))
        else:
            conf = self.accuracy["next"]
            out = [Prediction(key + self.distance + i, conf) for i in range(self.max_candidates)]
            self._pending.append(("next", out[0].key))
        return out
