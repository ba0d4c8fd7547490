"""Bit commands (SETBIT, GETBIT, BITCOUNT, BITPOS, BITOP) and LCS, with Redis 7.0's argument order and replies.

The reads take their values as GET does (`strings.get`): a miss reads through to the origin, and each read is
recorded for the prefetcher, so the bits of a cached object are the object's, as GETRANGE's bytes are. The writes
act on the cache alone, as SETRANGE and APPEND do, and charge the tenant's budget before building anything.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable
from functools import reduce
from typing import TYPE_CHECKING, cast

import numpy as np

from service.origin.base import MAX_OBJECT_BYTES
from service.resp import replies as r
from service.resp.commands import Command, Reply, strings
from service.resp.commands.strings import parse_int

if TYPE_CHECKING:
    from service.resp.connection import RespConnection

Answer = Callable[[list[bytes | None]], bytes]
_BAD_OFFSET = r.error("ERR bit offset is not an integer or out of range")
_BAD_BIT = r.error("ERR bit is not an integer or out of range")
_BIT_LIMIT = MAX_OBJECT_BYTES * 8  # Redis's proto-max-bulk-len, in bits
_INVERTED = bytes(255 - byte for byte in range(256))


def _with_values(conn: RespConnection, keys: list[bytes], answer: Answer) -> Reply:
    """`answer` of the keys' values as GET finds them (None: no such key), or the origin's error."""
    replies = [strings.get(conn, [b"GET", key]) for key in keys]
    if all(isinstance(reply, bytes) for reply in replies):
        return _answer(conn, cast("list[bytes]", replies), answer)
    return _answer_later(conn, replies, answer)


async def _answer_later(conn: RespConnection, pending: list[bytes | Awaitable[bytes]], answer: Answer) -> bytes:
    return _answer(conn, [reply if isinstance(reply, bytes) else await reply for reply in pending], answer)


def _answer(conn: RespConnection, replies: list[bytes], answer: Answer) -> bytes:
    error = next((reply for reply in replies if reply.startswith(b"-")), None)
    if error is not None:
        return error
    return answer([None if reply == conn.null else reply[reply.index(b"\r\n") + 2:-2] for reply in replies])


def _offset(raw: bytes) -> int | None:
    offset = parse_int(raw)
    return offset if offset is not None and 0 <= offset < _BIT_LIMIT else None


def _bit(value: bytes, offset: int) -> int:
    byte = offset >> 3
    return value[byte] >> (7 - (offset & 7)) & 1 if byte < len(value) else 0


def getbit(conn: RespConnection, args: list[bytes]) -> Reply:
    offset = _offset(args[2])
    if offset is None:
        return _BAD_OFFSET
    return _with_values(conn, args[1:2], lambda values: r.integer(_bit(values[0] or b"", offset)))


def setbit(conn: RespConnection, args: list[bytes]) -> Reply:
    """The old bit; the value grows with zero bytes to reach the offset, keeping its TTL, as SETRANGE's does. A bit
    set as it was, within the value, is no write (a WATCH does not see it), as in Redis 7.0."""
    offset = _offset(args[2])
    if offset is None:
        return _BAD_OFFSET
    on = parse_int(args[3])
    if on not in (0, 1):
        return _BAD_BIT
    entry = conn.tenant.store.entry(args[1])
    value = b"" if entry is None else entry.value
    old, byte, mask = _bit(value, offset), offset >> 3, 1 << (7 - (offset & 7))
    if byte < len(value) and old == on:
        return r.integer(old)
    current = value[byte] if byte < len(value) else 0
    patch = bytes((current | mask if on else current & ~mask,))
    # SETRANGE refuses (OOM) before it pads a value past the budget, and never waits.
    written = cast("bytes", strings.setrange(conn, [b"SETRANGE", args[1], b"%d" % byte, patch]))
    return written if written.startswith(b"-") else r.integer(old)


def _in_bits(args: list[bytes], at: int) -> bool | None:
    """Whether the BIT|BYTE argument at `at` (BYTE when absent) says BIT; None for anything else."""
    if len(args) <= at:
        return False
    unit = args[at].lower()
    return True if unit == b"bit" else False if unit == b"byte" else None


def _bit_span(size: int, start: int, end: int, in_bits: bool) -> tuple[int, int] | None:
    """The first and last bit a range names in a value of `size` bytes (negative indexes count from the end,
    out-of-range ones are clamped), or None when it is empty."""
    total = size * 8 if in_bits else size
    start, end = max(start + total if start < 0 else start, 0), max(end + total if end < 0 else end, 0)
    end = min(end, total - 1)
    if start > end:
        return None
    return (start, end) if in_bits else (start * 8, end * 8 + 7)


def _bits(value: bytes, first: int, last: int) -> int:
    """Bits `first` to `last` of the value (bit 0: the first byte's highest), as a number of that many bits."""
    number = int.from_bytes(value[first >> 3:(last >> 3) + 1], "big")
    return number >> (7 - (last & 7)) & ((1 << (last - first + 1)) - 1)


def bitcount(conn: RespConnection, args: list[bytes]) -> Reply:
    return _with_values(conn, args[1:2], lambda values: _count(values[0], args))


def _count(value: bytes | None, args: list[bytes]) -> bytes:
    if value is None:  # Redis 7.0 answers 0 for a missing key before it reads the other arguments
        return r.ZERO
    if len(args) == 2:
        return r.integer(int.from_bytes(value, "big").bit_count())
    if len(args) not in (4, 5):
        return r.SYNTAX
    start, end = parse_int(args[2]), parse_int(args[3])
    if start is None or end is None:
        return r.NOT_INTEGER
    if start < 0 and end < 0 and start > end:  # before the unit is read, as in Redis 7.0
        return r.ZERO
    in_bits = _in_bits(args, 4)
    if in_bits is None:
        return r.SYNTAX
    span = _bit_span(len(value), start, end, in_bits)
    return r.ZERO if span is None else r.integer(_bits(value, *span).bit_count())


def bitpos(conn: RespConnection, args: list[bytes]) -> Reply:
    bit = parse_int(args[2])
    if bit is None:
        return r.NOT_INTEGER
    if bit not in (0, 1):
        return r.error("ERR The bit argument must be 1 or 0.")
    return _with_values(conn, args[1:2], lambda values: _position(values[0], bit, args))


def _position(value: bytes | None, bit: int, args: list[bytes]) -> bytes:
    """Without an end, the string is followed by zeros: a clear bit past its end is found (Redis's rule)."""
    if value is None:
        return r.integer(-1 if bit else 0)
    parsed = _position_range(args)
    if isinstance(parsed, bytes):
        return parsed
    span = _bit_span(len(value), *parsed)
    if span is None:
        return r.integer(-1)
    first, last = span
    width = last - first + 1
    found = _bits(value, first, last) ^ (0 if bit else (1 << width) - 1)
    if found:
        return r.integer(first + width - found.bit_length())
    return r.integer(last + 1 if not bit and len(args) < 5 else -1)


def _position_range(args: list[bytes]) -> tuple[int, int, bool] | bytes:
    """BITPOS's start, end and unit, read in Redis 7.0's order (start, unit, end), or the error."""
    if len(args) > 6:
        return r.SYNTAX
    if len(args) == 3:
        return 0, -1, False
    start = parse_int(args[3])
    if start is None:
        return r.NOT_INTEGER
    in_bits = _in_bits(args, 5)
    if in_bits is None:
        return r.SYNTAX
    end = parse_int(args[4]) if len(args) > 4 else -1
    if end is None:
        return r.NOT_INTEGER
    return start, end, in_bits


_OPERATORS: dict[bytes, Callable[[int, int], int] | None] = {
    b"and": operator.and_, b"or": operator.or_, b"xor": operator.xor, b"not": None,
}


def bitop(conn: RespConnection, args: list[bytes]) -> Reply:
    """The result is as long as the longest source (shorter ones and missing keys count as zeros); an empty one
    deletes the destination. Sources are read from the cache alone, as the other writes read theirs."""
    name = args[1].lower()
    if name not in _OPERATORS:
        return r.SYNTAX
    combine = _OPERATORS[name]
    if combine is None and len(args) != 4:
        return r.error("ERR BITOP NOT must be called with a single source key.")
    store, target = conn.tenant.store, args[2]
    values = [b"" if entry is None else entry.value for entry in map(store.entry, args[3:])]
    size = max(map(len, values))
    if not size:
        store.delete(target)
        return r.ZERO
    if combine is None:
        result = values[0].translate(_INVERTED)
    else:  # each source as a number, shifted to pad it with zero bytes on the right
        numbers = (int.from_bytes(value, "big") << 8 * (size - len(value)) for value in values)
        result = reduce(combine, numbers).to_bytes(size, "big")
    if not store.fits(target, result):
        return r.OOM
    store.set(target, result)  # no keep_ttl: Redis's BITOP replaces the destination, deadline included
    return r.integer(size)


_LCS_TABLE_TOO_BIG = r.error("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len")
# Redis's table bound still lets one string be 64 MB against a 1-byte one: 64M steps of the loops below, seconds
# of every tenant's event loop. At 128 KiB the worst a call can take is under 0.1 s on the dev box.
_LCS_MAX_BYTES = 128 * 1024
_LCS_TOO_LONG = r.error(f"ERR LCS of a string longer than {_LCS_MAX_BYTES} bytes is refused here: it would hold "
                        "every tenant's commands")


def lcs(conn: RespConnection, args: list[bytes]) -> Reply:
    options = _lcs_options(args)
    if isinstance(options, bytes):
        return options
    return _with_values(conn, args[1:3], lambda values: _lcs_reply(conn, values[0] or b"", values[1] or b"",
                                                                  *options))


def _lcs_options(args: list[bytes]) -> tuple[bool, bool, int, bool] | bytes:
    """(LEN, IDX, MINMATCHLEN, WITHMATCHLEN), or Redis's error for them."""
    want_len = want_idx = with_len = False
    min_len, i = 0, 3
    while i < len(args):
        opt = args[i].lower()
        if opt == b"idx":
            want_idx = True
        elif opt == b"len":
            want_len = True
        elif opt == b"withmatchlen":
            with_len = True
        elif opt == b"minmatchlen" and i + 1 < len(args):
            parsed = parse_int(args[i + 1])
            if parsed is None:
                return r.NOT_INTEGER
            min_len = max(parsed, 0)
            i += 1
        else:
            return r.SYNTAX
        i += 1
    if want_len and want_idx:
        return r.error("ERR If you want both the length and indexes, please just use IDX.")
    return want_len, want_idx, min_len, with_len


def _lcs_reply(conn: RespConnection, a: bytes, b: bytes, want_len: bool, want_idx: bool, min_len: int,
               with_len: bool) -> bytes:
    if (len(a) + 1) * (len(b) + 1) * 4 > MAX_OBJECT_BYTES:  # the table Redis would allocate
        return _LCS_TABLE_TOO_BIG
    if max(len(a), len(b)) > _LCS_MAX_BYTES:
        return _LCS_TOO_LONG
    rows, matches = _lcs_rows(a, b)
    if want_len:
        return r.integer(len(b) - rows[-1].bit_count())
    common, ranges = _lcs_walk(a, b, rows, matches)
    if not want_idx:
        return r.bulk(common)
    shown = [found for found in ranges if not min_len or found[1] - found[0] + 1 >= min_len]
    items = (r.array([r.array([r.integer(a_first), r.integer(a_last)]),
                      r.array([r.integer(b_first), r.integer(b_last)]),
                      *([r.integer(a_last - a_first + 1)] if with_len else [])])
             for a_first, a_last, b_first, b_last in shown)
    return r.mapping([(r.bulk(b"matches"), r.array(items)), (r.bulk(b"len"), r.integer(len(common)))],
                     conn.protocol == 3)


def _lcs_rows(a: bytes, b: bytes) -> tuple[list[int], dict[int, int]]:
    """Redis's LCS table, bit-parallel (Hyyrö): row i's bit j is clear where LCS(a[:i], b[:j+1]) exceeds
    LCS(a[:i], b[:j]), so a row is one number of len(b) bits, not len(b) counters; and for each byte of `a`, the
    places it has in `b` as the bits of one number."""
    column = np.frombuffer(b, dtype=np.uint8)
    matches = {byte: int.from_bytes(np.packbits(column == byte, bitorder="little").tobytes(), "little")
               for byte in set(a)}
    row = (1 << len(b)) - 1
    rows = [row]
    if b:  # against an empty string every row is the first
        for byte in a:
            found = row & matches[byte]
            row = ((row + found) | (row - found)) & rows[0]
            rows.append(row)
    return rows, matches


def _lcs_walk(a: bytes, b: bytes, rows: list[int], matches: dict[int, int]) -> tuple[bytes, list[tuple[int, ...]]]:
    """Redis's walk back through the table: the common subsequence and its contiguous matches, last first. Where
    both ways keep the length it steps left, as Redis does; a run of such steps is one jump to the nearest column
    with a match or a step up."""
    common: list[int] = []
    ranges: list[tuple[int, ...]] = []
    run: list[int] | None = None  # the match being extended: [a_first, a_last, b_first, b_last]
    i, j = len(a), len(b)
    while i > 0 and j > 0:
        if a[i - 1] == b[j - 1]:
            common.append(a[i - 1])
            if run is None:
                run = [i - 1, i - 1, j - 1, j - 1]
            run[0], run[2] = i - 1, j - 1
            i, j = i - 1, j - 1
            if not i or not j:
                ranges.append(tuple(run))
            continue
        if run is not None:
            ranges.append(tuple(run))
            run = None
        if not rows[i] >> (j - 1) & 1:  # LCS(i-1, j) > LCS(i, j-1)
            i -= 1
        else:
            j = ((matches[a[i - 1]] | ~rows[i]) & ((1 << (j - 1)) - 1)).bit_length()
    return bytes(reversed(common)), ranges


def _cmd(name: str, arity: int, flags: str, handler, summary: str, since: str, first_key: int = 1,
         last_key: int = 1, group: str = "bitmap") -> Command:
    return Command(name, arity, frozenset(flags.split()), handler, first_key, last_key, 1, group, summary, since)


COMMANDS = [
    _cmd("setbit", 4, "write denyoom", setbit, "Sets or clears the bit at offset of the string value. Creates the "
         "key if it doesn't exist.", "2.2.0"),
    _cmd("getbit", 3, "readonly fast", getbit, "Returns a bit value by offset.", "2.2.0"),
    _cmd("bitcount", -2, "readonly", bitcount, "Counts the number of set bits (population counting) in a string.",
         "2.6.0"),
    _cmd("bitpos", -3, "readonly", bitpos, "Finds the first set (1) or clear (0) bit in a string.", "2.8.7"),
    _cmd("bitop", -4, "write denyoom", bitop, "Performs bitwise operations on multiple strings, and stores the "
         "result.", "2.6.0", 2, -1),
    _cmd("lcs", -3, "readonly", lcs, "Finds the longest common substring.", "7.0.0", last_key=2, group="string"),
]
