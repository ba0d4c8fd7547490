"""String commands: GET, SET and the read-modify-write family, with Redis's exact argument rules."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import numpy as np

from service.cache import load_each
from service.origin import OriginError
from service.origin.base import MAX_OBJECT_BYTES
from service.resp import replies as r
from service.resp.commands import Command, Reply, floats
from service.store import ValueTooLarge, entry_size, now_ms

if TYPE_CHECKING:
    from service.resp.connection import RespConnection

LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)
_INT_RE = re.compile(rb"0|-?[1-9][0-9]{0,18}")
_NOT_FLOAT = r.error("ERR value is not a valid float")


def parse_int(value: bytes) -> int | None:
    """Redis's string2ll: canonical base-10 signed 64-bit integers only (no '+', spaces, leading zeros)."""
    if not _INT_RE.fullmatch(value):  # fullmatch: "$" would let a trailing newline through
        return None
    number = int(value)
    return number if LLONG_MIN <= number <= LLONG_MAX else None


def _origin_error(err: OriginError) -> bytes:
    return r.error(f"ERR origin: {err}")


async def _read_through(conn: RespConnection, key: bytes) -> bytes:
    try:
        value = await conn.tenant.read_through(key)
    except OriginError as err:
        return _origin_error(err)
    return conn.null if value is None else r.bulk(value)


def get(conn: RespConnection, args: list[bytes]) -> Reply:
    tenant = conn.tenant
    value = tenant.store.get(args[1])
    if value is not None:
        record = tenant.record_hit
        if record is not None:
            record(args[1])
        return r.bulk(value)
    record = tenant.record_miss
    if record is not None:
        record(args[1])
    if not tenant.reads_through or conn.cache_only:
        return conn.null
    return _read_through(conn, args[1])


async def _mget_through(conn: RespConnection, keys: list[bytes], values: list[bytes | None]) -> bytes:
    missing = [i for i, v in enumerate(values) if v is None]
    loaded = await load_each(conn.tenant.read_through, [keys[i] for i in missing])
    for i, result in zip(missing, loaded, strict=False):  # stops short only after an error
        if isinstance(result, OriginError):
            return _origin_error(result)
        if isinstance(result, Exception):
            raise result
        values[i] = result
    return r.array(conn.null if v is None else r.bulk(v) for v in values)


def mget(conn: RespConnection, args: list[bytes]) -> Reply:
    store = conn.tenant.store
    keys = args[1:]
    values = [store.get(k) for k in keys]
    hit, miss = conn.tenant.record_hit, conn.tenant.record_miss
    if hit is not None and miss is not None:
        for key, value in zip(keys, values, strict=True):
            (miss if value is None else hit)(key)
    if conn.tenant.reads_through and not conn.cache_only and None in values:
        return _mget_through(conn, keys, values)
    return r.array(conn.null if v is None else r.bulk(v) for v in values)


def _expiry_ms(name: str, raw: bytes, unit_ms: int, absolute: bool) -> int | bytes:
    """An absolute deadline in ms, or the error reply Redis gives for this expire argument."""
    number = parse_int(raw)
    if number is None:
        return r.NOT_INTEGER
    if number <= 0 or (unit_ms == 1000 and number > LLONG_MAX // 1000):
        return r.invalid_expire(name)
    number *= unit_ms
    if not absolute:
        now = now_ms()
        if number > LLONG_MAX - now:
            return r.invalid_expire(name)
        number += now
    return number


_SET_EXPIRE_UNITS = {b"EX": (1000, False), b"PX": (1, False), b"EXAT": (1000, True), b"PXAT": (1, True)}


def set_(conn: RespConnection, args: list[bytes]) -> Reply:
    if len(args) == 3:  # the common case, without options
        try:
            conn.tenant.store.set(args[1], args[2])
        except ValueTooLarge:
            return r.OOM
        return r.OK
    nx = xx = want_get = keep_ttl = False
    expire_opt: bytes | None = None
    expire_raw = b""
    i, argc = 3, len(args)
    while i < argc:
        opt = args[i].upper()
        has_next = i + 1 < argc
        if opt == b"NX" and not xx:
            nx = True
        elif opt == b"XX" and not nx:
            xx = True
        elif opt == b"GET":
            want_get = True
        elif opt == b"KEEPTTL" and expire_opt is None:
            keep_ttl = True
        elif opt in _SET_EXPIRE_UNITS and not keep_ttl and expire_opt in (None, opt) and has_next:
            expire_opt, expire_raw = opt, args[i + 1]
            i += 1
        else:
            return r.SYNTAX
        i += 1
    deadline = 0
    if expire_opt is not None:
        unit_ms, absolute = _SET_EXPIRE_UNITS[expire_opt]
        parsed = _expiry_ms("set", expire_raw, unit_ms, absolute)
        if isinstance(parsed, bytes):
            return parsed
        deadline = parsed
    store = conn.tenant.store
    key = args[1]
    old = store.entry(key) if (want_get or nx or xx) else None
    reply = (conn.null if old is None else r.bulk(old.value)) if want_get else r.OK
    if (nx and old is not None) or (xx and old is None):
        return reply if want_get else conn.null
    return _write(conn, key, args[2], deadline, keep_ttl) or reply


def _write(conn: RespConnection, key: bytes, value: bytes, deadline: int = 0, keep_ttl: bool = False) -> bytes | None:
    """Store a value; the OOM reply when it cannot fit the tenant's budget, else None."""
    try:
        conn.tenant.store.set(key, value, deadline, keep_ttl=keep_ttl)
    except ValueTooLarge:
        return r.OOM
    return None


def _set_expiring(conn: RespConnection, args: list[bytes], name: str, unit_ms: int) -> Reply:
    deadline = _expiry_ms(name, args[2], unit_ms, absolute=False)
    if isinstance(deadline, bytes):
        return deadline
    return _write(conn, args[1], args[3], deadline) or r.OK


def setex(conn: RespConnection, args: list[bytes]) -> Reply:
    return _set_expiring(conn, args, "setex", 1000)


def psetex(conn: RespConnection, args: list[bytes]) -> Reply:
    return _set_expiring(conn, args, "psetex", 1)


def setnx(conn: RespConnection, args: list[bytes]) -> Reply:
    if conn.tenant.store.entry(args[1]) is not None:
        return r.ZERO
    return _write(conn, args[1], args[2]) or r.ONE


def getset(conn: RespConnection, args: list[bytes]) -> Reply:
    old = conn.tenant.store.entry(args[1])
    reply = conn.null if old is None else r.bulk(old.value)  # before the write, which updates the entry in place
    return _write(conn, args[1], args[2]) or reply


_PERSIST = b"PERSIST"


def _getex_options(args: list[bytes]) -> tuple[bytes | None, bytes] | bytes:
    """GETEX's (option, its argument) after Redis's rules (one kind of expiry, or PERSIST; the same option may
    repeat, the last one counts), or its syntax error."""
    chosen: bytes | None = None
    raw = b""
    i, argc = 2, len(args)
    while i < argc:
        opt = args[i].upper()
        if opt in _SET_EXPIRE_UNITS and chosen in (None, opt) and i + 1 < argc:
            chosen, raw = opt, args[i + 1]
            i += 1
        elif opt == _PERSIST and chosen in (None, opt):
            chosen = opt
        else:
            return r.SYNTAX
        i += 1
    return chosen, raw


def getex(conn: RespConnection, args: list[bytes]) -> Reply:
    """GET, then set or clear the key's expiry. A miss reads through as GET does; an invalid expiry is reported
    only for a key that exists, as Redis does."""
    options = _getex_options(args)
    if isinstance(options, bytes):
        return options
    reply = get(conn, args[:2])
    if isinstance(reply, bytes):
        return _expire_after_get(conn, args[1], options, reply)
    return _getex_through(conn, args[1], options, reply)


async def _getex_through(conn: RespConnection, key: bytes, options: tuple[bytes | None, bytes],
                         pending: Awaitable[bytes]) -> bytes:
    return _expire_after_get(conn, key, options, await pending)


def _expire_after_get(conn: RespConnection, key: bytes, options: tuple[bytes | None, bytes], reply: bytes) -> bytes:
    option, raw = options
    if option is None or reply == conn.null or reply.startswith(b"-"):  # nothing to expire, or an origin error
        return reply
    store = conn.tenant.store
    if option == _PERSIST:
        store.expire_at(key, 0)
        return reply
    unit_ms, absolute = _SET_EXPIRE_UNITS[option]
    deadline = _expiry_ms("getex", raw, unit_ms, absolute)
    if isinstance(deadline, bytes):
        return deadline
    store.expire_at(key, deadline)  # a deadline already past (EXAT 1) deletes the key, as in Redis
    return reply


def getrange(conn: RespConnection, args: list[bytes]) -> Reply:
    """A byte range of the value, Redis's inclusive and negative-from-the-end indexes. A miss reads through to
    the origin as GET does (Redis answers "" for a missing key): a range of a cached object is the object's."""
    start, end = parse_int(args[2]), parse_int(args[3])
    if start is None or end is None:
        return r.NOT_INTEGER
    reply = get(conn, args[:2])
    if isinstance(reply, bytes):
        return _range_of(conn, reply, start, end)
    return _getrange_through(conn, reply, start, end)


async def _getrange_through(conn: RespConnection, pending: Awaitable[bytes], start: int, end: int) -> bytes:
    return _range_of(conn, await pending, start, end)


def _range_of(conn: RespConnection, reply: bytes, start: int, end: int) -> bytes:
    if reply.startswith(b"-"):  # the origin's error
        return reply
    value = b"" if reply == conn.null else reply[reply.index(b"\r\n") + 2:-2]  # GET's bulk reply, unwrapped
    size = len(value)
    if start < 0 and end < 0 and start > end:
        return r.bulk(b"")
    start, end = max(start + size if start < 0 else start, 0), max(end + size if end < 0 else end, 0)
    end = min(end, size - 1)
    return r.bulk(b"" if start > end or size == 0 else value[start:end + 1])


def _mset_all(conn: RespConnection, args: list[bytes], name: str, only_new: bool) -> Reply:
    """MSET and MSETNX write all pairs or none: a value over the budget is refused before the first write."""
    if len(args) % 2 == 0:
        return r.wrong_arity(name)
    store = conn.tenant.store
    pairs = [(args[i], args[i + 1]) for i in range(1, len(args), 2)]
    if not all(store.fits(key, value) for key, value in pairs):
        return r.OOM
    if only_new and any(store.entry(key) is not None for key, _ in pairs):
        return r.ZERO
    for key, value in pairs:
        store.set(key, value)
    return r.ONE if only_new else r.OK


def mset(conn: RespConnection, args: list[bytes]) -> Reply:
    return _mset_all(conn, args, "mset", only_new=False)


def msetnx(conn: RespConnection, args: list[bytes]) -> Reply:
    return _mset_all(conn, args, "msetnx", only_new=True)


def getdel(conn: RespConnection, args: list[bytes]) -> Reply:
    store = conn.tenant.store
    value = store.get(args[1])
    if value is None:
        return conn.null
    store.delete(args[1])
    return r.bulk(value)


def append(conn: RespConnection, args: list[bytes]) -> Reply:
    entry = conn.tenant.store.entry(args[1])
    value = args[2] if entry is None else entry.value + args[2]
    return _write(conn, args[1], value, keep_ttl=True) or r.integer(len(value))


def strlen(conn: RespConnection, args: list[bytes]) -> Reply:
    entry = conn.tenant.store.entry(args[1])
    return r.integer(0 if entry is None else len(entry.value))


def _incr_by(conn: RespConnection, key: bytes, delta: int) -> bytes:
    entry = conn.tenant.store.entry(key)
    current = 0
    if entry is not None:
        parsed = parse_int(entry.value)
        if parsed is None:
            return r.NOT_INTEGER
        current = parsed
    if (delta < 0 and current < 0 and delta < LLONG_MIN - current) or (
        delta > 0 and current > 0 and delta > LLONG_MAX - current
    ):
        return r.OVERFLOW
    result = current + delta
    return _write(conn, key, b"%d" % result, keep_ttl=True) or r.integer(result)


def incr(conn: RespConnection, args: list[bytes]) -> Reply:
    return _incr_by(conn, args[1], 1)


def decr(conn: RespConnection, args: list[bytes]) -> Reply:
    return _incr_by(conn, args[1], -1)


def incrby(conn: RespConnection, args: list[bytes]) -> Reply:
    delta = parse_int(args[2])
    return r.NOT_INTEGER if delta is None else _incr_by(conn, args[1], delta)


def decrby(conn: RespConnection, args: list[bytes]) -> Reply:
    delta = parse_int(args[2])
    if delta is None:
        return r.NOT_INTEGER
    if delta == LLONG_MIN:
        return r.error("ERR decrement would overflow")
    return _incr_by(conn, args[1], -delta)


def incrbyfloat(conn: RespConnection, args: list[bytes]) -> Reply:
    """Redis's long double sum, printed as Redis prints it (service/resp/commands/floats.py)."""
    entry = conn.tenant.store.entry(args[1])
    current = floats.parse(entry.value) if entry is not None else np.longdouble(0)
    increment = floats.parse(args[2])
    if current is None or increment is None:
        return _NOT_FLOAT
    total = current + increment
    if not np.isfinite(total):
        return r.error("ERR increment would produce NaN or Infinity")
    value = floats.human(total)
    return _write(conn, args[1], value, keep_ttl=True) or r.bulk(value)


def setrange(conn: RespConnection, args: list[bytes]) -> Reply:
    """Overwrite part of the value from `offset`, padding a shorter one with zero bytes; the new length."""
    offset = parse_int(args[2])
    if offset is None:
        return r.NOT_INTEGER
    if offset < 0:
        return r.error("ERR offset is out of range")
    patch, store = args[3], conn.tenant.store
    entry = store.entry(args[1])
    current = b"" if entry is None else entry.value
    if not patch:  # nothing written: a missing key stays missing
        return r.integer(len(current))
    if offset + len(patch) > MAX_OBJECT_BYTES:  # Redis's proto-max-bulk-len
        return r.error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    if entry_size(args[1], b"") + max(len(current), offset + len(patch)) > store.budget:
        return r.OOM  # before the padding is built: a 30-byte request could have the loop allocate a gigabyte
    value = current[:offset].ljust(offset, b"\0") + patch + current[offset + len(patch):]
    return _write(conn, args[1], value, keep_ttl=True) or r.integer(len(value))


def _cmd(name: str, arity: int, flags: str, handler, summary: str, since: str = "1.0.0", last_key: int = 1,
         step: int = 1):
    return Command(name, arity, frozenset(flags.split()), handler, 1, last_key, step, "string", summary, since)


COMMANDS = [
    _cmd("get", 2, "readonly fast", get, "Returns the string value of a key."),
    _cmd("set", -3, "write denyoom", set_, "Sets the string value of a key, ignoring its type."),
    _cmd("mget", -2, "readonly fast", mget, "Atomically returns the string values of one or more keys.", last_key=-1),
    _cmd("setex", 4, "write denyoom", setex, "Sets the string value and expiration time of a key.", "2.0.0"),
    _cmd("psetex", 4, "write denyoom", psetex, "Sets both string value and expiration time in milliseconds of a key.",
         "2.6.0"),
    _cmd("setnx", 3, "write denyoom fast", setnx, "Set the string value of a key only when the key doesn't exist."),
    _cmd("getset", 3, "write denyoom fast", getset, "Returns the previous string value of a key after setting it to a "
         "new value."),
    _cmd("getex", -2, "write fast", getex, "Returns the string value of a key after setting its expiration time.",
         "6.2.0"),
    _cmd("mset", -3, "write denyoom", mset, "Atomically creates or modifies the string values of keys.", "1.0.1", -1,
         2),
    _cmd("msetnx", -3, "write denyoom", msetnx, "Atomically modifies the string values of one or more keys only when "
         "all keys don't exist.", "1.0.1", -1, 2),
    _cmd("getdel", 2, "write fast", getdel, "Returns the string value of a key after deleting the key.", "6.2.0"),
    _cmd("getrange", 4, "readonly", getrange, "Returns a substring of the string stored at a key.", "2.4.0"),
    _cmd("substr", 4, "readonly", getrange, "Returns a substring from a string value.", "1.0.0"),
    _cmd("append", 3, "write denyoom", append, "Appends a string to the value of a key.", "2.0.0"),
    _cmd("strlen", 2, "readonly fast", strlen, "Returns the length of a string value.", "2.2.0"),
    _cmd("incr", 2, "write denyoom fast", incr, "Increments the integer value of a key by one."),
    _cmd("decr", 2, "write denyoom fast", decr, "Decrements the integer value of a key by one."),
    _cmd("incrby", 3, "write denyoom fast", incrby, "Increments the integer value of a key by a number."),
    _cmd("decrby", 3, "write denyoom fast", decrby, "Decrements a number from the integer value of a key."),
    _cmd("incrbyfloat", 3, "write denyoom fast", incrbyfloat, "Increment the floating point value of a key by a "
         "number.", "2.6.0"),
    _cmd("setrange", 4, "write denyoom", setrange, "Overwrites a part of a string value with another by an offset.",
         "2.2.0"),
]
