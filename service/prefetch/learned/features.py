"""Candidate generation and features for the learned prefetcher.

Per access, simple predictors propose candidates (stride, next key, Markov successors of this key and of the
previous one, the most frequent recent deltas); the network then ranks them in the context of the recent
delta history. That way the model can always fall back to what a simple prefetcher would do, and learns from
the tenant's own log when each source is right.

Everything here is plain Python and numpy (no torch), and uses only accesses already seen.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from service.prefetch.markov import DEFAULT_MAX_KEYS, Successor, SuccessorTable

HISTORY = 8  # deltas of context the sequence model sees
MAX_CANDIDATES = 8
SOURCES = ("stride", "stride_far", "next", "markov1", "markov2", "markov_prev", "delta1", "delta2")
N_SOURCES = len(SOURCES)
KEY_BUCKETS = 4096
DELTA_WINDOW = 512  # recent accesses whose deltas vote for the frequent-delta sources
# Per-candidate raw columns: source mask, Markov share, Markov transitions, age since last read (-1: never).
RAW_COLUMNS = 4
N_FEATURES = N_SOURCES + 6

# Delta tokens: 0 pads; small deltas are exact; larger ones are bucketed by sign and magnitude.
_SMALL = 16
_LARGE_BITS = 40
PAD_TOKEN = 0
N_TOKENS = 1 + (2 * _SMALL + 1) + 2 * (_LARGE_BITS - 4)


def delta_token(delta: int) -> int:
    """Vocabulary id of a key delta."""
    if -_SMALL <= delta <= _SMALL:
        return 1 + delta + _SMALL
    bits = min(abs(delta).bit_length(), _LARGE_BITS) - 5  # |delta| > 16 has at least 5 bits
    return 1 + 2 * _SMALL + 1 + (bits if delta > 0 else _LARGE_BITS - 4 + bits)


def key_bucket(key: int) -> int:
    """Hashed key id for the key embedding (Fibonacci hashing of the low 64 bits)."""
    return ((key * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> (64 - 12)


def _as_int64(values: list[int]) -> np.ndarray | None:
    """`values` as int64, or None where one does not fit (the callers then fall back to Python ints)."""
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return None


def delta_tokens(deltas: list[int]) -> np.ndarray:
    """`delta_token` of each delta, vectorised (a batch has several candidates per access)."""
    exact = _as_int64(deltas)
    if exact is None:
        return np.array([delta_token(d) for d in deltas], dtype=np.int64)
    # frexp's exponent is the bit length; float64 rounding shows only above 2**53, far past the 40-bit cap.
    bits = np.minimum(np.frexp(np.abs(exact.astype(np.float64)))[1], _LARGE_BITS) - 5
    large = 1 + 2 * _SMALL + 1 + np.where(exact > 0, bits, _LARGE_BITS - 4 + bits)
    return np.where((exact >= -_SMALL) & (exact <= _SMALL), 1 + exact + _SMALL, large).astype(np.int64)


def key_buckets(keys: list[int]) -> np.ndarray:
    """`key_bucket` of each key, vectorised: uint64 arithmetic wraps modulo 2**64 as the mask does."""
    exact = _as_int64(keys)
    if exact is None:
        return np.array([key_bucket(k) for k in keys], dtype=np.int64)
    return ((exact.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - 12)).astype(np.int64)


def _propose(found: dict[int, list[float]], cand: int, source_bit: int, share: float = 0.0, total: int = 0) -> None:
    """Add a source's candidate, or its bit to a candidate already proposed (keeping the larger Markov share)."""
    row = found.get(cand)
    if row is None:
        found[cand] = [source_bit, share, total, 0.0]
        return
    row[0] = int(row[0]) | source_bit
    if share > row[1]:
        row[1], row[2] = share, total


@dataclass(slots=True)
class Batch:
    """Model inputs for n accesses: what the network and the trainer consume."""

    context: np.ndarray  # [n, HISTORY] int64 delta tokens, oldest first
    key_bucket: np.ndarray  # [n] int64
    stride_run: np.ndarray  # [n] float32
    cand_keys: list[list[int]]  # per access, the candidate keys in slot order
    cand_token: np.ndarray  # [n, MAX_CANDIDATES] int64 (PAD_TOKEN in empty slots)
    cand_raw: np.ndarray  # [n, MAX_CANDIDATES, RAW_COLUMNS] float64
    successors: list[list[Successor]]  # per access, the key's Markov successors: the Markov arm proposes them

    def __len__(self) -> int:
        return len(self.cand_keys)


class CandidateBuilder:
    """Keeps the simple predictors' state and turns each access into a ranked-candidate problem."""

    def __init__(self, distance: int, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.distance = distance
        self.successors = SuccessorTable(distance, max_keys=max_keys)
        self.successors_prev = SuccessorTable(distance + 1, max_keys=max_keys)
        self.max_keys = max_keys
        self.count = 0  # accesses seen
        self._last_seen: dict[int, int] = {}
        self._recent: deque[int] = deque(maxlen=max(HISTORY + 1, distance + 1))
        self._deltas: deque[int] = deque([PAD_TOKEN] * HISTORY, maxlen=HISTORY)
        self._stride = 0
        self._run = 0
        self._vote_window: deque[int] = deque()
        self._votes: Counter[int] = Counter()
        self._top_deltas: list[int] = []

    def _note_far_delta(self, key: int) -> None:
        """Vote for the delta between this key and the one `distance` accesses back."""
        recent = self._recent
        if len(recent) < self.distance:
            return
        delta = key - recent[-self.distance]
        self._vote_window.append(delta)
        self._votes[delta] += 1
        if len(self._vote_window) > DELTA_WINDOW:
            old = self._vote_window.popleft()
            self._votes[old] -= 1
            if not self._votes[old]:
                del self._votes[old]
        if self.count % 64 == 0:
            self._top_deltas = [d for d, _ in self._votes.most_common(2) if d != 0]

    def observe(self, key: int) -> tuple[list[int], list[list[float]], int, list[Successor]]:
        """Record one access; returns (candidate keys, raw columns per candidate, stride run, the key's Markov
        successors). Runs once per read the model sees, so it keeps attributes in locals and rows plain."""
        recent = self._recent
        prev = recent[-1] if recent else None
        run = self._run
        if prev is not None:
            delta = key - prev
            self._deltas.append(delta_token(delta))
            if delta == self._stride and delta != 0:
                run += 1
            else:
                self._stride, run = delta, 0
            self._run = run
        self._note_far_delta(key)
        recent.append(key)
        self.successors.record(key)
        self.successors_prev.record(key)
        self.count += 1
        last_seen = self._last_seen
        if len(last_seen) >= self.max_keys:
            for old in list(last_seen)[: self.max_keys // 2]:
                del last_seen[old]
        last_seen[key] = self.count

        d = self.distance
        found: dict[int, list[float]] = {}  # candidate -> [source mask, markov share, markov total, age]
        if run >= 1:
            _propose(found, key + self._stride * d, 1 << 0)
            _propose(found, key + self._stride * (d + 1), 1 << 1)
        _propose(found, key + d, 1 << 2)
        successors = self.successors.successors(key)
        for slot, (succ, share, total) in enumerate(successors[:2]):
            _propose(found, succ, 1 << (3 + slot), share, total)
        if prev is not None:
            for succ, share, total in self.successors_prev.successors(prev)[:1]:
                _propose(found, succ, 1 << 5, share, total)
        for slot, delta in enumerate(self._top_deltas):
            _propose(found, key + delta, 1 << (6 + slot))
        found.pop(key, None)
        keys = list(found)[:MAX_CANDIDATES]
        rows = []
        count = self.count
        for cand in keys:
            row = found[cand]
            seen = last_seen.get(cand)
            row[3] = -1.0 if seen is None else float(count - seen)
            rows.append(row)
        return keys, rows, min(run, 8), successors

    def context(self) -> list[int]:
        return list(self._deltas)

    def build(self, keys: list[int]) -> Batch:
        """Observe `keys` in order and return the model inputs after each access."""
        n = len(keys)
        cand_keys: list[list[int]] = []
        successors: list[list[Successor]] = []
        ctx_rows: list[list[int]] = []
        runs: list[int] = []
        flat_rows: list[list[float]] = []
        flat_deltas: list[int] = []
        counts: list[int] = []
        observe, deltas = self.observe, self._deltas
        for key in keys:
            cands, rows, run, succ = observe(key)
            cand_keys.append(cands)
            successors.append(succ)
            ctx_rows.append(list(deltas))
            runs.append(run)
            counts.append(len(cands))
            flat_rows += rows
            flat_deltas += [cand - key for cand in cands]
        cand_token = np.zeros((n, MAX_CANDIDATES), dtype=np.int64)
        cand_raw = np.zeros((n, MAX_CANDIDATES, RAW_COLUMNS), dtype=np.float64)
        if flat_rows:
            per_access = np.asarray(counts)
            rows_at = np.repeat(np.arange(n), per_access)
            slots_at = np.arange(len(flat_rows)) - np.repeat(np.cumsum(per_access) - per_access, per_access)
            cand_raw[rows_at, slots_at] = np.asarray(flat_rows, dtype=np.float64)
            cand_token[rows_at, slots_at] = delta_tokens(flat_deltas)
        return Batch(
            np.asarray(ctx_rows, dtype=np.int64).reshape(n, HISTORY),
            key_buckets(keys),
            np.asarray(runs, dtype=np.float32),
            cand_keys,
            cand_token,
            cand_raw,
            successors,
        )


def candidate_features(cand_raw: np.ndarray, source_accuracy: np.ndarray, stride_run: np.ndarray) -> np.ndarray:
    """Raw columns -> float32 features [n, C, N_FEATURES]; vectorised so batches stay cheap."""
    mask = cand_raw[..., 0].astype(np.int64)
    bits = ((mask[..., None] >> np.arange(N_SOURCES)) & 1).astype(np.float32)
    share = cand_raw[..., 1:2].astype(np.float32)
    total = np.minimum(np.log1p(cand_raw[..., 2:3]) / 4.0, 1.5).astype(np.float32)
    age = cand_raw[..., 3:4]
    seen = (age >= 0).astype(np.float32)
    recency = np.where(age >= 0, 1.0 / (1.0 + np.log2(1.0 + np.maximum(age, 0.0))), 0.0).astype(np.float32)
    best_source = (bits * source_accuracy.astype(np.float32)).max(axis=-1, keepdims=True)
    run = np.broadcast_to((stride_run / 8.0)[:, None, None], share.shape).astype(np.float32) * bits[..., :1]
    return np.concatenate([bits, share, total, seen, recency, best_source, run], axis=-1)
