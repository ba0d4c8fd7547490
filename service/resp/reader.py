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

The same layout tells `between_requests` whether a reader stands between two requests, which hiredis-py does not
say either: `has_data()` is False inside an array too, between two of its arguments. The connection needs to know
before it reads a request's bytes the way Redis does (service/resp/framing.py) rather than hand them to hiredis.
`ridx` (the task hiredis is filling, -1 when none) and `tasks` follow `maxelements` and the task array's pointer;
the probe checks them against what a reader does with a known request.
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
_STACK_SIZE = 9  # REDIS_READER_STACK_SIZE: the tasks a reader starts with
_ARRAY = 2  # REDIS_REPLY_ARRAY
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


def _ridx_and_root(reader: hiredis.Reader, offset: int) -> tuple[ctypes.c_int, ctypes.c_int]:
    """Views of the reader's `ridx` and of its root task's type (-1 until hiredis has read a request's first byte);
    the root task is allocated with the reader and never moves."""
    struct = _struct(reader)
    tasks = ctypes.c_void_p.from_address(struct + offset + 8).value or 0
    root = ctypes.c_void_p.from_address(tasks).value or 0
    return ctypes.c_int.from_address(struct + offset + 20), ctypes.c_int.from_address(root)


def _tracks_requests(offset: int) -> bool:
    """Whether `ridx` and the root task's type read as hiredis 1.x lays them out, through one request's life."""
    reader = hiredis.Reader()
    ridx, root = _ridx_and_root(reader, offset)
    if ctypes.c_int.from_address(_struct(reader) + offset + 16).value != _STACK_SIZE or ridx.value != -1:
        return False
    reader.feed(b"*2\r\n$1\r\na\r\n")
    inside = reader.gets() is False and (ridx.value, root.value) == (1, _ARRAY)
    reader.feed(b"$1\r\nb\r\n")
    done = reader.gets() == [b"a", b"b"] and ridx.value == -1
    return inside and done and reader.gets() is False and (ridx.value, root.value) == (0, -1)


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
    if not _refuses(offset, b"*11\r\n") or _refuses(offset, b"*10\r\n") or not _tracks_requests(offset):
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


# hiredis's reply types (REDIS_REPLY_*), as the byte that starts each in RESP
_TYPE_BYTES = {1: b"$", 2: b"*", 3: b":", 4: b"_", 5: b"+", 6: b"-", 7: b",", 8: b"#", 9: b"%", 10: b"~", 11: b"|",
               12: b">", 13: b"(", 14: b"="}


class Position:
    """Where a reader stands in the stream of requests."""

    __slots__ = ("_offset", "_reader", "_struct", "ridx", "root")

    def __init__(self, reader: hiredis.Reader) -> None:
        self._reader = reader
        self._struct = _struct(reader)
        self._offset = _maxelements_offset()
        # hiredis's `ridx` (-1, or 0 with the root task's type -1: no request begun; 1 and more: inside an array) and
        # the root task's type; where the layout was not recognised, both read -1 (what hiredis holds unparsed is
        # then all that is known).
        self.ridx, self.root = ctypes.c_int(-1), ctypes.c_int(-1)
        if self._offset is not None:
            self.ridx, self.root = _ridx_and_root(reader, self._offset)

    def element_in_progress(self) -> tuple[bytes, bool, bytes] | None:
        """Inside an array, the type byte of the argument hiredis is reading, whether that argument is an aggregate
        whose header hiredis has read (it is inside it), and the first bytes hiredis holds unparsed: enough to tell
        what Redis would already have refused. None outside an array, before an argument's type byte, or where the
        layout was not recognised."""
        if self._offset is None or (ridx := self.ridx.value) < 1:
            return None
        struct, offset = self._struct, self._offset
        tasks = ctypes.c_void_p.from_address(struct + offset + 8).value or 0
        task = ctypes.c_void_p.from_address(tasks + ctypes.sizeof(ctypes.c_void_p)).value or 0
        kind = _TYPE_BYTES.get(ctypes.c_int.from_address(task).value)
        if kind is None:
            return None
        buf = ctypes.c_void_p.from_address(struct + offset - 32).value or 0
        pos, end = (ctypes.c_size_t.from_address(struct + offset - n).value for n in (24, 16))
        return kind, ridx > 1, ctypes.string_at(buf + pos, min(end - pos, 32)) if buf and end > pos else b""

    def between_requests(self) -> bool:
        """True when the next byte fed starts a request: hiredis holds nothing of one. Where the layout was not
        recognised, only that it holds no unparsed byte (also true between two arguments of an array)."""
        ridx = self.ridx.value
        return (ridx == -1 or (ridx == 0 and self.root.value < 0)) and not self._reader.has_data()
