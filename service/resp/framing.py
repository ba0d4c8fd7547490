"""What hiredis does not check of a request: Redis's limits before AUTH, and that every argument is a bulk string.

hiredis parses any RESP value, so an argument can arrive as an integer, a null or a nested array; Redis refuses
those while parsing, before any command sees them, and closes the connection. Doing the same keeps handlers
(which take bytes) from failing on them, and an unauthenticated client from filling the log with their tracebacks.
A simple string (`+foo`) parses to bytes, as a bulk string does, so it is accepted where Redis would refuse it.
"""

from __future__ import annotations

import codecs
import re

from service.resp import replies as r

# Before AUTH a client may buffer only this much: nobody can make the server hold gigabytes unauthenticated.
UNAUTHENTICATED_MAX_REQUEST = 64 * 1024
# Redis 7.0's own limits before AUTH, checked on each request's headers as they arrive: at most this many
# arguments, each at most this long (the requests before it are answered, then its error, then the close).
UNAUTHENTICATED_MAX_ARGS = 10
UNAUTHENTICATED_MAX_BULK = 16 * 1024
_UNAUTH_MULTIBULK = r.error("ERR Protocol error: unauthenticated multibulk length")
_UNAUTH_BULK = r.error("ERR Protocol error: unauthenticated bulk length")
_LENGTH = re.compile(rb"-?[0-9]{1,19}")

NOT_AN_ARRAY = r.error("ERR Protocol error: expected an array of bulk strings")
_INVALID_BULK = r.error("ERR Protocol error: invalid bulk length")  # Redis's answer to `$-1` as an argument, `$a`
# hiredis raises MemoryError on an array header it cannot allocate (`*4000000000`), and its own error on one over a
# reader's limit (service/resp/reader.py); Redis refuses such a count.
_INVALID_MULTIBULK = r.error("ERR Protocol error: invalid multibulk length")
_REDIS_WORDS = {  # hiredis's message: Redis's reply for the same bytes
    "Multi-bulk length out of range": _INVALID_MULTIBULK,  # over a reader's limit (service/resp/reader.py)
    "Bad multi-bulk length": _INVALID_MULTIBULK,  # `*a`
    "Bad bulk string length": _INVALID_BULK,  # `$a`
    "Bulk string length out of range": _INVALID_BULK,  # `$-2`
}
_PREFIX = {int: ":", list: "*", float: ",", bool: "#", dict: "%", set: "~"}


def not_bulk(value: object) -> bytes:
    """Redis's protocol error for an argument that is not a bulk string."""
    if value is None:
        return _INVALID_BULK
    prefix = _PREFIX.get(type(value))
    got = f"'{prefix}'" if prefix else f"a {type(value).__name__}"
    return r.error(f"ERR Protocol error: expected '$', got {got}")


def parse_error(err: Exception) -> bytes:
    """The reply to what hiredis could not parse (a ProtocolError, or a MemoryError from an absurd array length),
    in Redis's words."""
    if isinstance(err, MemoryError):
        return _INVALID_MULTIBULK
    if (known := _REDIS_WORDS.get(str(err))) is not None:
        return known
    refused = _REFUSED_TYPE.search(str(err))
    if refused:  # Redis's words for a byte where an argument's '$' should be (escaped as hiredis shows it)
        return r.error(f"ERR Protocol error: expected '$', got '{refused[1]}'")
    return r.error(f"ERR Protocol error: {err}")


def first_request(buf: bytearray) -> int | bytes | None:
    """Walk the headers of the first request in `buf` as Redis does for a client that has not authenticated:
    Redis's error when it breaks a limit above, else its length once it is complete (0 until then); None when it
    is not an array of bulk strings (hiredis, or the dispatch, refuses that)."""
    end = buf.find(b"\r\n")
    if end < 0:
        return 0
    if buf[:1] != b"*" or not _LENGTH.fullmatch(buf, 1, end):
        return None
    count = int(buf[1:end])
    if count > UNAUTHENTICATED_MAX_ARGS:
        return _UNAUTH_MULTIBULK
    pos = end + 2
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return 0
        if buf[pos:pos + 1] != b"$" or not _LENGTH.fullmatch(buf, pos + 1, end):
            return None
        size = int(buf[pos + 1:end])
        if size > UNAUTHENTICATED_MAX_BULK:
            return _UNAUTH_BULK
        if size < 0:
            return None
        pos = end + 2 + size + 2
        if pos > len(buf):
            return 0
    return pos


# Inline requests (`PING\r\n`, what telnet, `nc` and redis-benchmark's *_inline tests send): Redis reads a request
# that does not start with '*' as one line of space-separated arguments, with its quoting rules.
INLINE_MAX = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE: a longer line without its newline is refused
# What an inline request starts with: a command's letter, a quote, or a blank.
INLINE_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\"' \t\r\n")
_REFUSED_TYPE = re.compile(r'got "(.+)" as reply type byte$')  # hiredis's message, the byte escaped as in C
_INLINE_TOO_BIG = r.error("ERR Protocol error: too big inline request")
_UNBALANCED_QUOTES = r.error("ERR Protocol error: unbalanced quotes in request")
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def split_args(line: bytes) -> list[bytes] | None:
    """Redis's sdssplitargs: the arguments of an inline request, or None when its quotes do not balance."""
    args: list[bytes] = []
    pos, end = 0, len(line)
    while True:
        while pos < end and line[pos] in b" \t\n\r\v\f":
            pos += 1
        if pos == end:
            return args
        current = bytearray()
        quote = 0
        while True:
            if pos == end:
                if quote:
                    return None
                break
            c = line[pos]
            if quote == 0x22:  # "...": C escapes and \xHH
                if c == 0x5C and pos + 3 < end and line[pos + 1] == 0x78 and line[pos + 2] in _HEX \
                        and line[pos + 3] in _HEX:
                    current.append(int(line[pos + 2:pos + 4], 16))
                    pos += 3
                elif c == 0x5C and pos + 1 < end:
                    pos += 1
                    current += _ESCAPES.get(line[pos], line[pos:pos + 1])
                elif c == 0x22:
                    if pos + 1 < end and line[pos + 1] not in b" \t\n\r\v\f":
                        return None  # a closing quote must end the argument
                    pos += 1
                    break
                else:
                    current.append(c)
            elif quote == 0x27:  # '...': only \' is an escape
                if c == 0x5C and pos + 1 < end and line[pos + 1] == 0x27:
                    pos += 1
                    current.append(0x27)
                elif c == 0x27:
                    if pos + 1 < end and line[pos + 1] not in b" \t\n\r\v\f":
                        return None
                    pos += 1
                    break
                else:
                    current.append(c)
            elif c in b" \t\n\r\v\f":
                break
            elif c in (0x22, 0x27):
                quote = c
            else:
                current.append(c)
            pos += 1
        args.append(bytes(current))


def take_inline(buf: bytes) -> tuple[bytes, int, bytes | None]:
    """The requests at the head of `buf` as arrays (inline ones encoded, the arrays between them as they are), up to
    an array that has not arrived whole or that hiredis must refuse, or a line that has not arrived whole: what
    they come to, how many bytes of `buf` they were, and the error that ends the connection after them, if any.
    Blank lines are skipped, as Redis does. One pass, however often the two kinds alternate."""
    out: list[bytes] = []
    pos, size = 0, len(buf)
    while pos < size:
        if buf[pos] == 0x2A:
            array = _array_at(buf, pos)
            if array is None:
                break
            out.append(buf[pos:array[0]])
            pos = array[0]
            continue
        end = buf.find(b"\n", pos)
        if end < 0:
            return b"".join(out), pos, _INLINE_TOO_BIG if size - pos > INLINE_MAX else None
        line = buf[pos:end - 1] if end > pos and buf[end - 1] == 0x0D else buf[pos:end]
        pos = end + 1
        args = split_args(line)
        if args is None:
            return b"".join(out), pos, _UNBALANCED_QUOTES
        if args:
            out.append(encode(args))
    return b"".join(out), pos, None


def encode(request: list[bytes] | None) -> bytes:
    """A request as every client sends it: an array of bulk strings (`*-1` for None)."""
    if request is None:
        return b"*-1\r\n"
    return b"*%d\r\n" % len(request) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in request)


def inline_start(read: bytes, request: list[bytes] | None, refusal: str) -> int | None:
    """Where an inline request starts in `read`, when hiredis refused its first byte (`refusal`, its message) right
    after `request`, the last request it returned from that read: Redis takes a line that does not start with '*'
    as an inline request wherever a request may start, hiredis reads arrays only. None when the byte cannot start
    an inline request or the place is not certain: the protocol error stands."""
    found = _REFUSED_TYPE.search(refusal)
    refused = codecs.escape_decode(found[1].encode())[0] if found else b""
    if len(refused) != 1 or refused[0] not in INLINE_START:
        return None
    walked = _past_arrays(read)
    if walked is not None and walked[0] > 0 and read[walked[0]] == refused[0] and walked[1] == request:
        return walked[0]
    return _only_place_after(read, encode(request), refused)


def _past_arrays(read: bytes) -> tuple[int, list[bytes] | None] | None:
    """Where the first request in `read` that is not an array starts, and the array in front of it, as hiredis
    walks them when `read` starts where a request does; None when that walk fails (the read starts inside one)."""
    pos, size = 0, len(read)
    last: list[bytes] | None = None
    while pos < size and read[pos] == 0x2A:
        array = _array_at(read, pos, keep=True)
        if array is None:
            return None
        pos, last = array
    return (pos, last) if pos < size else None


def _array_at(buf: bytes, pos: int, keep: bool = False) -> tuple[int, list[bytes] | None] | None:
    """Where the array of bulk strings at `pos` ends, and (with `keep`) its items, None for `*-1`; None when it has
    not arrived whole or is not such an array (hiredis then waits for it, or refuses it)."""
    end = buf.find(b"\r\n", pos)
    if end < 0 or not _LENGTH.fullmatch(buf, pos + 1, end):
        return None
    count, pos = int(buf[pos + 1:end]), end + 2
    items: list[bytes] = []
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0 or buf[pos:pos + 1] != b"$" or not _LENGTH.fullmatch(buf, pos + 1, end):
            return None
        start, length = end + 2, int(buf[pos + 1:end])
        pos = start + length + 2
        if length < 0 or pos > len(buf) or buf[pos - 2:pos] != b"\r\n":
            return None
        if keep:
            items.append(buf[start:pos - 2])
    return pos, None if count < 0 else items


def _only_place_after(read: bytes, encoded: bytes, refused: bytes) -> int | None:
    """For a read that goes on with a request begun in an earlier one: the one position where `encoded` (the last
    request) ends and `refused` follows; None when there is none or more than one (an array encoded unlike every
    client encodes one, a value holding the same bytes, or the same request and byte again further on)."""
    start = None
    pos = read.find(refused, 1)  # the request ended in this read: at least one byte of it is in front
    while pos >= 0:
        if read.endswith(encoded, 0, pos) or (pos < len(encoded) and encoded.endswith(read[:pos])):
            if start is not None:
                return None
            start = pos
        pos = read.find(refused, pos + 1)
    return start
