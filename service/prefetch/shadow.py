"""Shadow caches: key-only copies of a tenant's cache, one per candidate prefetcher ("arm"), so the real cache
is fed by the arm whose copy missed least lately.

Prediction accuracy is not what a tenant pays for. A prefetcher that is right more often can still lose if
its mistakes push the working set out, and which arm wins depends on the cache's size and policy. A shadow
runs the same store, policy and coordinator as the real cache (unit-size entries, the real capacity in
entries), sees every request and only its own arm's proposals, and counts its misses. Like the ghost lists of
ARC and LIRS, it judges decisions by what they would have done to requests already served, so choosing never
uses the future. An arm that never prefetches is always one of them: the selector's cache is not meant to do
worse than no prefetching either.

`CacheSimulation` is also the replay benchmark's loop body, so a selector that keeps one arm throughout gives
exactly that arm's benchmark result.

Cost: one key-only cache per arm (`KeyOnlyStore`: the store's eviction policy without its byte, expiry and
statistics books, which were half a shadow's time). Shadows of caches above `SelectorConfig.max_entries` are
set-sampled (SHARDS-style: only keys whose hash falls in 1/rate of the hash space, capacity / rate), which
bounds their memory and most of their CPU.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from service.prefetch.base import DEFAULT_THRESHOLD, USEFUL_WINDOW, Prediction, Predictions
from service.prefetch.coordinator import PrefetchBudget, PrefetchCoordinator
from service.store.memory import MemoryStore, unit_size
from service.store.policies import make_policy

_ABSENT = object()  # a KeyOnlyStore lookup's miss (a handle may be None)

NO_PREFETCH = "none"
ArmProposals = Mapping[str, list[Predictions]]  # arm -> one proposal list per access


@dataclass(frozen=True, slots=True)
class CacheModel:
    """The real cache, as much as a simulation of it needs: capacity in entries, policy, prefetch rules."""

    capacity: int
    policy: str = "s3fifo"
    lead: int = 0
    per_request: int = 1
    threshold: float = DEFAULT_THRESHOLD
    max_in_flight: int = 64
    # Whether a key may be prefetched after request i (None: any key). The replay benchmark's leak guard
    # (`service/bench/replay.py`): it is part of the model so that the shadows judge an arm by the prefetches the
    # real cache would take from it, not by ones it would drop.
    prefetchable: Callable[[Hashable, int], bool] | None = None

    @property
    def budget(self) -> PrefetchBudget:
        return PrefetchBudget(self.threshold, self.per_request, self.max_in_flight)

    @property
    def horizon(self) -> int:
        """Requests after issue within which a read settles a prefetch as used (bookkeeping only)."""
        return self.lead + 1 + 2 * USEFUL_WINDOW


def in_sample(key: Hashable, rate: int) -> bool:
    """Whether a key belongs to a 1/rate spatial sample (rate a power of two): Fibonacci hashing of hash(key)."""
    return rate == 1 or ((hash(key) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> (64 - rate.bit_length() + 1) == 0


class KeyOnlyStore:
    """What a shadow needs of a unit-size `MemoryStore`: which keys are resident (with the policy's handle for
    each). The same eviction policy class chooses the victims, so it hits and misses exactly as the store
    would (a test replays both)."""

    def __init__(self, capacity: int, policy: str) -> None:
        self.capacity = capacity
        self.policy = make_policy(policy, capacity)
        self._keys: dict[Hashable, Any] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key: Hashable) -> bytes | None:
        """b"" for a resident key (a hit the policy sees), None otherwise."""
        handle = self._keys.get(key, _ABSENT)
        if handle is _ABSENT:
            return None
        self.policy.hit(key, handle)
        return b""

    def set(self, key: Hashable, value: bytes, *, prefetched: bool = False) -> None:
        """Insert a key, evicting first while full (an insert of a resident key counts as a hit, as in the
        store)."""
        keys, policy = self._keys, self.policy
        handle = keys.get(key, _ABSENT)
        if handle is not _ABSENT:
            policy.hit(key, handle)
            return
        while keys and len(keys) >= self.capacity:
            del keys[policy.evict()]
        keys[key] = policy.admit(key, 1, prefetched=prefetched)

    def read(self, key: Hashable) -> bool:
        """A demand read: `get`, then `set` on a miss, in one call (a shadow does this for every request)."""
        handle = self._keys.get(key, _ABSENT)
        if handle is not _ABSENT:
            self.policy.hit(key, handle)
            return True
        self.set(key, b"")
        return False


Store = MemoryStore | KeyOnlyStore


class SimulatedCache:
    """A `PrefetchTarget` over a store (or a shadow's key set) whose prefetches land `lead` requests after they
    are issued.

    With `sample_rate` > 1 it stands for a set-sampled cache: prefetches of keys outside the sample complete
    at once without being stored (they still use up the request's budget, as the real ones would).
    """

    def __init__(self, store: Store, lead: int, sample_rate: int = 1) -> None:
        self.store = store
        self.lead = lead
        self.sample_rate = sample_rate
        self.now = 0
        self._arrivals: deque[tuple[int, Hashable]] = deque()
        self._in_flight: set[Hashable] = set()
        self.on_landed: Callable[[Hashable], None] = lambda key: None

    def is_resident(self, key: Any) -> bool:
        return key in self.store

    def in_flight(self, key: Any) -> bool:
        return key in self._in_flight

    def prefetch(self, key: Any) -> None:
        if self.sample_rate > 1 and not in_sample(key, self.sample_rate):
            self.on_landed(key)
            return
        self._in_flight.add(key)
        self._arrivals.append((self.now + self.lead + 1, key))

    def land_due(self) -> None:
        """Insert every prefetch due before the current request."""
        arrivals, store = self._arrivals, self.store
        while arrivals and arrivals[0][0] <= self.now:
            _, key = arrivals.popleft()
            self._in_flight.discard(key)
            self.on_landed(key)
            if key not in store:
                store.set(key, b"", prefetched=True)

    def read(self, key: Hashable) -> bool:
        """A demand read: a hit, or a miss that fetches the key and inserts it."""
        store = self.store
        if isinstance(store, KeyOnlyStore):
            return store.read(key)
        if store.get(key) is not None:
            return True
        store.set(key, b"")
        return False


class CacheSimulation:
    """A unit-size cache and its prefetch coordinator, driven one request at a time. The replay's cache is a
    `MemoryStore`, the service's own; a shadow needs only its keys (`key_only`)."""

    def __init__(self, model: CacheModel, sample_rate: int = 1, key_only: bool = False) -> None:
        capacity = max(1, model.capacity // sample_rate)
        store: Store = (
            KeyOnlyStore(capacity, model.policy) if key_only else MemoryStore(capacity, model.policy, sizer=unit_size)
        )
        self.cache = SimulatedCache(store, model.lead, sample_rate)
        # A shadow is judged by its misses alone: its coordinator keeps no used/wasted books (horizon 0).
        self.coordinator = PrefetchCoordinator(self.cache, model.budget, horizon=0 if key_only else model.horizon)
        self.cache.on_landed = self.coordinator.completed
        self.requests = 0
        self._prefetchable = model.prefetchable
        self.dropped = 0  # proposals `prefetchable` refused that the coordinator would have considered

    @property
    def store(self) -> Store:
        return self.cache.store

    def request(self, key: Hashable, proposals: Predictions) -> bool:
        """Serve one read (landing due prefetches first), then consider the proposals made after it."""
        cache = self.cache
        cache.now = self.requests
        self.requests += 1
        cache.land_due()
        hit = cache.read(key)
        self.coordinator.on_access(key, hit)
        if proposals:
            self._consider(proposals)
        return hit

    def skip(self, proposals: Predictions) -> None:
        """A request for a key outside the sample: time passes and proposals are considered, nothing is read."""
        self.cache.now = self.requests
        self.requests += 1
        if proposals:
            self._consider(proposals)

    def _consider(self, proposals: Predictions) -> None:
        prefetchable = self._prefetchable
        if prefetchable is None:
            self.coordinator.consider(proposals)
        else:
            self.coordinator.consider(self._allowed(proposals, prefetchable, self.requests - 1))

    def _allowed(self, proposals: Predictions, prefetchable: Callable[[Hashable, int], bool],
                 now: int) -> Iterator[Prediction]:
        """The proposals `prefetchable` allows after request `now`, lazily: a refused one is counted only if the
        coordinator gets that far (within the budget) and it is at or above the threshold."""
        threshold = self.coordinator.budget.threshold
        for proposal in proposals:
            if prefetchable(proposal.key, now):
                yield proposal
            elif proposal.confidence >= threshold:
                self.dropped += 1


@dataclass(frozen=True, slots=True)
class SelectorConfig:
    """Chosen on synthetic phase workloads (`tests/prefetch/workloads.py`), never on the benchmark traces."""

    half_life: int = 1024  # requests over which a shadow's misses lose half their weight
    # A challenger takes over when its decayed misses are below the serving arm's by more than
    # max(margin, relative_margin * serving arm's decayed misses), on `persist` consecutive requests.
    margin: float = 1.0  # the floor, in decayed misses
    relative_margin: float = 0.0  # the share of the serving arm's decayed misses
    persist: int = 1  # requests in a row the same challenger must lead by the margin
    max_entries: int = 1 << 16  # shadows of larger caches are set-sampled down to about this many entries


class ShadowSelector:
    """Routes each request's proposals from the arm whose shadow cache missed least, with hysteresis.

    Arms earlier in `arms` win ties; `none` (no prefetching) is always an arm, the last one.
    """

    def __init__(self, arms: Sequence[str], model: CacheModel, config: SelectorConfig | None = None) -> None:
        self.config = config = config or SelectorConfig()
        self.arms = (*(a for a in arms if a != NO_PREFETCH), NO_PREFETCH)
        self.sample_rate = 1 << max(0, math.ceil(math.log2(max(1, model.capacity) / config.max_entries)))
        self._shadows = [CacheSimulation(model, self.sample_rate, key_only=True) for _ in self.arms]
        self.misses = [0.0] * len(self.arms)  # decayed miss counts, one per arm
        # A sampled shadow sees about one request in `sample_rate`: decay and margin per request seen.
        self._decay = 0.5 ** (self.sample_rate / config.half_life)
        self._margin = config.margin / self.sample_rate
        self._relative = config.relative_margin
        self._persist = config.persist
        self._serving = 0
        self._challenger = 0  # the arm leading the serving one by the margin, and for how many requests
        self._streak = 0
        self.switches = 0
        self.served = dict.fromkeys(self.arms, 0)  # requests whose proposals came from each arm

    @property
    def serving(self) -> str:
        return self.arms[self._serving]

    def select_batch(self, keys: Sequence[int], answers: ArmProposals) -> list[Predictions]:
        """For each request in order: update every shadow with it, then return the serving arm's proposals."""
        empty: list[Predictions] = [[] for _ in keys]
        columns = [answers.get(arm, empty) if arm != NO_PREFETCH else empty for arm in self.arms]
        shadows, misses, decay, rate = self._shadows, self.misses, self._decay, self.sample_rate
        arm_range = range(len(self.arms))
        out: list[Predictions] = []
        for i, key in enumerate(keys):
            if rate == 1 or in_sample(key, rate):
                for a in arm_range:
                    misses[a] = misses[a] * decay + (not shadows[a].request(key, columns[a][i]))
                self._reconsider()
            else:
                for a in arm_range:
                    shadows[a].skip(columns[a][i])
            self.served[self.arms[self._serving]] += 1
            out.append(columns[self._serving][i])
        return out

    def _reconsider(self) -> None:
        misses, serving = self.misses, self._serving
        best = min(range(len(misses)), key=misses.__getitem__)  # the first of equals
        margin = max(self._margin, self._relative * misses[serving])
        if best == serving or misses[serving] - misses[best] <= margin:
            self._streak = 0
            return
        self._streak = self._streak + 1 if best == self._challenger else 1
        self._challenger = best
        if self._streak >= self._persist:
            self._serving = best
            self._streak = 0
            self.switches += 1


@runtime_checkable
class CacheAwarePrefetcher(Protocol):
    """A prefetcher whose arms' proposals do not depend on the cache, and whose choice among them does."""

    arms: tuple[str, ...]

    def propose_arms(self, keys: Sequence[int]) -> ArmProposals:
        """Record the accesses; every arm's proposals for each of them."""

    def selector_for(self, model: CacheModel) -> ShadowSelector:
        """A fresh selector among this prefetcher's arms, with shadows of the given cache."""

    def attach_cache(self, model: CacheModel | None) -> None:
        """Choose among arms with shadows of this cache from now on (None: without shadows)."""
