"""Maps the service's byte keys to the integer keys prefetchers work on, and back.

A key that ends in digits (`user:00123`, `block/77`) keeps its number in the low bits, so stride and delta
predictors see `user:00124` as the next key; its prefix (and zero-padding width) gets a slot in the high bits.
Other keys get ids below every prefix's block: Markov successors and the learned model still work on them,
strides simply never match.

A prefix's slot and an opaque key's id are a hash of its bytes (blake2b, personalised per kind of id; not
`hash()`, which is salted per process), not a count of the keys seen before it. So they are the same in every
process whatever order the keys come in, and a learned model restored from a checkpoint after a restart still
refers to the keys it learned on (the replay benchmark maps string keys by the same functions, over 2^23 - 1
prefix slots where the codec has 2^20, so a prefix's slot there is not the service's). Where a key hashes
onto a slot or id a remembered key holds, it takes the next free one: which of the two moves depends on which came
first, so only such keys can get another id in another process or after forgetting. That is rare (a new prefix
finds its slot held at most 4,096 / 2^20 = 0.4 % of the time, a new opaque key its id 2^18 / 2^40) and bounded:
the moved key is a new key to a restored model, and its old id decodes to nothing or to the key now holding it.

The codec lives in the server process, one per tenant engine, so it is bounded in entries and in bytes: prefixes
and opaque keys are each forgotten least recently encoded first (opaque keys before prefixes when the bytes run
out), and an id of a forgotten one decodes to nothing until a key hashing there takes it. An id never goes to
another key while its own is remembered.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict

NUMBER_BITS = 40
_NUMBER_LIMIT = 1 << NUMBER_BITS
SLOT_LIMIT = 1 << 20  # prefix slots: an id stays below 2^61, an int64 for any prefetcher's arrays
_TRAILING_DIGITS = re.compile(rb"(.*?)(\d{1,12})", re.DOTALL)
# blake2b personalised per kind of id (changing either relabels every key a checkpoint learned on); each hash
# copies its base (260 ns against 420 to build a personalised one).
_PREFIX_HASH = hashlib.blake2b(digest_size=8, person=b"foresight:prefix")
_OPAQUE_HASH = hashlib.blake2b(digest_size=8, person=b"foresight:opaque")

MAX_PREFIXES = 4096
MAX_OPAQUE = 1 << 18
# What a tenant's codec may hold (a caller may scale it to the tenant's budget): 2^18 opaque keys of up to 32
# bytes fit, of 1 KB about 54,000 (unbounded in bytes, 2^18 of them took 312 MB).
MAX_BYTES = 64 << 20
# Bytes an entry costs besides its key's: the bytes object's header and the two tables' slots (tracemalloc: 258
# bytes per 40-byte opaque key, 1,242 per 1 KB one).
ENTRY_OVERHEAD = 224

Prefix = tuple[bytes, int]  # the bytes before the digits, and the digits' zero-padded width (0: not padded)


def split_number(key: bytes) -> tuple[Prefix, int] | None:
    """A numbered key's prefix and number (up to 12 trailing digits, below 2^40); None for an opaque key."""
    match = _TRAILING_DIGITS.fullmatch(key)
    if match is None:
        return None
    prefix, digits = match.groups()
    number = int(digits)
    if number >= _NUMBER_LIMIT:
        return None
    return (prefix, len(digits) if digits.startswith(b"0") and len(digits) > 1 else 0), number


def _hash(data: bytes, base: hashlib.blake2b) -> int:
    hasher = base.copy()
    hasher.update(data)
    return int.from_bytes(hasher.digest(), "big")


def prefix_slot(prefix: Prefix, slots: int = SLOT_LIMIT) -> int:
    """The slot a prefix takes unless a remembered one holds it (then the next free one): a hash below `slots`."""
    data, width = prefix
    return _hash(bytes([width]) + data, _PREFIX_HASH) % slots  # the width first: no two prefixes hash one string


def opaque_id(key: bytes) -> int:
    """The id an opaque key takes unless a remembered one holds it (then the next free one): a hash below 2^40."""
    return _hash(key, _OPAQUE_HASH) % _NUMBER_LIMIT


def numbered_id(slot: int, number: int) -> int:
    """The id of a number under a prefix slot: slot 0's block is the opaque keys'."""
    return ((slot + 1) << NUMBER_BITS) | number


class KeyCodec:
    """bytes <-> int, bounded in the prefixes and opaque keys it remembers and in the bytes they take."""

    def __init__(self, max_prefixes: int = MAX_PREFIXES, max_opaque: int = MAX_OPAQUE,
                 max_bytes: int = MAX_BYTES) -> None:
        if min(max_prefixes, max_opaque, max_bytes) < 1:
            raise ValueError("a key codec needs max_prefixes, max_opaque and max_bytes >= 1")
        if max_prefixes >= SLOT_LIMIT or max_opaque >= _NUMBER_LIMIT:
            raise ValueError(f"a key codec holds fewer than {SLOT_LIMIT} prefixes and {_NUMBER_LIMIT} opaque keys, "
                             f"got max_prefixes={max_prefixes}, max_opaque={max_opaque}")
        self.max_prefixes = max_prefixes
        self.max_opaque = max_opaque
        self.max_bytes = max_bytes
        self.retained_bytes = 0  # keys and prefixes held, with `ENTRY_OVERHEAD` each
        self._prefix_slot: OrderedDict[Prefix, int] = OrderedDict()  # least recently encoded first
        self._slot_prefix: dict[int, Prefix] = {}
        self._opaque_id: OrderedDict[bytes, int] = OrderedDict()  # least recently encoded first
        self._opaque_key: dict[int, bytes] = {}

    def encode(self, key: bytes) -> int:
        numbered = split_number(key)
        if numbered is None:
            return self._opaque(key)
        prefix, number = numbered
        return numbered_id(self._slot(prefix), number)

    def _slot(self, prefix: Prefix) -> int:
        slots = self._prefix_slot
        slot = slots.get(prefix)
        if slot is not None:
            slots.move_to_end(prefix)
            return slot
        slot = prefix_slot(prefix)
        while slot in self._slot_prefix:  # a remembered prefix hashed (or moved) here first
            slot = (slot + 1) % SLOT_LIMIT
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
        ident = opaque_id(key)
        while ident in self._opaque_key:  # a remembered key hashed (or moved) here first
            ident = (ident + 1) % _NUMBER_LIMIT
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
