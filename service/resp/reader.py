"""hiredis readers that refuse an absurd argument count when its header arrives.

hiredis-py makes an array's list when it reads the array's header, as long as the count announced, and a list
costs its length to free. So `*3000000000\\r\\n` alone, from a client that then disconnects, held the event loop,
every tenant's, for 10-16 s while the list was freed, over and over if the client kept at it. A complete request
is already bounded by max_request_bytes (an argument takes at least 6 bytes), so only a header whose request never
arrives can do it.

hiredis has the limit, `maxelements` (the largest count it takes, 2^32 - 1 by default), but hiredis-py does not
expose it. This module sets it through ctypes at an offset found against the running library once, not assumed:
`maxelements` follows `maxbuf`, which hiredis-py does set, so the probe writes two sentinels with `setmaxbuf` and
finds the one word that follows them, checks it holds hiredis's default, and then checks the effect: a reader
limited to 10 refuses `*11` and takes `*10`. Where any of that fails (a hiredis built with another layout), readers
keep hiredis's default and `limited()` says so; the service logs it at start and the tests fail on it.
"""

from __future__ import annotations

import ctypes
from functools import cache

import hiredis

# Where hiredis-py's Reader object keeps its `redisReader *`: right after PyObject_HEAD (refcount, type), which
# `_struct` checks by finding the type where it should be (a free-threaded build's head is longer).
_TYPE_AT = ctypes.sizeof(ctypes.c_ssize_t)
_STRUCT_AT = _TYPE_AT + ctypes.sizeof(ctypes.c_void_p)
_HIREDIS_DEFAULT = (1 << 32) - 1  # REDIS_READER_MAX_ARRAY_ELEMENTS
_SENTINELS = (0x5A5A_1234_0F0F_7777, 0x0123_4567_89AB_CDEF)
_WORDS = 27  # the struct's length in words (216 bytes in hiredis 1.x, maxbuf its 21st): the probe reads no further


def _struct(reader: hiredis.Reader) -> int:
    """The `redisReader *` inside `reader`, or 0 where the object's head is not the one expected."""
    if ctypes.c_void_p.from_address(id(reader) + _TYPE_AT).value != id(type(reader)):
        return 0
    return ctypes.c_void_p.from_address(id(reader) + _STRUCT_AT).value or 0


def _word_after_maxbuf(struct: int, reader: hiredis.Reader) -> int | None:
    """The byte offset of the word after maxbuf, read word by word up to the first sentinel, within the struct's
    length; None if it is not there."""
    found = []
    for sentinel in _SENTINELS:
        reader.setmaxbuf(sentinel)
        index = next((i for i in range(_WORDS) if ctypes.c_uint64.from_address(struct + 8 * i).value == sentinel),
                     None)
        if index is None:
            return None
        found.append(index)
    return 8 * (found[0] + 1) if found[0] == found[1] else None


def _set(reader: hiredis.Reader, offset: int, max_args: int) -> None:
    ctypes.c_longlong.from_address(_struct(reader) + offset).value = max_args


def _refuses(offset: int, header: bytes) -> bool:
    reader = hiredis.Reader()
    _set(reader, offset, 10)
    reader.feed(header)
    try:
        reader.gets()
    except hiredis.ProtocolError:
        return True
    return False


@cache
def _maxelements_offset() -> int | None:
    probe = hiredis.Reader()
    struct = _struct(probe)
    if not struct:
        return None
    offset = _word_after_maxbuf(struct, probe)
    if offset is None or ctypes.c_longlong.from_address(struct + offset).value != _HIREDIS_DEFAULT:
        return None
    if not _refuses(offset, b"*11\r\n") or _refuses(offset, b"*10\r\n"):
        return None
    return offset


def limited() -> bool:
    """Whether readers from `new_reader` enforce their limit (False: this hiredis's layout was not recognised)."""
    return _maxelements_offset() is not None


def new_reader(max_args: int) -> hiredis.Reader:
    """A reader that raises ProtocolError ("Multi-bulk length out of range") on an array header counting more than
    `max_args`, before it makes the array's list."""
    reader = hiredis.Reader()
    offset = _maxelements_offset()
    if offset is not None:
        _set(reader, offset, max_args)
    return reader
