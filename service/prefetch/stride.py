"""Next-key and stride prefetching for keys with a numeric part (block numbers, `user:1234`).

Two rules, each with its own measured accuracy as its confidence: a stride seen at least twice in a row
predicts `key + stride * distance`; otherwise the next key (`key + distance`) is proposed. A rule's accuracy
is the running share of its guesses that were read within `USEFUL_WINDOW` accesses of landing, so on a
workload without sequential structure the next-key guess falls below the coordinator's threshold by itself.
"""

from __future__ import annotations

from collections import deque

from service.prefetch.base import USEFUL_WINDOW, Prediction, Predictions, Prefetcher

_EMA = 0.02  # weight of one outcome in a rule's running accuracy (about the last 50 guesses)


class StridePrefetcher(Prefetcher):
    name = "stride"
    aimable = True

    def __init__(self, lead: int = 0, max_candidates: int = 2, window: int = USEFUL_WINDOW) -> None:
        super().__init__(lead, max_candidates)
        self.window = window
        self._last: int | None = None
        self._stride = 0
        self._run = 0  # how many times in a row the current stride repeated
        self.accuracy = {"stride": 0.5, "next": 0.5}
        self._guesses: deque[tuple[str, int]] = deque()  # (rule, first guess) per access, oldest first
        self._recent: deque[int] = deque()  # the last `window` keys
        self._recent_count: dict[int, int] = {}

    def _score(self, key: int) -> None:
        """Remember the key, then settle the guess whose useful window just closed."""
        recent, counts = self._recent, self._recent_count
        recent.append(key)
        counts[key] = counts.get(key, 0) + 1
        if len(recent) > self.window:
            old = recent.popleft()
            if counts[old] == 1:
                del counts[old]
            else:
                counts[old] -= 1
        while len(self._guesses) >= self.distance + self.window - 1:  # more than one after the aim came closer
            rule, guess = self._guesses.popleft()
            self.accuracy[rule] += _EMA * ((guess in counts) - self.accuracy[rule])

    def access(self, key: int) -> Predictions:
        self._score(key)
        if self._last is not None:
            delta = key - self._last
            if delta == self._stride and delta != 0:
                self._run += 1
            else:
                self._stride, self._run = delta, 0
        self._last = key
        rule, step = ("stride", self._stride) if self._run >= 1 else ("next", 1)
        conf = self.accuracy[rule]
        out = [Prediction(key + step * (self.distance + i), conf) for i in range(self.max_candidates)]
        self._guesses.append((rule, out[0].key))
        return out
