"""Key lifecycle commands: DEL, EXISTS and the TTL family, with Redis 7's option and overflow rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.resp import replies as r
from service.resp.commands import Command, Reply
from service.resp.commands.strings import LLONG_MAX, LLONG_MIN, parse_int
from service.store import now_ms

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


def _expire(conn: RespConnection, args: list[bytes], name: str, unit_ms: int) -> Reply:
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


def _ttl(conn: RespConnection, key: bytes, in_ms: bool) -> bytes:
    entry = conn.tenant.store.entry(key)
    if entry is None:
        return r.integer(-2)
    if not entry.expires_at:
        return r.integer(-1)
    remaining = max(entry.expires_at - now_ms(), 0)
    return r.integer(remaining if in_ms else (remaining + 500) // 1000)


def ttl(conn: RespConnection, args: list[bytes]) -> Reply:
    return _ttl(conn, args[1], in_ms=False)


def pttl(conn: RespConnection, args: list[bytes]) -> Reply:
    return _ttl(conn, args[1], in_ms=True)


def persist(conn: RespConnection, args: list[bytes]) -> Reply:
    store = conn.tenant.store
    entry = store.entry(args[1])
    if entry is None or not entry.expires_at:
        return r.ZERO
    store.expire_at(args[1], 0)
    return r.ONE


def _cmd(name: str, arity: int, flags: str, handler, summary: str, since: str = "1.0.0", last_key: int = 1):
    first = 0 if name == "dbsize" else 1
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
]
