"""Redis's glob (`stringmatchlen` in util.c) for KEYS and SCAN MATCH, compiled to a regular expression.

Python's fnmatch differs where clients notice: Redis negates a class with `^` (fnmatch: `!`), escapes with
a backslash inside and outside classes, swaps a reversed range (`[z-a]`), leaves `[` unterminated as a class
running to the pattern's end, and matches bytes, not text. A regular expression keeps matching linear where
the C code needs its skip-longer-matches guard against `*a*a*a...` patterns.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

Matcher = Callable[[bytes], bool]


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
            low, high = sorted((pattern[i], pattern[i + 2]))
            members.update(range(low, high + 1))
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


@lru_cache(maxsize=256)
def compile_glob(pattern: bytes) -> Matcher:
    """A predicate that says whether a key matches `pattern` exactly as Redis's KEYS and SCAN would."""
    if pattern == b"*":
        return _everything  # their shortcut, which alone also matches the empty key
    parts: list[bytes] = []
    i, end = 0, len(pattern)
    while i < end:
        char = pattern[i]
        if char == ord("*"):
            parts.append(b".*")
            i += 1
        elif char == ord("?"):
            parts.append(b".")
            i += 1
        elif char == ord("["):
            part, i = _class(pattern, i + 1)
            parts.append(part)
        elif char == ord("\\") and i + 1 < end:
            parts.append(re.escape(pattern[i + 1:i + 2]))
            i += 2
        else:
            parts.append(re.escape(bytes([char])))
            i += 1
    regex = re.compile(b"".join(parts), re.DOTALL)
    empty_matches = pattern == b""  # Redis's loop never runs on an empty key: only the empty pattern matches it

    def matches(key: bytes) -> bool:
        return regex.fullmatch(key) is not None if key else empty_matches

    return matches
