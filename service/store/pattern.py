"""Redis's glob (`stringmatchlen` in util.c) for KEYS and SCAN MATCH, matched without backtracking.

Python's fnmatch differs where clients notice: Redis negates a class with `^` (fnmatch: `!`), escapes with
a backslash inside and outside classes, swaps a reversed range (`[z-a]`), leaves `[` unterminated as a class
running to the pattern's end, and matches bytes, not text.

Redis compares a range's bounds and the key's byte as C `char`s, which are signed on x86: there a range from
byte 0xFF to `a` runs from -1 to 97, so it matches 0xFF and 0x00 to `a`, not `a` to 0xFF. Ranges here follow
x86 (ARM builds of Redis, whose `char` is unsigned, differ for bytes 0x80 and above).

Redis walks a pattern afresh for each key and so takes any length; here a pattern is compiled once per command,
which costs about 1 ms per KiB of pattern on the event loop and a regex several times its size. Patterns are capped
at MAX_PATTERN_BYTES (a glob that long has no use a key name could need; compiling it holds the loop under 0.1 s),
and only short ones, the ones clients repeat, stay cached.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

Matcher = Callable[[bytes], bool]
MAX_PATTERN_BYTES = 64 * 1024
_CACHED_PATTERN_BYTES = 256  # 256 cached at most hold about a MiB, however clients vary them


class PatternTooLong(ValueError):
    """A KEYS or SCAN MATCH pattern over MAX_PATTERN_BYTES."""


def _signed(byte: int) -> int:
    """A byte as x86's signed C `char`."""
    return byte - 256 if byte >= 0x80 else byte


def _class(pattern: bytes, i: int) -> tuple[bytes, int]:
    """The regex for the class whose `[` is at i - 1, and the index after its `]` (or the pattern's end)."""
    end = len(pattern)
    negate = i < end and pattern[i] == ord("^")
    if negate:
        i += 1
    members: set[int] = set()
    while i < end and pattern[i] != ord("]"):
        if pattern[i] == ord("\\") and i + 1 < end:
            members.add(pattern[i + 1])
            i += 2
        elif i + 2 < end and pattern[i + 1] == ord("-"):
            low, high = sorted((_signed(pattern[i]), _signed(pattern[i + 2])))
            members.update(byte & 0xFF for byte in range(low, high + 1))
            i += 3
        else:
            members.add(pattern[i])
            i += 1
    after = i + 1 if i < end else end
    if not members:
        return (b"." if negate else b"(?!)"), after
    body = b"".join(re.escape(bytes([m])) for m in sorted(members))
    return b"[" + (b"^" if negate else b"") + body + b"]", after


def _everything(key: bytes) -> bool:
    return True


def _pieces(pattern: bytes) -> list[bytes | None]:
    """One regex per character the pattern matches (a literal, `.` or a class), None for each `*`."""
    pieces: list[bytes | None] = []
    i, end = 0, len(pattern)
    while i < end:
        char = pattern[i]
        if char == ord("*"):
            pieces.append(None)
            i += 1
        elif char == ord("?"):
            pieces.append(b".")
            i += 1
        elif char == ord("["):
            piece, i = _class(pattern, i + 1)
            pieces.append(piece)
        elif char == ord("\\") and i + 1 < end:
            pieces.append(re.escape(pattern[i + 1:i + 2]))
            i += 2
        else:
            pieces.append(re.escape(bytes([char])))
            i += 1
    return pieces


def compile_glob(pattern: bytes) -> Matcher:
    """A predicate that says whether a key matches `pattern` exactly as Redis's KEYS and SCAN would. Raises
    PatternTooLong."""
    if len(pattern) > MAX_PATTERN_BYTES:
        raise PatternTooLong(f"the pattern is {len(pattern)} bytes, over the {MAX_PATTERN_BYTES} bytes a key "
                             "pattern may have here")
    return _cached(pattern) if len(pattern) <= _CACHED_PATTERN_BYTES else _compile(pattern)


def _compile(pattern: bytes) -> Matcher:
    """The matcher of `pattern`.

    The stars split the pattern into segments of fixed length; the first must match at the key's start, the
    last at its end, and each middle one at its earliest place after the one before (for fixed-length
    segments the earliest place is never worse). So matching costs at most the key's length times the
    pattern's, with no backtracking: a regex of the whole pattern would take seconds on `*a*a*a*a*a*a*b`
    against a 60-byte key, and one tenant's KEYS would stall every other tenant's commands.
    """
    if pattern == b"*":
        return _everything  # their shortcut, which alone also matches the empty key
    segments: list[list[bytes]] = [[]]
    for piece in _pieces(pattern):
        if piece is None:
            segments.append([])
        else:
            segments[-1].append(piece)
    compiled = [(re.compile(b"".join(segment), re.DOTALL), len(segment)) for segment in segments]
    empty_matches = pattern == b""  # Redis's loop never runs on an empty key: only the empty pattern matches it

    if len(compiled) == 1:
        whole = compiled[0][0]

        def matches(key: bytes) -> bool:
            return whole.fullmatch(key) is not None if key else empty_matches

        return matches

    (head, head_len), middle, (tail, tail_len) = compiled[0], compiled[1:-1], compiled[-1]

    def matches_with_stars(key: bytes) -> bool:
        if not key:
            return False
        if head.match(key) is None:
            return False
        place, tail_start = head_len, len(key) - tail_len
        for segment, length in middle:
            found = segment.search(key, place, tail_start)
            if found is None:
                return False
            place = found.start() + length
        return place <= tail_start and tail.fullmatch(key, tail_start) is not None

    return matches_with_stars


_cached = lru_cache(maxsize=256)(_compile)
