"""RESP reply encoding. Replies are bytes built once; RESP2/RESP3 differences are confined to nulls and maps."""

from __future__ import annotations

from collections.abc import Iterable

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NULL2 = b"$-1\r\n"
NULL3 = b"_\r\n"
NULL_ARRAY2 = b"*-1\r\n"
QUEUED = b"+QUEUED\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"
EMPTY_ARRAY = b"*0\r\n"


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def simple(text: str) -> bytes:
    return b"+" + text.encode() + b"\r\n"


def error(text: str) -> bytes:
    """An error line; `text` starts with its code (ERR, WRONGTYPE, NOAUTH, ...)."""
    return b"-" + text.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def array(items: Iterable[bytes]) -> bytes:
    parts = list(items)
    return b"*%d\r\n" % len(parts) + b"".join(parts)


def mapping(pairs: list[tuple[bytes, bytes]], resp3: bool) -> bytes:
    """A map in RESP3, a flat key/value array in RESP2 (what Redis sends to each)."""
    head = b"%%%d\r\n" % len(pairs) if resp3 else b"*%d\r\n" % (2 * len(pairs))
    return head + b"".join(k + v for k, v in pairs)


def set_of(items: list[bytes], resp3: bool) -> bytes:
    return (b"~%d\r\n" % len(items) if resp3 else b"*%d\r\n" % len(items)) + b"".join(items)


def verbatim(text: str, resp3: bool) -> bytes:
    """INFO and friends: a verbatim string in RESP3, a bulk string in RESP2."""
    data = text.encode()
    if resp3:
        return b"=%d\r\ntxt:%b\r\n" % (len(data) + 4, data)
    return bulk(data)


# Error texts, exactly as Redis 7 words them.
NOT_INTEGER = error("ERR value is not an integer or out of range")
NOT_INT32 = error("ERR value is out of range, value must between -2147483648 and 2147483647")  # a C int argument
SYNTAX = error("ERR syntax error")
NOAUTH = error("NOAUTH Authentication required.")
WRONGPASS = error("WRONGPASS invalid username-password pair or user is disabled.")
OOM = error("OOM command not allowed when used memory > 'maxmemory'.")
OVERFLOW = error("ERR increment or decrement would overflow")


def wrong_arity(name: str) -> bytes:
    return error(f"ERR wrong number of arguments for '{name}' command")


def invalid_expire(name: str) -> bytes:
    return error(f"ERR invalid expire time in '{name}' command")


def unknown_command(args: list[bytes]) -> bytes:
    shown = b""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += b"'" + arg[: 128 - len(shown)] + b"' "
    text = b"ERR unknown command '" + args[0][:128] + b"', with args beginning with: " + shown
    return b"-" + text.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def unknown_subcommand(command: str, sub: bytes) -> bytes:
    return error(f"ERR unknown subcommand '{sub[:128].decode('utf-8', 'replace')}'. Try {command.upper()} HELP.")


def no_permission(command: str, scope: str) -> bytes:
    """Redis's NOPERM (client libraries raise their permission error on it), naming the scope to issue."""
    return error(f"NOPERM this API key has no permissions to run the '{command}' command: it needs the '{scope}' "
                 "scope")
