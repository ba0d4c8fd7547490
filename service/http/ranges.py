"""HTTP byte ranges (RFC 9110, section 14) for reading part of a cached object, as GETRANGE does over RESP.

One range per request: `bytes=a-b`, `bytes=a-` or `bytes=-n` (the unit in any case). A header that is not one
of these (another unit, several ranges, a reversed range) is ignored and the whole object served, which the RFC
allows; a well-formed range that starts past the end is unsatisfiable (416). Positions are compared, not
converted, past 19 digits: any such number lies past the end of every value.
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)
_FAR = 10**19  # above every 19-digit position, and past the end of any value


class Unsatisfiable(ValueError):
    """The range lies wholly past the object's end."""


def _position(digits: str) -> int:
    """A range position; `int` refuses strings of over 4300 digits, and none that long can matter."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 19 else _FAR


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte a Range header asks for, None to serve the whole object."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # the last n bytes
        n = _position(last)
        if n == 0:
            raise Unsatisfiable(header)
        if size == 0:  # satisfiable (RFC 9110, 14.1.2), yet no Content-Range names zero bytes: serve it all
            return None
        return max(size - n, 0), size - 1
    start = _position(first)
    end = _position(last) if last else None
    if end is not None and end < start:
        return None
    if start >= size:
        raise Unsatisfiable(header)
    return start, min(end, size - 1) if end is not None else size - 1
