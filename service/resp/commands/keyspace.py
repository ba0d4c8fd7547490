"""Key lifecycle commands: DEL, EXISTS, the TTL family (Redis 7's option and overflow rules), RENAME, COPY, KEYS,
SCAN and RANDOMKEY."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, cast

from service.resp import replies as r
from service.resp.commands import Command, Reply
from service.resp.commands.strings import LLONG_MAX, LLONG_MIN, parse_int
from service.store import now_ms
from service.store.pattern import PatternTooLong, compile_glob

if TYPE_CHECKING:
    from service.resp.connection import RespConnection


def delete(conn: RespConnection, args: list[bytes]) -> Reply:
    store = conn.tenant.store
    return r.integer(sum(1 for key in args[1:] if store.delete(key)))


def exists(conn: RespConnection, args: list[bytes]) -> Reply:
    store = conn.tenant.store
    return r.integer(sum(1 for key in args[1:] if key in store))


_STRING, _NONE = r.simple("string"), r.simple("none")


def type_(conn: RespConnection, args: list[bytes]) -> Reply:
    return _STRING if args[1] in conn.tenant.store else _NONE  # a cache of strings only


def touch(conn: RespConnection, args: list[bytes]) -> Reply:
    store = conn.tenant.store
    return r.integer(sum(1 for key in args[1:] if store.touch(key)))


def dbsize(conn: RespConnection, args: list[bytes]) -> Reply:
    return r.integer(len(conn.tenant.store))


_EXPIRE_FLAGS = (b"NX", b"XX", b"GT", b"LT")


def _expire(conn: RespConnection, args: list[bytes], name: str, unit_ms: int, absolute: bool = False) -> Reply:
    flags = set()
    for raw in args[3:]:
        opt = raw.upper()
        if opt not in _EXPIRE_FLAGS:
            return r.error(f"ERR Unsupported option {raw.decode('utf-8', 'replace')}")
        flags.add(opt)
    if b"NX" in flags and len(flags) > 1:
        return r.error("ERR NX and XX, GT or LT options at the same time are not compatible")
    if b"GT" in flags and b"LT" in flags:
        return r.error("ERR GT and LT options at the same time are not compatible")
    when = parse_int(args[2])
    if when is None:
        return r.NOT_INTEGER
    if unit_ms == 1000:
        if when > LLONG_MAX // 1000 or when < -(-LLONG_MIN // 1000):
            return r.invalid_expire(name)
        when *= 1000
    now = now_ms()
    if not absolute:
        if when > LLONG_MAX - now:
            return r.invalid_expire(name)
        when += now
    store = conn.tenant.store
    entry = store.entry(args[1])
    if entry is None:
        return r.ZERO
    current = entry.expires_at or None
    if (
        (b"NX" in flags and current is not None)
        or (b"XX" in flags and current is None)
        or (b"GT" in flags and (current is None or when <= current))
        or (b"LT" in flags and current is not None and when >= current)
    ):
        return r.ZERO
    if when <= now:
        store.delete(args[1])
    else:
        store.expire_at(args[1], when)
    return r.ONE


def expire(conn: RespConnection, args: list[bytes]) -> Reply:
    return _expire(conn, args, "expire", 1000)


def pexpire(conn: RespConnection, args: list[bytes]) -> Reply:
    return _expire(conn, args, "pexpire", 1)


def expireat(conn: RespConnection, args: list[bytes]) -> Reply:
    return _expire(conn, args, "expireat", 1000, absolute=True)


def pexpireat(conn: RespConnection, args: list[bytes]) -> Reply:
    return _expire(conn, args, "pexpireat", 1, absolute=True)


def _ttl(conn: RespConnection, key: bytes, in_ms: bool, absolute: bool = False) -> bytes:
    entry = conn.tenant.store.entry(key)
    if entry is None:
        return r.integer(-2)
    if not entry.expires_at:
        return r.integer(-1)
    when = entry.expires_at if absolute else max(entry.expires_at - now_ms(), 0)
    return r.integer(when if in_ms else (when + 500) // 1000)


def ttl(conn: RespConnection, args: list[bytes]) -> Reply:
    return _ttl(conn, args[1], in_ms=False)


def pttl(conn: RespConnection, args: list[bytes]) -> Reply:
    return _ttl(conn, args[1], in_ms=True)


def expiretime(conn: RespConnection, args: list[bytes]) -> Reply:
    return _ttl(conn, args[1], in_ms=False, absolute=True)


def pexpiretime(conn: RespConnection, args: list[bytes]) -> Reply:
    return _ttl(conn, args[1], in_ms=True, absolute=True)


def persist(conn: RespConnection, args: list[bytes]) -> Reply:
    store = conn.tenant.store
    entry = store.entry(args[1])
    if entry is None or not entry.expires_at:
        return r.ZERO
    store.expire_at(args[1], 0)
    return r.ONE


_NO_SUCH_KEY = r.error("ERR no such key")


def _rename(conn: RespConnection, args: list[bytes], only_new: bool) -> Reply:
    """The value and its deadline move to the new name, whatever was there goes (RENAMENX: unless something
    was). The old name goes first, so the move never needs room for two copies; a longer name that would not
    fit the tenant's budget is refused (OOM) before the old one goes, so the value is never lost."""
    store, source, target = conn.tenant.store, args[1], args[2]
    entry = store.entry(source)
    if entry is None:
        return _NO_SUCH_KEY
    if source == target:
        return r.ZERO if only_new else r.OK
    if only_new and store.entry(target) is not None:
        return r.ZERO
    value, deadline = entry.value, entry.expires_at
    if not store.fits(target, value):
        return r.OOM
    store.delete(source)
    store.set(target, value, deadline)
    return r.ONE if only_new else r.OK


def rename(conn: RespConnection, args: list[bytes]) -> Reply:
    return _rename(conn, args, only_new=False)


def renamenx(conn: RespConnection, args: list[bytes]) -> Reply:
    return _rename(conn, args, only_new=True)


def copy(conn: RespConnection, args: list[bytes]) -> Reply:
    replace = False
    i = 3
    while i < len(args):
        opt = args[i].upper()
        if opt == b"REPLACE":
            replace = True
        elif opt == b"DB" and i + 1 < len(args):
            db = parse_int(args[i + 1])
            if db is None:
                return r.NOT_INTEGER
            if not -(2**31) <= db < 2**31:
                return r.NOT_INT32
            if db != 0:  # a tenant's keys are its one database
                return r.error("ERR DB index is out of range")
            i += 1
        else:
            return r.SYNTAX
        i += 1
    store, source, target = conn.tenant.store, args[1], args[2]
    if source == target:
        return r.error("ERR source and destination objects are the same")
    entry = store.entry(source)
    if entry is None or (not replace and store.entry(target) is not None):
        return r.ZERO
    if not store.fits(target, entry.value):  # the copy alone would exceed the budget: nothing changes
        return r.OOM
    store.set(target, entry.value, entry.expires_at)
    return r.ONE


def keys(conn: RespConnection, args: list[bytes]) -> Reply:
    try:
        matches = compile_glob(args[1])
    except PatternTooLong as err:
        return r.error(f"ERR {err}")
    store = conn.tenant.store
    names = cast("list[bytes]", list(store.keys()))  # a tenant's store is keyed by bytes (the replay's by ints)
    return r.array(r.bulk(key) for key in names if matches(key) and key in store)


def randomkey(conn: RespConnection, args: list[bytes]) -> Reply:
    """A live key of the caller's tenant, drawn in O(1) (MemoryStore.random_key)."""
    key = conn.tenant.store.random_key()
    return conn.null if key is None else r.bulk(cast("bytes", key))


_ULONG_MAX = 2**64 - 1
_CURSOR_RE = re.compile(rb"[+-]?[0-9]*")
_INVALID_CURSOR = r.error("ERR invalid cursor")


def _parse_cursor(raw: bytes) -> int | None:
    """Redis's strtoul: an optional sign (a minus wraps around), digits, nothing else; the empty string is 0."""
    if not _CURSOR_RE.fullmatch(raw):
        return None
    digits = raw.lstrip(b"+-")
    value = int(digits) if digits else 0
    if value > _ULONG_MAX:
        return None
    return (-value) % 2**64 if raw.startswith(b"-") else value


def scan(conn: RespConnection, args: list[bytes]) -> Reply:
    cursor = _parse_cursor(args[1])
    if cursor is None:
        return _INVALID_CURSOR
    count, pattern, kind = 10, b"*", None
    i, argc = 2, len(args)
    while i < argc:
        opt = args[i].lower()
        if i + 1 >= argc or opt not in (b"count", b"match", b"type"):
            return r.SYNTAX
        if opt == b"count":
            parsed = parse_int(args[i + 1])
            if parsed is None:
                return r.NOT_INTEGER
            if parsed < 1:
                return r.SYNTAX
            count = parsed
        elif opt == b"match":
            pattern = args[i + 1]
        else:
            kind = args[i + 1].lower()
        i += 2
    try:
        matches = compile_glob(pattern)
    except PatternTooLong as err:
        return r.error(f"ERR {err}")
    following, listed = conn.tenant.store.scan(cursor, count)
    found = cast("list[bytes]", listed)
    if kind is not None and kind != b"string":  # a cache of strings only; Redis 7.0 filters an unknown type out
        found = []
    return r.array([r.bulk(b"%d" % following), r.array(r.bulk(key) for key in found if matches(key))])


def _cmd(name: str, arity: int, flags: str, handler, summary: str, since: str = "1.0.0", last_key: int = 1):
    first = 0 if name in ("dbsize", "keys", "scan", "randomkey") else 1
    return Command(name, arity, frozenset(flags.split()), handler, first, last_key if first else 0, first, "generic",
                   summary, since)


COMMANDS = [
    _cmd("del", -2, "write", delete, "Deletes one or more keys.", last_key=-1),
    _cmd("unlink", -2, "write fast", delete, "Asynchronously deletes one or more keys.", "4.0.0", -1),
    _cmd("exists", -2, "readonly fast", exists, "Determines whether one or more keys exist.", last_key=-1),
    _cmd("expire", -3, "write fast", expire, "Sets the expiration time of a key in seconds."),
    _cmd("pexpire", -3, "write fast", pexpire, "Sets the expiration time of a key in milliseconds.", "2.6.0"),
    _cmd("ttl", 2, "readonly fast", ttl, "Returns the expiration time in seconds of a key."),
    _cmd("pttl", 2, "readonly fast", pttl, "Returns the expiration time in milliseconds of a key.", "2.6.0"),
    _cmd("persist", 2, "write fast", persist, "Removes the expiration time of a key.", "2.2.0"),
    _cmd("type", 2, "readonly fast", type_, "Determines the type of value stored at a key."),
    _cmd("touch", -2, "readonly fast", touch, "Returns the number of existing keys out of those specified after "
         "updating the time they were last accessed.", "3.2.1", -1),
    _cmd("dbsize", 1, "readonly fast", dbsize, "Returns the number of keys in the database."),
    _cmd("expireat", -3, "write fast", expireat, "Sets the expiration time of a key to a Unix timestamp.", "1.2.0"),
    _cmd("pexpireat", -3, "write fast", pexpireat, "Sets the expiration time of a key to a Unix milliseconds "
         "timestamp.", "2.6.0"),
    _cmd("expiretime", 2, "readonly fast", expiretime, "Returns the expiration time of a key as a Unix timestamp.",
         "7.0.0"),
    _cmd("pexpiretime", 2, "readonly fast", pexpiretime, "Returns the expiration time of a key as a Unix "
         "milliseconds timestamp.", "7.0.0"),
    _cmd("rename", 3, "write", rename, "Renames a key and overwrites the destination.", last_key=2),
    _cmd("renamenx", 3, "write fast", renamenx, "Renames a key only when the target key name doesn't exist.",
         last_key=2),
    _cmd("copy", -3, "write denyoom", copy, "Copies the value of a key to a new key.", "6.2.0", 2),
    _cmd("keys", 2, "readonly", keys, "Returns all key names that match a pattern."),
    _cmd("scan", -2, "readonly", scan, "Iterates over the key names in the database.", "2.8.0"),
    _cmd("randomkey", 1, "readonly", randomkey, "Returns a random key name from the database."),
]
