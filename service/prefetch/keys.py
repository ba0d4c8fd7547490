"""Maps the service's byte keys to the integer keys prefetchers work on, and back.

A key that ends in digits (`user:00123`, `block/77`) keeps its number in the low bits, so stride and delta
predictors see `user:00124` as the next key; its prefix (and zero-padding width) gets a small id in the high
bits. Other keys get ids from a bounded table: Markov successors and the learned model still work on them,
strides simply never match.
"""

from __future__ import annotations

import re
from collections import OrderedDict

NUMBER_BITS = 40
_NUMBER_LIMIT = 1 << NUMBER_BITS
_TRAILING_DIGITS = re.compile(rb"(.*?)(\d{1,12})", re.DOTALL)


class KeyCodec:
    """bytes <-> int, bounded in the prefixes and opaque keys it remembers."""

    def __init__(self, max_prefixes: int = 4096, max_opaque: int = 1 << 18) -> None:
        self.max_prefixes = max_prefixes
        self.max_opaque = max_opaque
        self._prefix_id: dict[tuple[bytes, int], int] = {}
        self._prefixes: list[tuple[bytes, int]] = []
        self._opaque_id: OrderedDict[bytes, int] = OrderedDict()
        self._opaque_key: dict[int, bytes] = {}
        self._next_opaque = 0

    def encode(self, key: bytes) -> int:
        match = _TRAILING_DIGITS.fullmatch(key)
        if match is not None:
            prefix, digits = match.groups()
            number = int(digits)
            width = len(digits) if digits.startswith(b"0") and len(digits) > 1 else 0
            slot = self._prefix_id.get((prefix, width))
            if slot is None and len(self._prefixes) < self.max_prefixes:
                slot = self._prefix_id[(prefix, width)] = len(self._prefixes)
                self._prefixes.append((prefix, width))
            if slot is not None and number < _NUMBER_LIMIT:
                return ((slot + 1) << NUMBER_BITS) | number
        return self._opaque(key)

    def _opaque(self, key: bytes) -> int:
        ident = self._opaque_id.get(key)
        if ident is not None:
            self._opaque_id.move_to_end(key)
            return ident
        # Opaque ids live below the first prefix block; they are never adjacent to numbered keys.
        ident = self._next_opaque
        self._next_opaque = (self._next_opaque + 1) % _NUMBER_LIMIT
        self._opaque_id[key] = ident
        self._opaque_key[ident] = key
        if len(self._opaque_id) > self.max_opaque:
            _, old_id = self._opaque_id.popitem(last=False)
            self._opaque_key.pop(old_id, None)
        return ident

    def decode(self, ident: int) -> bytes | None:
        """The byte key for an id, or None when it names no key (a stride past zero, a forgotten key)."""
        slot, number = ident >> NUMBER_BITS, ident & (_NUMBER_LIMIT - 1)
        if ident < 0:
            return None
        if slot == 0:
            return self._opaque_key.get(number)
        if slot > len(self._prefixes):
            return None
        prefix, width = self._prefixes[slot - 1]
        digits = str(number).zfill(width).encode()
        if width and len(digits) > width:
            return None
        return prefix + digits
