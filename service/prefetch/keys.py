"""Maps the service's byte keys to the integer keys prefetchers work on, and back.

A key that ends in digits (`user:00123`, `block/77`) keeps its number in the low bits, so stride and delta
predictors see `user:00124` as the next key; its prefix (and zero-padding width) gets a small id in the high
bits. Other keys get ids from a bounded table: Markov successors and the learned model still work on them,
strides simply never match.

The codec lives in the server process, one per tenant engine, so it is bounded in entries and in bytes: prefixes
and opaque keys are each forgotten least recently encoded first (opaque keys before prefixes when the bytes run
out), and an id of a forgotten one decodes to nothing. An id goes to another key only after 2^40 opaque keys or
2^20 prefixes, and never while its own is remembered. Ids are given in first-seen order, so a codec that never
forgets gives the ids it gave before it was bounded.
"""

from __future__ import annotations

import re
from collections import OrderedDict

NUMBER_BITS = 40
_NUMBER_LIMIT = 1 << NUMBER_BITS
_SLOT_LIMIT = 1 << 20  # prefix ids wrap here: an id stays below 2^61, an int64 for any prefetcher's arrays
TRAILING_DIGITS = re.compile(rb"(.*?)(\d{1,12})", re.DOTALL)

MAX_PREFIXES = 4096
MAX_OPAQUE = 1 << 18
# What a tenant's codec may hold (a caller may scale it to the tenant's budget): 2^18 opaque keys of up to 32
# bytes fit, of 1 KB about 54,000 (unbounded in bytes, 2^18 of them took 312 MB).
MAX_BYTES = 64 << 20
# Bytes an entry costs besides its key's: the bytes object's header and the two tables' slots (tracemalloc: 258
# bytes per 40-byte opaque key, 1,242 per 1 KB one).
ENTRY_OVERHEAD = 224

Prefix = tuple[bytes, int]  # the bytes before the digits, and the digits' zero-padded width (0: not padded)


class KeyCodec:
    """bytes <-> int, bounded in the prefixes and opaque keys it remembers and in the bytes they take."""

    def __init__(self, max_prefixes: int = MAX_PREFIXES, max_opaque: int = MAX_OPAQUE,
                 max_bytes: int = MAX_BYTES) -> None:
        if min(max_prefixes, max_opaque, max_bytes) < 1:
            raise ValueError("a key codec needs max_prefixes, max_opaque and max_bytes >= 1")
        self.max_prefixes = max_prefixes
        self.max_opaque = max_opaque
        self.max_bytes = max_bytes
        self.retained_bytes = 0  # keys and prefixes held, with `ENTRY_OVERHEAD` each
        self._prefix_slot: OrderedDict[Prefix, int] = OrderedDict()  # least recently encoded first
        self._slot_prefix: dict[int, Prefix] = {}
        self._next_slot = 0
        self._opaque_id: OrderedDict[bytes, int] = OrderedDict()  # least recently encoded first
        self._opaque_key: dict[int, bytes] = {}
        self._next_opaque = 0

    def encode(self, key: bytes) -> int:
        match = TRAILING_DIGITS.fullmatch(key)
        if match is not None:
            prefix, digits = match.groups()
            number = int(digits)
            if number < _NUMBER_LIMIT:
                width = len(digits) if digits.startswith(b"0") and len(digits) > 1 else 0
                return ((self._slot((prefix, width)) + 1) << NUMBER_BITS) | number
        return self._opaque(key)

    def _slot(self, prefix: Prefix) -> int:
        slots = self._prefix_slot
        slot = slots.get(prefix)
        if slot is not None:
            slots.move_to_end(prefix)
            return slot
        slot = self._next_slot
        while slot in self._slot_prefix:  # wrapped around onto a prefix still remembered
            slot = (slot + 1) % _SLOT_LIMIT
        self._next_slot = (slot + 1) % _SLOT_LIMIT
        slots[prefix] = slot
        self._slot_prefix[slot] = prefix
        self.retained_bytes += len(prefix[0]) + ENTRY_OVERHEAD
        if len(slots) > self.max_prefixes:
            self._forget_prefix()
        self._fit()
        return slot

    def _opaque(self, key: bytes) -> int:
        ident = self._opaque_id.get(key)
        if ident is not None:
            self._opaque_id.move_to_end(key)
            return ident
        # Opaque ids live below the first prefix block; they are never adjacent to numbered keys.
        ident = self._next_opaque
        while ident in self._opaque_key:  # wrapped around onto a key still remembered
            ident = (ident + 1) % _NUMBER_LIMIT
        self._next_opaque = (ident + 1) % _NUMBER_LIMIT
        self._opaque_id[key] = ident
        self._opaque_key[ident] = key
        self.retained_bytes += len(key) + ENTRY_OVERHEAD
        if len(self._opaque_id) > self.max_opaque:
            self._forget_opaque()
        self._fit()
        return ident

    def _fit(self) -> None:
        """Forget opaque keys, then prefixes, least recently encoded first, until the bytes fit (the entry just
        added last: a key larger than the whole bound is not remembered)."""
        while self.retained_bytes > self.max_bytes and self._opaque_id:
            self._forget_opaque()
        while self.retained_bytes > self.max_bytes and self._prefix_slot:
            self._forget_prefix()

    def _forget_opaque(self) -> None:
        key, ident = self._opaque_id.popitem(last=False)
        del self._opaque_key[ident]
        self.retained_bytes -= len(key) + ENTRY_OVERHEAD

    def _forget_prefix(self) -> None:
        prefix, slot = self._prefix_slot.popitem(last=False)
        del self._slot_prefix[slot]
        self.retained_bytes -= len(prefix[0]) + ENTRY_OVERHEAD

    def decode(self, ident: int) -> bytes | None:
        """The byte key for an id, or None when it names no key (a stride past zero, a forgotten key)."""
        slot, number = ident >> NUMBER_BITS, ident & (_NUMBER_LIMIT - 1)
        if ident < 0:
            return None
        if slot == 0:
            return self._opaque_key.get(number)
        entry = self._slot_prefix.get(slot - 1)
        if entry is None:
            return None
        prefix, width = entry
        digits = str(number).zfill(width).encode()
        if width and len(digits) > width:
            return None
        return prefix + digits
