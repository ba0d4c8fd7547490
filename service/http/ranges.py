"""HTTP byte ranges (RFC 9110, section 14) for reading part of a cached object, as GETRANGE does over RESP.

One range per request: `bytes=a-b`, `bytes=a-` or `bytes=-n`. A header that is not one of these (another
unit, several ranges, a reversed range) is ignored and the whole object served, which the RFC allows; a
well-formed range that starts past the end is unsatisfiable (416).
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Unsatisfiable(ValueError):
    """The range lies wholly past the object's end."""


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte a Range header asks for, None to serve the whole object."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable(header)
        return max(size - n, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable(header)
    return start, min(int(last), size - 1) if last else size - 1
