"""The byte-budgeted memory tier: one instance per tenant, so budgets and eviction never cross tenants.

Expiry is lazy (checked on access) plus active: a min-heap of deadlines lets a periodic sweep reclaim exactly
the keys that are due, so memory held by expired keys nobody reads comes back without scanning.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from service.store.key_index import KeyIndex
from service.store.policies import EvictionPolicy, make_policy

SCAN_SNAPSHOTS = 8  # scans of one store that keep their place at once (each holds 8 bytes per key)
_SNAPSHOT_SPAN = 1 << 32  # a cursor is snapshot number x this + the place in that snapshot
SCAN_IDLE_MS = 60_000  # a snapshot unread this long is dropped (a scan that resumes later restarts)
KEY_INDEX_IDLE_MS = 600_000  # RANDOMKEY's index, undrawn this long, is dropped (the next draw builds it again)
# A snapshot keeps its keys alive after they are deleted or evicted, outside the budget. Together the snapshots
# may pin this share of the budget, the least recently read dropped first; the one a scan reads now always stays,
# and a snapshot of the whole store weighs less than the budget (each entry is charged more than its key costs
# there). So a store and its scans hold at most about twice the budget, however many scans run while keys churn.
SCAN_PINNED_SHARE = 1.0
_PINNED_PER_KEY = 48  # what a snapshot's key costs beyond its bytes: a bytes object's header, a list slot

# What CPython spends per entry beyond the key's and value's bytes: the two bytes objects' headers, the entry
# object, its size as an int, and a slot in the store's dict and in the policy's queue. Measured with tracemalloc
# on CPython 3.11 at 282 to 341 bytes (it moves with how full the dicts are between their doublings); this is
# the middle, so a budget bounds the real memory of its entries within about 10%. A key with a deadline also has
# an item in the deadline heap, about 100 bytes not charged. A test keeps this calibrated
# (tests/store/test_policies.py).
ENTRY_OVERHEAD = 312


def entry_size(key: Hashable, value: bytes) -> int:
    """Bytes charged to a tenant's budget for one entry."""
    return len(key) + len(value) + ENTRY_OVERHEAD  # type: ignore[arg-type]


def unit_size(key: Hashable, value: bytes) -> int:
    """Every entry costs 1: the replay benchmark's unit-size objects."""
    return 1


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of every deadline (snapshots survive restarts)."""
    return time.time_ns() // 1_000_000


class ValueTooLarge(Exception):
    """A single entry would not fit the tenant's whole budget."""


@dataclass(slots=True)
class Entry:
    value: bytes
    size: int
    expires_at: int = 0  # wall-clock ms; 0 means no deadline
    prefetched: bool = False  # inserted by the prefetcher and not read since
    # The eviction policy's per-key state: the entry is its record, so a read touches no other memory.
    freq: int = 0
    small: bool = False


@dataclass(slots=True)
class _Snapshot:
    """One scan's copy of the key list."""

    keys: list[Hashable]
    pinned: int  # what its keys would hold once gone from the store, in the budget's units
    used_at: int  # when a scan last read it (clock ms)


@dataclass(slots=True)
class StoreStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expired: int = 0
    prefetch_inserted: int = 0
    prefetch_used: int = 0
    prefetch_evicted_unused: int = 0


class MemoryStore:
    """Keys to values within a size budget; the policy chooses victims, this class keeps the books."""

    def __init__(
        self,
        budget: int,
        policy: str | EvictionPolicy = "s3fifo",
        sizer: Callable[[Hashable, bytes], int] = entry_size,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.budget = budget
        self.policy = make_policy(policy, budget) if isinstance(policy, str) else policy
        self._sizer = sizer
        self._clock = clock
        self._data: dict[Hashable, Entry] = {}
        self._deadlines: list[tuple[int, int, Hashable]] = []  # (deadline, tiebreak, key), stale ones skipped
        self._tiebreak = 0
        self.used = 0
        self.stats = StoreStats()
        self._inserted = 0  # keys ever added: a scan snapshot taken at this count still holds every live key
        self._scans: OrderedDict[int, _Snapshot] = OrderedDict()  # scan snapshots by number, least recently read first
        self._scan_number = 0  # the newest snapshot's
        self._scan_inserted = -1  # `_inserted` when it was taken
        self._watched: dict[Hashable, list[int]] = {}  # WATCHed key -> [watchers, changes since first watched]
        self._key_index: KeyIndex | None = None  # RANDOMKEY's, kept from its first call until KEY_INDEX_IDLE_MS idle
        self._key_index_used_at = 0
        # With a shared tier (service/shared_tier.py): the keys clients changed since the tier last heard, whether a
        # client flushed everything, and who hears of each client change (the key; None for a flush): the tier's
        # sender, and the loads in flight that the change makes stale. None: no shared tier.
        self.written: set[Hashable] | None = None
        self.flushed = False
        self.on_change: Callable[[Hashable | None], None] | None = None

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        """Resident and not expired; does not count as a read."""
        return self._live(key) is not None

    def keys(self) -> Iterable[Hashable]:
        return self._data.keys()

    def coldest_first(self) -> list[Hashable]:
        """The resident keys, the eviction policy's likeliest victims first and the hottest last."""
        return self.policy.coldest_first()

    def size_of(self, key: Hashable, value: bytes) -> int:
        """What this entry would be charged against the budget."""
        return self._sizer(key, value)

    def fits(self, key: Hashable, value: bytes) -> bool:
        """Whether `set` would accept this entry (checked first by commands that must write all or nothing)."""
        return self._sizer(key, value) <= self.budget

    def scan(self, cursor: int, count: int) -> tuple[int, list[Hashable]]:
        """Up to `count` live keys from `cursor` on, and the cursor to continue from (0 when done).

        Redis's contract: a key present from a scan's first call to its last is returned at least once, and
        the cursor is a plain number any connection may hand back. Here it names a snapshot of the key list
        and a place in it. A snapshot taken at or after a scan's first call holds every key that stays for the
        whole scan. So a scan starts on the newest snapshot while no key has been added since, and a cursor whose
        snapshot was dropped restarts on the newest one, which was taken after the dropped one's scan began (or,
        after a flush or once every snapshot went idle, on a new one): some keys come twice, which Redis allows
        too, and restarts take no new snapshot, so concurrent scans cannot keep pushing each other out.
        Snapshots are dropped when unread for SCAN_IDLE_MS, and the least recently read first when there are
        more than SCAN_SNAPSHOTS or their keys could pin more than SCAN_PINNED_SHARE of the budget once deleted
        or evicted. A new snapshot copies the key list and sums its key lengths (C speed, about 30 ms a million
        keys on the dev box); no call sorts, hashes or walks the store in Python, so a scan never stalls the
        other tenants' commands for long.
        """
        number, place = divmod(cursor, _SNAPSHOT_SPAN)
        snapshots = self._scans
        snapshot = snapshots.get(number) if cursor else None
        if snapshot is None:
            number, place = self._scan_start(number if cursor else 0), 0
            snapshot = snapshots[number]
        snapshots.move_to_end(number)
        snapshot.used_at = self._clock()
        keys = snapshot.keys
        stop = place + count
        found = [key for key in keys[place:stop] if self._live(key) is not None]
        return (number * _SNAPSHOT_SPAN + stop if stop < len(keys) else 0), found

    def _scan_start(self, lost: int) -> int:
        """The snapshot a scan starts on; `lost`: the number of the dropped snapshot it resumes from, else 0."""
        newest, snapshots = self._scan_number, self._scans
        if newest in snapshots and (self._scan_inserted == self._inserted or 0 < lost < newest):
            return newest
        number = self._scan_number = newest % (_SNAPSHOT_SPAN - 1) + 1
        self._scan_inserted = self._inserted
        keys = list(self._data)
        snapshots[number] = _Snapshot(keys, self._pinned(keys), self._clock())
        limit = self.budget * SCAN_PINNED_SHARE
        while len(snapshots) > 1 and (
                len(snapshots) > SCAN_SNAPSHOTS or sum(kept.pinned for kept in snapshots.values()) > limit):
            snapshots.popitem(last=False)
        return number

    def _pinned(self, keys: list[Hashable]) -> int:
        """What these keys would hold in a snapshot once gone from the store, in the budget's units."""
        if self._sizer is entry_size:
            return sum(map(len, keys)) + _PINNED_PER_KEY * len(keys)  # type: ignore[arg-type]
        return len(keys)  # a budget of entries (the replay benchmark's unit sizes)

    def random_key(self) -> Hashable | None:
        """A live key drawn at random, None when there is none (Redis's RANDOMKEY), in O(1).

        The first call copies the key list at C speed (on the dev box 10 ms at a million keys and 0.1 s at five
        million, what two to five calls took before); from then on a key added or removed updates it in O(1), so no
        later call walks the store, and a store that never draws keeps no list and pays nothing. Outside the budget,
        the list costs 8 bytes a key once built and, in steady eviction churn, 50 to 80 a live key: the stale slots,
        about half as many, each keep their key alive (never its value). A flush empties it; the expiry sweep
        drops it once undrawn for KEY_INDEX_IDLE_MS, and the next draw builds it again. A draw that lands on a
        stale slot drops it, and one that has expired goes (as in Redis); either way another is drawn. Each miss
        removes a slot or a key, so the reply never waits on luck, only on slots and keys already gone.
        """
        index = self._key_index
        if index is None:
            index = self._key_index = KeyIndex(list(self._data))
        self._key_index_used_at = self._clock()
        keys, gone = index.keys, index.gone
        while keys:
            place = random.randrange(len(keys))
            key = keys[place]
            if key in gone:
                index.drop(place)
            elif self._live(key) is not None:
                return key
        return None

    def keys_with_ttl(self) -> int:
        """How many resident keys have a deadline (INFO keyspace's `expires`)."""
        return sum(1 for entry in self._data.values() if entry.expires_at)

    def _live(self, key: Hashable) -> Entry | None:
        entry = self._data.get(key)
        if entry is not None and entry.expires_at and entry.expires_at <= self._clock():
            self._remove(key, entry)
            self.stats.expired += 1
            return None
        return entry

    def get(self, key: Hashable) -> bytes | None:
        """Read a value, counting a hit or a miss."""
        entry = self._live(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        if entry.prefetched:
            entry.prefetched = False
            self.stats.prefetch_used += 1
        self.policy.hit(key, entry)
        return entry.value

    def touch(self, key: Hashable) -> bool:
        """Count an access for the eviction policy without reading the value (Redis's TOUCH); False when absent."""
        entry = self._live(key)
        if entry is None:
            return False
        self.policy.hit(key, entry)
        return True

    def entry(self, key: Hashable) -> Entry | None:
        """The live entry without counting a read (for TTL, STRLEN, write-modify commands)."""
        return self._live(key)

    def set(
        self,
        key: Hashable,
        value: bytes,
        expires_at: int = 0,
        *,
        keep_ttl: bool = False,
        prefetched: bool = False,
        loaded: bool = False,
    ) -> None:
        """Insert or overwrite, then evict until the budget holds again. Raises ValueTooLarge. `loaded`: the value
        came from the origin or the shared tier, not from a client, so the shared tier need not hear of it."""
        sizer = self._sizer  # the default one inlined: this is the write hot path
        size = len(key) + len(value) + ENTRY_OVERHEAD if sizer is entry_size else sizer(key, value)  # type: ignore[arg-type]
        if size > self.budget:
            raise ValueTooLarge(f"entry of {size} bytes exceeds the tenant budget of {self.budget} bytes")
        ceiling = self.used if self.used > self.budget else self.budget  # over a shrunk budget: grow no further
        if self._watched:
            self._changed(key)
        if self.written is not None and not loaded:
            self._note_written(key)
        old = self._data.get(key)
        if old is not None and old.expires_at and old.expires_at <= self._clock():
            self._remove(key, old)
            self.stats.expired += 1
            old = None
        if old is not None:
            if keep_ttl:
                expires_at = old.expires_at
            old_size = old.size
            old.value, old.prefetched = value, False
            if size != old_size:
                self.used += size - old_size
                self.policy.resize(key, size, old)
                old.size = size
            else:
                self.policy.hit(key, old)
            entry = old
        else:
            # Make room before admitting, so the newcomer is never its own victim (an LRU prefetch enters
            # at the cold end and would otherwise be evicted the moment it arrived).
            while self._data and self.used + size > ceiling:
                self._evict_one()
            entry = Entry(value, size, 0, prefetched)
            self._data[key] = entry
            if self._key_index is not None:
                self._key_index.add(key)
            self._inserted += 1
            self.used += size
            self.policy.admit(key, size, prefetched=prefetched, record=entry)
            if prefetched:
                self.stats.prefetch_inserted += 1
        if expires_at or entry.expires_at:
            self._set_deadline(key, entry, expires_at)
        while self.used > ceiling:
            self._evict_one()

    def _set_deadline(self, key: Hashable, entry: Entry, expires_at: int) -> None:
        entry.expires_at = expires_at
        if expires_at:
            self._tiebreak += 1
            heapq.heappush(self._deadlines, (expires_at, self._tiebreak, key))

    def set_budget(self, budget: int, evict: int | None = None) -> bool:
        """Change the budget and evict down to a smaller one: at once, or at most `evict` entries now, the rest in
        later calls of `evict_over_budget` (a million entries take over a second: the service spaces the steps out
        so the event loop serves between them). True when the store is still over the budget."""
        self.budget = budget
        self.policy.set_capacity(budget)
        return self.evict_over_budget(evict)

    def evict_over_budget(self, limit: int | None = None) -> bool:
        """Evict while over the budget (after it shrank), at most `limit` entries; True when still over it. Until it
        is reached, a write takes no more room than it frees: the store never grows further over it."""
        evicted = 0
        while self.used > self.budget:
            if evicted == limit:
                return True
            self._evict_one()
            evicted += 1
        return False

    def expire_at(self, key: Hashable, expires_at: int) -> bool:
        """Set (or with 0, clear) a key's deadline; False when the key does not exist."""
        entry = self._live(key)
        if entry is None:
            return False
        if expires_at and expires_at <= self._clock():
            self.delete(key)
            return True
        if not expires_at and not entry.expires_at:
            return True  # no deadline to clear: nothing changes, and a WATCH must not see a change (as in Redis)
        if self._watched:
            self._changed(key)
        if self.written is not None:
            self._note_written(key)
        self._set_deadline(key, entry, expires_at)
        return True

    def delete(self, key: Hashable) -> bool:
        entry = self._live(key)
        if entry is None:
            return False
        if self.written is not None:
            self._note_written(key)
        self._remove(key, entry)
        return True

    def discard(self, key: Hashable) -> None:
        """Drop a key another node changed (its new value is in the shared tier); not a write of this node's."""
        entry = self._data.get(key)
        if entry is not None:
            self._remove(key, entry)

    def _note_written(self, key: Hashable) -> None:
        assert self.written is not None
        self.written.add(key)
        if self.on_change is not None:
            self.on_change(key)

    def _remove(self, key: Hashable, entry: Entry) -> None:
        if self._watched:
            self._changed(key)
        del self._data[key]
        if self._key_index is not None:
            self._key_index.remove(key, len(self._data))
        self.used -= entry.size
        self.policy.forget(key)

    def _evict_one(self) -> None:
        key = self.policy.evict()
        if self._watched:
            self._changed(key)
        entry = self._data.pop(key)
        if self._key_index is not None:
            self._key_index.remove(key, len(self._data))
        self.used -= entry.size
        self.stats.evictions += 1
        if entry.prefetched:
            self.stats.prefetch_evicted_unused += 1

    def active_expire(self, limit: int = 1000) -> int:
        """Remove up to `limit` keys whose deadline has passed; returns how many went. Scan snapshots unread for
        SCAN_IDLE_MS go too, each on its own: an abandoned scan does not keep its copy of the key list, even
        while other scans go on; so does RANDOMKEY's index undrawn for KEY_INDEX_IDLE_MS (a tenant that called it
        once does not keep 8-80 bytes a key, and their updates, for good)."""
        removed = 0
        now = self._clock()
        scans = self._scans
        while scans and now - next(iter(scans.values())).used_at > SCAN_IDLE_MS:
            scans.popitem(last=False)
        if self._key_index is not None and now - self._key_index_used_at > KEY_INDEX_IDLE_MS:
            self._key_index = None
        heap = self._deadlines
        while heap and heap[0][0] <= now and removed < limit:
            deadline, _, key = heapq.heappop(heap)
            entry = self._data.get(key)
            # Entries overwritten, persisted or re-expired since leave stale heap items behind: skip them.
            if entry is not None and entry.expires_at == deadline:
                self._remove(key, entry)
                self.stats.expired += 1
                removed += 1
        if len(heap) > 2 * len(self._data) + 64:
            self._deadlines = [item for item in heap if (e := self._data.get(item[2])) and e.expires_at == item[0]]
            heapq.heapify(self._deadlines)
        return removed

    def watch(self, key: Hashable) -> int:
        """Start watching a key for changes (Redis's WATCH); returns the change count to compare later."""
        self._live(key)  # a key already past its deadline goes now, not as a change after the watch
        counts = self._watched.setdefault(key, [0, 0])
        counts[0] += 1
        return counts[1]

    def changed_since(self, key: Hashable, count: int) -> bool:
        """Whether the watched key was written, deleted, evicted or expired after `watch` returned `count`."""
        self._live(key)  # expired by now counts as changed, as in Redis's EXEC
        counts = self._watched.get(key)
        return counts is None or counts[1] != count

    def unwatch(self, key: Hashable) -> None:
        counts = self._watched.get(key)
        if counts is not None:
            counts[0] -= 1
            if not counts[0]:
                del self._watched[key]

    def _changed(self, key: Hashable) -> None:
        counts = self._watched.get(key)
        if counts is not None:
            counts[1] += 1

    def flush(self, *, local: bool = False) -> None:
        """Remove every key. `local`: another node flushed, so the shared tier need not hear of it."""
        if self.written is not None and not local:
            self.written.clear()  # the flush covers them
            self.flushed = True
            if self.on_change is not None:
                self.on_change(None)
        for key, counts in self._watched.items():
            if key in self._data:  # as Redis: a flush changes the watched keys it removes
                counts[1] += 1
        for key in list(self._data):
            self.policy.forget(key)
        self._data.clear()
        if self._key_index is not None:  # kept, empty: a RANDOMKEY after the store refills copies nothing
            self._key_index = KeyIndex([])
        self._deadlines = []
        self._scans.clear()
        self.used = 0
