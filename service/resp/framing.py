"""Redis's framing of requests, where hiredis's differs: Redis's limits before AUTH, arguments that are not bulk
strings, and requests that are not arrays.

hiredis parses any RESP value, so an argument can arrive as an integer, a null or a nested array; Redis refuses
those while parsing, before any command sees them, and closes the connection. Doing the same keeps handlers
(which take bytes) from failing on them, and an unauthenticated client from filling the log with their tracebacks.
Redis reads a request that does not start with '*' as an inline one (`PING\\r\\n`, `+PING`, `$4`), and skips the two
bytes after a bulk string's data unread, so `$3\\r\\nGETX\\r\\n` leaves `\\n`, an empty inline request. `take_requests`
reads requests exactly as Redis's processMultibulkBuffer and processInlineBuffer do and hands hiredis arrays it reads
alike; the connection uses it where a read starts a request and is not plain arrays (service/resp/connection.py).
"""

from __future__ import annotations

import codecs
import re

import hiredis

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
_STRING2LL = re.compile(rb"0|-?[1-9][0-9]{0,18}")
_INT_MAX = (1 << 31) - 1  # Redis's largest multibulk count
PROTO_MAX_BULK_LEN = 512 * 1024 * 1024  # Redis's proto-max-bulk-len: a longer argument is refused at its header

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
_TOO_BIG_MULTIBULK = r.error("ERR Protocol error: too big mbulk count string")
_TOO_BIG_BULK_COUNT = r.error("ERR Protocol error: too big bulk count string")
_PREFIX = {int: ":", list: "*", float: ",", bool: "#", dict: "%", set: "~", hiredis.ReplyError: "-",
           hiredis.PushNotification: ">"}


class Malformed(Exception):
    """A request hiredis parsed that Redis refuses while parsing; `reply` is Redis's error."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


def _expected_bulk(byte: int) -> bytes:
    """Redis's error for a byte where an argument's '$' should be: the byte as it is, a CR or LF as a space."""
    shown = b" " if byte in (0x0A, 0x0D) else bytes((byte,))
    return b"-ERR Protocol error: expected '$', got '" + shown + b"'\r\n"


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
        byte = codecs.escape_decode(refused[1].encode())[0]
        if len(byte) == 1:
            return _expected_bulk(byte[0])
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


def take_requests(buf: bytes, max_args: int) -> tuple[bytes, int, bytes | None, bool]:
    """Redis's framing of the requests at the head of `buf` (which starts where a request does), as arrays of bulk
    strings hiredis reads as Redis would: what they come to, how many bytes of `buf` they were, the error that ends
    the connection after them, if any, and whether the rest must be held until more arrives (a line, or an array
    hiredis would read otherwise) rather than fed to hiredis (an array so far plain: its headers are checked as they
    come, service/resp/connection.py). One pass, however the kinds alternate. Redis's limits before AUTH are not
    applied here: the connection checks them request by request, as AUTH may come between (first_request)."""
    out: list[bytes] = []
    pos, size = 0, len(buf)
    while pos < size:
        if buf[pos] == 0x2A:
            taken = _multibulk(buf, pos, max_args)
            if isinstance(taken, bytes):
                return b"".join(out), pos, taken, False
            if not isinstance(taken, tuple):
                return b"".join(out), pos, None, taken is False
            end, request, _plain = taken
            out.append(request)
            pos = end
            continue
        end = buf.find(b"\n", pos)
        if end >= 0 and buf.find(b"\0", pos, end) >= 0:
            end = -1  # Redis looks for the newline with strchr, which stops at a NUL: it waits for 64 KiB
        if end < 0:
            return b"".join(out), pos, _INLINE_TOO_BIG if size - pos > INLINE_MAX else None, True
        line = buf[pos:end - 1] if end > pos and buf[end - 1] == 0x0D else buf[pos:end]
        pos = end + 1
        args = split_args(line)
        if args is None:
            return b"".join(out), pos, _UNBALANCED_QUOTES, False
        if args:
            out.append(encode(args))
    return b"".join(out), pos, None, False


def encode(request: list[bytes] | None) -> bytes:
    """A request as every client sends it: an array of bulk strings (`*-1` for None)."""
    if request is None:
        return b"*-1\r\n"
    return b"*%d\r\n" % len(request) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in request)


def _header(buf: bytes, pos: int) -> int | None:
    """Where the '\\r' that ends the header line at `pos` is, found as Redis finds it (strchr: a NUL before it hides
    it), once the byte after it has arrived too; None until then."""
    end = buf.find(b"\r", pos)
    if end < 0 or end + 1 >= len(buf) or buf.find(b"\0", pos, end) >= 0:
        return None
    return end


def _integer(buf: bytes, start: int, end: int) -> int | None:
    """Redis's string2ll: a long long with no sign but '-', no leading zero, no '-0'; None otherwise."""
    if not _STRING2LL.fullmatch(buf, start, end):
        return None
    value = int(buf[start:end])
    return value if -(1 << 63) <= value < 1 << 63 else None


def _multibulk(buf: bytes, pos: int, max_args: int) -> tuple[int, bytes, bool] | bytes | bool | None:
    """The array request at `pos` read as Redis's processMultibulkBuffer reads it: where it ends, what hiredis must be
    fed for it (b"" for one Redis skips), and whether hiredis reads its bytes as they are the same way; Redis's error
    as soon as one shows; while it has not arrived whole, None where hiredis reads what has come as Redis does, else
    False."""
    size = len(buf)
    end = _header(buf, pos)
    if end is None:
        return _TOO_BIG_MULTIBULK if size - pos > INLINE_MAX else _waiting(buf, pos, True)
    count = _integer(buf, pos + 1, end)
    if count is None or count > _INT_MAX:
        return _INVALID_MULTIBULK
    if count > max_args:  # this service's limit (Settings.max_request_args), under Redis's 2^31 - 1
        return _INVALID_MULTIBULK
    plain = buf[end + 1] == 0x0A
    start, pos = pos, end + 2
    if count <= 0:  # Redis skips it, `*-5` as `*0`; hiredis refuses a count under -1
        return pos, b"", plain and count >= -1
    args: list[bytes] = []
    for _ in range(count):
        end = _header(buf, pos)
        if end is None:
            return _TOO_BIG_BULK_COUNT if size - pos > INLINE_MAX else _waiting(buf, pos, plain)
        if buf[pos] != 0x24:
            return _expected_bulk(buf[pos])
        length = _integer(buf, pos + 1, end)
        if length is None or length < 0 or length > PROTO_MAX_BULK_LEN:
            return _INVALID_BULK
        plain = plain and buf[end + 1] == 0x0A
        data = end + 2
        pos = data + length + 2  # the two bytes after the data are skipped unread, by Redis and by hiredis alike
        if pos > size:
            return None if plain else False
        args.append(buf[data:data + length])
    return pos, buf[start:pos] if plain else encode(args), plain


def refusal_in_progress(kind: bytes, nested: bool, head: bytes) -> bytes | None:
    """Redis's error for the argument hiredis is still reading (service/resp/reader.py's element_in_progress), when
    Redis would already have refused it: a nested aggregate, another type once its line has come, or a bulk string
    longer than Redis takes. None when Redis would wait too."""
    if nested:
        return _expected_bulk(kind[0])
    end = _header(head, 0) if head else None
    if end is None:
        return None
    if kind != b"$":
        return _expected_bulk(kind[0])
    length = _integer(head, 0, end)
    return _INVALID_BULK if length is not None and length > PROTO_MAX_BULK_LEN else None


def _waiting(buf: bytes, pos: int, plain: bool) -> bool | None:
    """For an array waiting for its header line at `pos`: None when hiredis may read it as Redis will (a NUL in
    the line, which hides its end from Redis, or a CR not followed by LF, and it would not), else False."""
    end = buf.find(b"\r", pos)
    line = buf[pos:] if end < 0 else buf[pos:end + 2]
    return None if plain and b"\0" not in line and (end < 0 or line.endswith(b"\r\n") or end + 1 == len(buf)) \
        else False


def hiredis_prefix(read: bytes) -> tuple[int, list[bytes] | None]:
    """For a read that starts where a request does: where the first request hiredis may read otherwise than Redis
    starts (one that is not an array, or not of bulk strings, or not whole), and the last array in front of it, as
    hiredis returned it (None if there is none)."""
    pos, size = 0, len(read)
    last: list[bytes] | None = None
    while pos < size and read[pos] == 0x2A:
        taken = _multibulk(read, pos, _INT_MAX)
        if not isinstance(taken, tuple) or not taken[2]:
            break
        end = read.find(b"\r\n", pos)
        count = int(read[pos + 1:end])
        last = None if count < 0 else _items(read, end + 2, count)
        pos = taken[0]
    return pos, last


def _items(buf: bytes, pos: int, count: int) -> list[bytes]:
    """The arguments of a plain array whose first one starts at `pos`."""
    items = []
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        data = end + 2
        pos = data + int(buf[pos + 1:end]) + 2
        items.append(buf[data:pos - 2])
    return items


def inline_start(read: bytes, request: list[bytes] | None, refusal: str) -> int | None:
    """For a read that goes on with a request begun in an earlier one, where an inline request starts in it, when
    hiredis refused its first byte (`refusal`, its message) right after `request`, the last request it returned from
    that read. None when the byte cannot start an inline request or the place is not certain: the error stands."""
    found = _REFUSED_TYPE.search(refusal)
    refused = codecs.escape_decode(found[1].encode())[0] if found else b""
    if len(refused) != 1 or refused[0] not in INLINE_START:
        return None
    return _only_place_after(read, encode(request), refused)


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
