"""INCRBYFLOAT's arithmetic as Redis does it: C's long double, parsed by strtold's rules and printed as
`%.17Lf` with the trailing zeros cut (Redis's `ld2string`, LD_STR_HUMAN).

Python's float is a C double, whose 53 bits print `0.1` as `0.10000000000000001` at 17 digits, where the x87
long double's 64 bits print `0.1`; and Python has neither strtold's syntax (hex floats) nor its range (1e4000).
So the parsing and the printing go through the C library itself and the sum through numpy's long double, the
same type: `strtold` says how much of the text is a number and whether it over- or underflowed (its value comes
back through ctypes as a double, so it is not kept), `sscanf("%Lf")` writes that number's exact bits into a
buffer (alone it takes `1e` whole, where strtold stops before the `e`), and `snprintf` prints from one. The digits
are Redis's own, checked against redis-server in tests/service/test_differential.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno

import numpy as np

_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_LIBC.strtold.restype = ctypes.c_longdouble
_LIBC.strtold.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
_MAX_CHARS = 5 * 1024  # Redis's MAX_LONG_DOUBLE_CHARS: longer input is refused, and no result is longer
_SIZE = ctypes.sizeof(ctypes.c_longdouble)


def parse(text: bytes) -> np.longdouble | None:
    """The long double `text` spells by Redis's `string2ld` rules, else None: no leading space, nothing after the
    number (a NUL included), no NaN, no overflow to infinity or underflow to zero."""
    if not text or len(text) >= _MAX_CHARS or text[:1].isspace():
        return None
    source = ctypes.create_string_buffer(text)  # NUL-terminated: strtold stops at a NUL inside, and falls short
    end = ctypes.c_char_p()
    ctypes.set_errno(0)
    _LIBC.strtold(source, ctypes.byref(end))
    failed = ctypes.get_errno()
    if ctypes.cast(end, ctypes.c_void_p).value != ctypes.addressof(source) + len(text):
        return None
    buffer = ctypes.create_string_buffer(_SIZE)
    if _LIBC.sscanf(source, b"%Lf", buffer) != 1:
        return None
    value = np.frombuffer(buffer.raw, dtype=np.longdouble)[0]
    if np.isnan(value) or (failed == errno.ERANGE and (np.isinf(value) or value == 0)):
        return None
    return value


def human(value: np.longdouble) -> bytes:
    """`value` as Redis prints a long double for people: `%.17Lf`, trailing zeros (and a bare point) cut, `-0`
    as `0`. The caller has refused infinities."""
    exact = ctypes.c_longdouble.from_buffer_copy(np.array([value], dtype=np.longdouble).tobytes())
    out = ctypes.create_string_buffer(_MAX_CHARS)
    size = _LIBC.snprintf(out, _MAX_CHARS, b"%.17Lf", exact)
    text = out.raw[:size]
    if b"." in text:
        text = text.rstrip(b"0").removesuffix(b".")
    return b"0" if text == b"-0" else text
