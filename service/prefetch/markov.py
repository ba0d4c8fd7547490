"""Markov successor table: after key A, which keys were read `distance` accesses later, and how often.

With lead 0 this is the classic first-order successor table; with a lead it remembers the key read
`lead + 1` accesses after A, which is the one a prefetch issued at A can still catch. Each key keeps a few
successors with counts (the weakest is replaced); the table keeps at most `max_keys` keys, dropping the
oldest inserted half when full, so memory stays bounded on traces with millions of keys.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from operator import itemgetter

from service.prefetch.base import Prediction, Predictions, Prefetcher

Successor = tuple[int, float, int]  # (successor, share of the key's transitions, total transitions)
DEFAULT_MAX_KEYS = 1 << 20  # keys a table remembers; the replays' setting, FORESIGHT_PREFETCH_MAX_KEYS's default
MIN_MAX_KEYS = 1024  # the least a deployment or a tenant may set: below it a table forgets within a few reads
_BY_COUNT = itemgetter(1)


class SuccessorTable:
    """key -> its successors with counts, bounded in keys and successors per key.

    A key followed once by one successor, most keys on a large key space, maps to that successor itself; a key
    with several maps to a flat list [successor, count, successor, count, ...] in the order they were first
    seen. A dict per key cost 224 bytes whatever it held, the list 88 for two successors and 120 for four: on the
    ARC traces' keys, which recur with several successors, the tables were most of a tenant's prefetcher memory
    (`foresight bench prefetch-memory --trace`).
    """

    def __init__(self, distance: int, max_keys: int = DEFAULT_MAX_KEYS, ways: int = 4) -> None:
        self.distance = distance
        self.max_keys = max_keys
        self.ways = ways
        self._table: dict[int, int | list[int]] = {}
        self._recent: deque[int] = deque(maxlen=distance)

    def __len__(self) -> int:
        """Keys remembered (each with its successors)."""
        return len(self._table)

    def record(self, key: int) -> None:
        """Note that `key` was read `distance` accesses after the key that left the window."""
        recent = self._recent
        if len(recent) == self.distance:
            self._add(recent[0], key)
        recent.append(key)

    def _add(self, prev: int, key: int) -> None:
        succ = self._table.get(prev)
        if succ is None:
            if len(self._table) >= self.max_keys:
                for old in list(self._table)[: self.max_keys // 2]:
                    del self._table[old]
            self._table[prev] = key  # [key, 1]
            return
        if not isinstance(succ, list):
            succ = self._table[prev] = [succ, 1]
        if succ[0] == key:  # the usual case, without building the slice
            succ[1] += 1
            return
        keys = succ[0::2]
        if key in keys:
            succ[2 * keys.index(key) + 1] += 1
        elif len(keys) < self.ways:
            succ += (key, 1)
        else:
            # Replace the weakest successor (the first seen of equals) and age the rest, so a changed pattern
            # takes over.
            counts = succ[1::2]
            weakest = 2 * counts.index(min(counts))
            del succ[weakest : weakest + 2]
            succ[1::2] = [max(1, count // 2) for count in succ[1::2]]
            succ += (key, 1)

    def successors(self, key: int) -> list[Successor]:
        """(successor, share of the key's transitions, total transitions), most frequent first (ties: the
        earlier seen). Every learned read asks this twice, so the common single successor skips the sort."""
        succ = self._table.get(key)
        if succ is None:
            return []
        if not isinstance(succ, list):
            return [(succ, 1.0, 1)]
        if len(succ) == 2:
            return [(succ[0], 1.0, succ[1])]
        if len(succ) == 4:  # two successors, the next most common case: no sort
            first, first_count, second, second_count = succ
            total = first_count + second_count
            if second_count > first_count:
                first, first_count, second, second_count = second, second_count, first, first_count
            return [(first, first_count / total, total), (second, second_count / total, total)]
        counts = succ[1::2]
        total = sum(counts)
        pairs = sorted(zip(succ[0::2], counts, strict=True), key=_BY_COUNT, reverse=True)
        return [(s, count / total, total) for s, count in pairs]


def markov_predictions(successors: Sequence[Successor], limit: int) -> Predictions:
    """The Markov prefetcher's proposals from a key's successors. Share times total/(total+1): a successor
    seen once is a coin flip, not a certainty."""
    return [Prediction(s, share * total / (total + 1)) for s, share, total in successors[:limit]]


class MarkovPrefetcher(Prefetcher):
    name = "markov"

    def __init__(self, lead: int = 0, max_candidates: int = 2, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        super().__init__(lead, max_candidates)
        self.table = SuccessorTable(self.distance, max_keys=max_keys)

    def access(self, key: int) -> Predictions:
        self.table.record(key)
        return markov_predictions(self.table.successors(key), self.max_candidates)
