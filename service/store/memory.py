"""The byte-budgeted memory tier: one instance per tenant, so budgets and eviction never cross tenants.

Expiry is lazy (checked on access) plus active: a min-heap of deadlines lets a periodic sweep reclaim exactly
the keys that are due, so memory held by expired keys nobody reads comes back without scanning.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from service.store.policies import EvictionPolicy, make_policy

SCAN_SNAPSHOTS = 8  # scans of one store that keep their place at once (each holds 8 bytes per key)
_SNAPSHOT_SPAN = 1 << 32  # a cursor is snapshot number x this + the place in that snapshot
SCAN_IDLE_MS = 60_000  # snapshots unread this long are dropped (a scan that resumes later restarts)

# Dict slot, entry object and bookkeeping per key, roughly what CPython spends beyond key and value bytes.
ENTRY_OVERHEAD = 96


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
        self._scans: OrderedDict[int, list[Hashable]] = OrderedDict()  # scan snapshots by number, oldest first
        self._scan_number = 0  # the newest snapshot's
        self._scan_inserted = -1  # `_inserted` when it was taken
        self._scan_used_at = 0  # when a scan last read a snapshot (clock ms)
        self._watched: dict[Hashable, list[int]] = {}  # WATCHed key -> [watchers, changes since first watched]
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

    def fits(self, key: Hashable, value: bytes) -> bool:
        """Whether `set` would accept this entry (checked first by commands that must write all or nothing)."""
        return self._sizer(key, value) <= self.budget

    def scan(self, cursor: int, count: int) -> tuple[int, list[Hashable]]:
        """Up to `count` live keys from `cursor` on, and the cursor to continue from (0 when done).

        Redis's contract: a key present from a scan's first call to its last is returned at least once, and
        the cursor is a plain number any connection may hand back. Here it names a snapshot of the key list
        and a place in it. Any snapshot taken at or after a scan's first call holds every key that stays for
        the whole scan, so a scan starts on the newest one while no key has been added since, and a cursor
        whose snapshot was dropped (a flush, or more scans in progress at once than SCAN_SNAPSHOTS) restarts
        on such a one: some keys come twice, which Redis allows too, and a scan among more concurrent ones than
        that, with writes between its calls, may restart until fewer remain. A new snapshot copies the key list
        (C speed, about 13 ms a million keys on the dev box); no call sorts, hashes or walks the store in
        Python, so a scan never stalls the other tenants' commands for long.
        """
        number, place = divmod(cursor, _SNAPSHOT_SPAN)
        snapshots = self._scans
        keys = snapshots.get(number) if cursor else None
        if keys is None:
            place = 0
            number = self._scan_number
            keys = snapshots.get(number) if self._scan_inserted == self._inserted else None
            if keys is None:
                number = self._scan_number = self._scan_number % (_SNAPSHOT_SPAN - 1) + 1
                self._scan_inserted = self._inserted
                keys = snapshots[number] = list(self._data)
                while len(snapshots) > SCAN_SNAPSHOTS:
                    snapshots.popitem(last=False)
        snapshots.move_to_end(number)
        self._scan_used_at = self._clock()
        stop = place + count
        found = [key for key in keys[place:stop] if self._live(key) is not None]
        return (number * _SNAPSHOT_SPAN + stop if stop < len(keys) else 0), found

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
            while self._data and self.used + size > self.budget:
                self._evict_one()
            entry = Entry(value, size, 0, prefetched)
            self._data[key] = entry
            self._inserted += 1
            self.used += size
            self.policy.admit(key, size, prefetched=prefetched, record=entry)
            if prefetched:
                self.stats.prefetch_inserted += 1
        if expires_at or entry.expires_at:
            self._set_deadline(key, entry, expires_at)
        while self.used > self.budget:
            self._evict_one()

    def _set_deadline(self, key: Hashable, entry: Entry, expires_at: int) -> None:
        entry.expires_at = expires_at
        if expires_at:
            self._tiebreak += 1
            heapq.heappush(self._deadlines, (expires_at, self._tiebreak, key))

    def set_budget(self, budget: int) -> None:
        """Change the budget, evicting down to a smaller one at once."""
        self.budget = budget
        self.policy.set_capacity(budget)
        while self.used > budget:
            self._evict_one()

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
        self.used -= entry.size
        self.policy.forget(key)

    def _evict_one(self) -> None:
        key = self.policy.evict()
        if self._watched:
            self._changed(key)
        entry = self._data.pop(key)
        self.used -= entry.size
        self.stats.evictions += 1
        if entry.prefetched:
            self.stats.prefetch_evicted_unused += 1

    def active_expire(self, limit: int = 1000) -> int:
        """Remove up to `limit` keys whose deadline has passed; returns how many went. Scan snapshots no scan
        has read for SCAN_IDLE_MS go too: an abandoned scan does not keep its copy of the key list."""
        removed = 0
        now = self._clock()
        if self._scans and now - self._scan_used_at > SCAN_IDLE_MS:
            self._scans.clear()
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
        self._deadlines = []
        self._scans.clear()
        self.used = 0
