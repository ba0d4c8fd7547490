"""Foresight and redis-server receive the same command sequences and must answer byte for byte alike.

The reference is Debian's redis-server (7.0), started for this module with one database, so that
SELECT's range matches Foresight's single database per tenant.
"""

from __future__ import annotations

import time

import pytest
import redis

from tests.service.harness import Cmd, RawClient, assert_same_replies

CASES: dict[str, list[Cmd]] = {
    "ping_echo": [("PING",), ("PING", "hello"), ("PING", "a", "b"), ("ECHO", "x y"), ("ECHO",), ("echo", "a", "b")],
    "unknown_commands": [("NOSUCH",), ("nosuch", "a", "b c"), ("FOO", "x" * 200, "y"), ("GETX", "k")],
    "arity": [("GET",), ("GET", "a", "b"), ("SET", "k"), ("MGET",), ("MSET", "a"), ("MSET", "a", "1", "b"),
              ("DEL",), ("EXPIRE", "k"), ("TTL",), ("INCRBY", "k"), ("APPEND", "k"), ("DBSIZE", "x")],
    "set_get": [("SET", "k", "v"), ("GET", "k"), ("GET", "missing"), ("SET", "k", ""), ("GET", "k"),
                ("SET", "bin", b"\x00\xff\r\n"), ("GET", "bin"), ("STRLEN", "bin"), ("STRLEN", "nope")],
    "set_options": [
        ("SET", "k", "v", "NX"), ("SET", "k", "v2", "NX"), ("GET", "k"), ("SET", "new", "v", "XX"),
        ("SET", "k", "v3", "XX"), ("GET", "k"), ("SET", "k", "v", "NX", "XX"), ("SET", "k", "v", "XX", "NX"),
        ("SET", "k", "v4", "GET"), ("SET", "fresh", "v", "GET"), ("SET", "k", "v", "BOGUS"),
        ("SET", "k", "v", "EX"), ("SET", "k", "v", "EX", "10", "PX", "100"), ("SET", "k", "v", "KEEPTTL", "EX", "1"),
        ("SET", "k", "v", "EX", "1", "KEEPTTL"), ("SET", "k", "v", "nx", "get"),
        ("SET", "k", "v", "EX", "5", "EX", "7"),
        ("TTL", "k"),
    ],
    "set_expire_errors": [
        ("SET", "k", "v", "EX", "0"), ("SET", "k", "v", "EX", "-5"), ("SET", "k", "v", "EX", "abc"),
        ("SET", "k", "v", "PX", "1.5"), ("SET", "k", "v", "EX", "9223372036854775807"),
        ("SET", "k", "v", "PX", "9223372036854775807"), ("SET", "k", "v", "EX", "99999999999999999999"),
        ("SET", "k", "v", "EXAT", "0"), ("GET", "k"),
    ],
    "keepttl": [("SET", "k", "v", "EX", "100"), ("SET", "k", "w", "KEEPTTL"), ("TTL", "k"), ("SET", "k", "x"),
                ("TTL", "k")],
    "integers": [
        ("SET", "n", "10"), ("INCR", "n"), ("DECR", "n"), ("INCRBY", "n", "-20"), ("DECRBY", "n", "5"),
        ("INCR", "fresh"), ("DECR", "fresh2"), ("SET", "s", "abc"), ("INCR", "s"), ("SET", "s", " 1"), ("INCR", "s"),
        ("SET", "s", "+1"), ("INCR", "s"), ("SET", "s", "01"), ("INCR", "s"), ("SET", "s", "-0"), ("INCR", "s"),
        ("INCRBY", "n", "abc"), ("INCRBY", "n", "1.5"), ("INCRBY", "n", "9223372036854775808"),
        ("SET", "max", "9223372036854775807"), ("INCR", "max"), ("INCRBY", "max", "0"),
        ("SET", "min", "-9223372036854775808"), ("DECR", "min"), ("DECRBY", "n", "-9223372036854775808"),
        ("DECRBY", "n", "-9223372036854775807"), ("SET", "big", "99999999999999999999"), ("INCR", "big"),
        ("SET", "s", "5\n"), ("INCR", "s"), ("INCRBY", "n", "1\n"), ("EXPIRE", "n", "10\n"),
        ("SCAN", "0\n"), ("SCAN", "0", "COUNT", "5\n"),
    ],
    "multi_key": [("MSET", "a", "1", "b", "2", "c", "3"), ("MGET", "a", "nope", "c"), ("EXISTS", "a", "a", "nope"),
                  ("DEL", "a", "a", "nope"), ("UNLINK", "b", "c"), ("MGET", "a", "b", "c"), ("DBSIZE",)],
    "string_ops": [("APPEND", "s", "hello"), ("APPEND", "s", " world"), ("GET", "s"), ("STRLEN", "s"),
                   ("GETDEL", "s"), ("GETDEL", "s"), ("GET", "s")],
    "expire_family": [
        ("SET", "k", "v"), ("TTL", "k"), ("PTTL", "k"), ("TTL", "nope"), ("PTTL", "nope"), ("EXPIRE", "nope", "10"),
        ("EXPIRE", "k", "100"), ("TTL", "k"), ("EXPIRE", "k", "50", "NX"), ("EXPIRE", "k", "50", "XX"), ("TTL", "k"),
        ("EXPIRE", "k", "40", "GT"), ("EXPIRE", "k", "60", "GT"), ("TTL", "k"), ("EXPIRE", "k", "70", "LT"),
        ("EXPIRE", "k", "30", "LT"), ("TTL", "k"), ("EXPIRE", "k", "10", "NX", "XX"), ("EXPIRE", "k", "10", "GT", "LT"),
        ("EXPIRE", "k", "10", "FOO"), ("EXPIRE", "k", "abc"), ("EXPIRE", "k", "abc", "FOO"),
        ("EXPIRE", "k", "9223372036854775807"), ("PEXPIRE", "k", "9223372036854775807"),
        ("PERSIST", "k"), ("PERSIST", "k"), ("TTL", "k"), ("PERSIST", "nope"), ("SET", "p", "v"),
        ("EXPIRE", "p", "10", "GT"), ("EXPIRE", "p", "10", "LT"), ("TTL", "p"), ("EXPIRE", "k", "-1"), ("GET", "k"),
        ("EXISTS", "k"), ("SET", "z", "v"), ("PEXPIRE", "z", "0"), ("EXISTS", "z"),
    ],
    "setex_setnx_getset": [
        ("SETEX", "k", "100", "v"), ("GET", "k"), ("TTL", "k"), ("SETEX", "k", "0", "v"), ("SETEX", "k", "-1", "v"),
        ("SETEX", "k", "abc", "v"), ("SETEX", "k", "9223372036854775807", "v"), ("SETEX", "k", "10"),
        ("PSETEX", "k", "100000", "w"), ("GET", "k"), ("TTL", "k"), ("PSETEX", "k", "0", "w"),
        ("PSETEX", "k", "1.5", "w"), ("PSETEX", "k", "9223372036854775807", "w"), ("SETNX", "k", "x"),
        ("SETNX", "new", "x"), ("GET", "new"), ("SETNX", "new"), ("GETSET", "k", "y"), ("TTL", "k"),
        ("GETSET", "fresh", "z"), ("GET", "fresh"), ("GETSET", "k"), ("SET", "n", "1"), ("SETNX", "n", "2"),
        ("INCR", "n"),
    ],
    "getex": [
        ("SET", "k", "v"), ("GETEX", "k"), ("TTL", "k"), ("GETEX", "k", "EX", "100"), ("TTL", "k"),
        ("GETEX", "k", "px", "50000"), ("TTL", "k"), ("GETEX", "k", "PERSIST"), ("TTL", "k"), ("GETEX", "k", "EX"),
        ("GETEX", "k", "EX", "0"), ("GETEX", "k", "EX", "-3"), ("GETEX", "k", "EX", "abc"), ("GETEX", "k", "FOO"),
        ("GETEX", "k", "EX", "9223372036854775807"), ("GETEX", "k", "EX", "10", "PX", "100"),
        ("GETEX", "k", "EX", "10", "PERSIST"), ("GETEX", "k", "PERSIST", "EX", "10"), ("GETEX", "k", "KEEPTTL"),
        ("GETEX", "k", "NX"), ("GETEX", "k", "GET"), ("GETEX", "k", "EX", "5", "EX", "7"), ("TTL", "k"),
        ("GETEX", "k", "PERSIST", "PERSIST"), ("TTL", "k"), ("GETEX", "missing", "EX", "abc"), ("GETEX", "missing"),
        ("GETEX", "k", "EXAT", "99999999999"), ("EXISTS", "k"), ("GETEX", "k", "PXAT", "1"), ("EXISTS", "k"),
        ("GETEX", "k"), ("SET", "k", "v"), ("GETEX", "k", "EXAT", "1"), ("EXISTS", "k"), ("GETEX",),
    ],
    "type_touch": [("SET", "k", "v"), ("TYPE", "k"), ("TYPE", "missing"), ("TYPE",), ("TYPE", "k", "x"),
                   ("TOUCH", "k", "k", "missing"), ("TOUCH", "missing"), ("TOUCH",)],
    "expireat_expiretime": [
        ("SET", "k", "v"), ("EXPIREAT", "k", "99999999999"), ("EXPIRETIME", "k"), ("PEXPIRETIME", "k"),
        ("EXPIREAT", "k", "99999999999", "NX"), ("PEXPIREAT", "k", "99999999999001", "GT"), ("EXPIRETIME", "k"),
        ("PEXPIRETIME", "k"), ("PEXPIREAT", "k", "99999999999000", "LT"), ("PEXPIRETIME", "k"),
        ("EXPIREAT", "k", "99999999998", "XX", "GT"), ("EXPIRETIME", "missing"), ("PEXPIRETIME", "missing"),
        ("EXPIREAT", "missing", "99999999999"), ("SET", "p", "v"), ("EXPIRETIME", "p"), ("PEXPIRETIME", "p"),
        ("EXPIREAT", "p", "99999999999", "LT"), ("SET", "p", "v"), ("EXPIREAT", "p", "1"), ("EXISTS", "p"),
        ("SET", "p", "v"), ("PEXPIREAT", "p", "0"), ("EXISTS", "p"), ("EXPIREAT", "k", "abc"),
        ("EXPIREAT", "k", "9223372036854775807"), ("EXPIREAT", "k", "-9223372036854775808"),
        ("PEXPIREAT", "k", "9223372036854775807"), ("PEXPIRETIME", "k"), ("EXPIRETIME", "k"),
        ("EXPIREAT", "k", "10", "NX", "XX"), ("EXPIREAT", "k", "10", "FOO"), ("EXPIREAT", "k"),
        ("EXPIRETIME",), ("PEXPIRETIME", "k", "x"),
    ],
    "getrange": [
        ("SET", "s", "Hello World"), ("GETRANGE", "s", "0", "4"), ("GETRANGE", "s", "-5", "-1"),
        ("GETRANGE", "s", "0", "-1"), ("GETRANGE", "s", "5", "2"), ("GETRANGE", "s", "-1", "-5"),
        ("GETRANGE", "s", "-100", "100"), ("GETRANGE", "s", "100", "200"), ("GETRANGE", "s", "0", "0"),
        ("GETRANGE", "s", "-3", "2"), ("GETRANGE", "missing", "0", "-1"), ("GETRANGE", "s", "a", "1"),
        ("GETRANGE", "s", "1", "1.5"), ("GETRANGE", "s", "1"), ("SUBSTR", "s", "0", "2"), ("SET", "e", ""),
        ("GETRANGE", "e", "0", "-1"), ("GETRANGE", "s", "9223372036854775807", "-9223372036854775808"),
        ("GETRANGE", "s", "-9223372036854775808", "9223372036854775807"), ("SET", "b", b"\x00\r\n\xff"),
        ("GETRANGE", "b", "1", "2"),
    ],
    "rename_copy": [
        ("RENAME", "nope", "b"), ("RENAMENX", "nope", "b"), ("SET", "a", "1", "EX", "100"), ("RENAME", "a", "a"),
        ("RENAMENX", "a", "a"), ("RENAME", "a", "b"), ("GET", "a"), ("GET", "b"), ("TTL", "b"), ("SET", "c", "3"),
        ("RENAMENX", "b", "c"), ("RENAMENX", "b", "z"), ("TTL", "z"), ("RENAME", "c", "z"), ("GET", "z"), ("TTL", "z"),
        ("COPY", "z", "z"), ("COPY", "nope", "k"), ("COPY", "z", "k"), ("COPY", "z", "k"),
        ("SET", "z", "4", "EX", "50"),
        ("COPY", "z", "k", "REPLACE"), ("GET", "k"), ("TTL", "k"), ("COPY", "z", "k", "DB", "0", "REPLACE"),
        ("COPY", "z", "k", "DB", "1"), ("COPY", "z", "k", "DB", "abc"), ("COPY", "z", "k", "DB", "99999999999"),
        ("COPY", "z", "k", "DB"), ("COPY", "z", "k", "FOO"), ("COPY", "z", "z", "REPLACE"), ("COPY", "z"),
        ("RENAME", "z"), ("RENAMENX", "z", "k", "x"), ("WATCH", "k"), ("RENAME", "z", "k"), ("MULTI",), ("EXEC",),
        ("WATCH", "k"), ("COPY", "k", "p"), ("MULTI",), ("EXEC",), ("WATCH", "p"), ("COPY", "k", "p", "REPLACE"),
        ("MULTI",), ("EXEC",),
    ],
    "msetnx": [("MSETNX", "a", "1", "b", "2"), ("MSETNX", "b", "3", "c", "4"), ("MGET", "a", "b", "c"),
               ("MSETNX", "c", "5", "c", "6"), ("GET", "c"), ("MSETNX", "a"), ("MSETNX", "a", "1", "b"), ("MSETNX",)],
    "flush": [("SET", "a", "1"), ("SET", "b", "2", "EX", "100"), ("FLUSHDB",), ("GET", "a"), ("DBSIZE",),
              ("SET", "a", "1"), ("FLUSHALL", "ASYNC"), ("DBSIZE",), ("FLUSHDB", "sync"), ("FLUSHDB", "x"),
              ("FLUSHALL", "SYNC", "x"), ("flushall", "async"), ("FLUSHALL", "LAZY")],
    "keys_scan_one_key": [  # replies whose order cannot differ: an empty keyspace, then one key
        ("SCAN", "0"), ("KEYS", "*"), ("SET", "k", "v"), ("SCAN", "0"),
        ("SCAN", "0", "MATCH", "k*"), ("SCAN", "0", "MATCH", "x*"), ("SCAN", "0", "TYPE", "string"),
        ("SCAN", "0", "TYPE", "hash"), ("SCAN", "0", "TYPE", "nosuch"), ("SCAN", "0", "match", "[k]", "count", "5",
                                                                               "type", "STRING"),
        ("KEYS", "*"), ("KEYS", "k"), ("KEYS", "?"), ("KEYS", "[a-z]"), ("KEYS", "[^k]"), ("KEYS", "[k"),
        ("KEYS", "\\k"), ("KEYS", "k*"), ("KEYS", "*k*"), ("KEYS", "**"), ("KEYS", "kk"), ("KEYS", ""),
        ("SET", "", "empty"), ("KEYS", "**"), ("KEYS", ""), ("DEL", "k"), ("KEYS", "*"), ("SCAN", "0"),
    ],
    "scan_errors": [
        ("SCAN", "abc"), ("SCAN", "1.5"), ("SCAN", " 1"), ("SCAN", "99999999999999999999999"),
        ("SCAN", "18446744073709551615"), ("SCAN", "-1"), ("SCAN", "+0"), ("SCAN", ""), ("SCAN", "0", "COUNT", "0"),
        ("SCAN", "0", "COUNT", "-1"), ("SCAN", "0", "COUNT", "x"), ("SCAN", "0", "COUNT"), ("SCAN", "0", "MATCH"),
        ("SCAN", "0", "FOO", "1"), ("SCAN", "0", "TYPE"), ("SCAN", "abc", "COUNT", "0"), ("SCAN",), ("KEYS",),
        ("KEYS", "a", "b"),
    ],
    "multi_exec": [
        ("MULTI",), ("SET", "a", "1"), ("INCR", "a"), ("GET", "a"), ("EXEC",), ("EXEC",), ("DISCARD",), ("MULTI",),
        ("MULTI",), ("SET", "a", "2"), ("DISCARD",), ("GET", "a"), ("MULTI",), ("SET", "a"), ("INCR", "a"),
        ("EXEC",), ("GET", "a"), ("MULTI",), ("NOSUCH",), ("EXEC",), ("MULTI",), ("SET", "s", "x"), ("INCR", "s"),
        ("GET", "s"), ("EXEC",), ("MULTI",), ("WATCH", "a"), ("EXEC",), ("MULTI", "x"), ("EXEC", "x"), ("WATCH",),
        ("UNWATCH",), ("MULTI",), ("UNWATCH",), ("PING",), ("ECHO", "e"), ("EXEC",), ("MULTI",), ("EXEC",),
        ("MULTI",), ("SET", "k", "v", "EX", "0"), ("GET", "k"), ("EXEC",), ("MULTI",), ("MSETNX", "a"),
        ("DISCARD",), ("multi",), ("del", "a"), ("exec",), ("GET", "a"),
    ],
    "watch": [
        ("SET", "a", "1"), ("WATCH", "a"), ("SET", "a", "2"), ("MULTI",), ("GET", "a"), ("EXEC",),
        ("WATCH", "a"), ("GET", "a"), ("MULTI",), ("GET", "a"), ("EXEC",), ("WATCH", "nokey"), ("MULTI",), ("EXEC",),
        ("WATCH", "a"), ("FLUSHDB",), ("MULTI",), ("EXEC",), ("WATCH", "gone"), ("FLUSHDB",), ("MULTI",), ("EXEC",),
        ("SET", "a", "1"), ("WATCH", "a"), ("EXPIRE", "a", "100"), ("MULTI",), ("EXEC",), ("WATCH", "a"),
        ("PERSIST", "a"), ("MULTI",), ("EXEC",), ("WATCH", "a", "b"), ("UNWATCH",), ("SET", "a", "z"), ("MULTI",),
        ("EXEC",), ("WATCH", "a"), ("MULTI",), ("DISCARD",), ("SET", "a", "q"), ("MULTI",), ("EXEC",),
        ("WATCH", "a"), ("DEL", "a"), ("MULTI",), ("SET", "a", "r"), ("EXEC",), ("GET", "a"), ("WATCH", "b"),
        ("SET", "b", "1", "NX"), ("MULTI",), ("EXEC",), ("WATCH", "b"), ("SET", "b", "2", "NX"), ("MULTI",),
        ("EXEC",), ("WATCH", "b"), ("WATCH", "b"), ("INCR", "b"), ("MULTI",), ("EXEC",),
        ("SET", "p", "v"), ("WATCH", "p"), ("GETEX", "p", "PERSIST"), ("PERSIST", "p"), ("MULTI",), ("EXEC",),
        ("WATCH", "p"), ("GETEX", "p", "EX", "100"), ("MULTI",), ("EXEC",),
    ],
    "client_list_kill_errors": [
        ("CLIENT", "KILL", "1.2.3.4:5"), ("CLIENT", "KILL", "ID", "99999"), ("CLIENT", "KILL", "ID", "abc"),
        ("CLIENT", "KILL", "ID", "0"), ("CLIENT", "KILL", "foo", "bar"), ("CLIENT", "KILL", "TYPE", "foo"),
        ("CLIENT", "KILL", "SKIPME", "maybe"), ("CLIENT", "KILL", "TYPE", "pubsub"), ("CLIENT", "KILL"),
        ("CLIENT", "KILL", "USER", "nosuch"), ("CLIENT", "KILL", "ID", "1", "ADDR"),
        ("CLIENT", "LIST", "TYPE", "foo"), ("CLIENT", "LIST", "ID", "abc"), ("CLIENT", "LIST", "ID", "0"),
        ("CLIENT", "LIST", "TYPE", "pubsub"), ("CLIENT", "LIST", "ID", "99999"), ("CLIENT", "LIST", "foo"),
        ("CLIENT", "LIST", "TYPE"), ("CLIENT", "INFO", "x"),
    ],
    "memory_usage": [
        ("SET", "k", "v"), ("MEMORY", "USAGE", "nope"), ("MEMORY", "USAGE", "k", "SAMPLES", "x"),
        ("MEMORY", "USAGE", "k", "SAMPLES", "-1"), ("MEMORY", "USAGE", "k", "FOO"), ("MEMORY", "USAGE", "k", "SAMPLES"),
        ("MEMORY", "USAGE", "nope", "SAMPLES", "0", "SAMPLES", "5"), ("MEMORY", "USAGE"), ("MEMORY",),
        ("MEMORY", "FOO"),
    ],
    "select": [("SELECT", "0"), ("SELECT", "1"), ("SELECT", "abc"), ("SELECT", "-1"), ("SELECT", "99999999999")],
    "client": [("CLIENT", "GETNAME"), ("CLIENT", "SETNAME", "worker-1"), ("CLIENT", "GETNAME"),
               ("CLIENT", "SETNAME", "bad name"), ("CLIENT", "SETNAME"), ("CLIENT", "NOSUCH"), ("CLIENT",)],
    "hello_errors": [("HELLO", "4"), ("HELLO", "abc"), ("HELLO", "2", "FOO"), ("HELLO", "3", "SETNAME"),
                     ("HELLO", "1")],
    "auth_without_password": [("AUTH", "secret"), ("AUTH", "user", "secret"), ("AUTH", "a", "b", "c"),
                              ("AUTH", "default", "x")],
    "config_get": [("CONFIG", "GET", "databases"), ("CONFIG", "GET", "appendonly"), ("CONFIG", "GET", "nosuch*"),
                   ("CONFIG", "GET")],
    # Long double sums printed as %.17Lf: a double would print 0.1 as 0.10000000000000001 (floats.py).
    "incrbyfloat": [
        ("INCRBYFLOAT", "f", "0.1"), ("INCRBYFLOAT", "f", "0.2"), ("GET", "f"), ("INCRBYFLOAT", "f", "-0.3"),
        ("INCRBYFLOAT", "f", "1e308"), ("INCRBYFLOAT", "big", "1e4000"), ("INCRBYFLOAT", "big", "1e4932"),
        ("INCRBYFLOAT", "f", "abc"), ("INCRBYFLOAT", "f", " 1"), ("INCRBYFLOAT", "f", "1 "), ("INCRBYFLOAT", "f", ""),
        ("INCRBYFLOAT", "f", "inf"), ("INCRBYFLOAT", "f", "nan"), ("INCRBYFLOAT", "u", "1e-5000"),
        ("INCRBYFLOAT", "u", "1e-4950"), ("SET", "s", "abc"), ("INCRBYFLOAT", "s", "1"), ("SET", "h", "0x1p3"),
        ("INCRBYFLOAT", "h", "0.5"), ("SET", "z", "-0.0"), ("INCRBYFLOAT", "z", "0"), ("SET", "n", b"1\x002"),
        ("INCRBYFLOAT", "n", "1"), ("SET", "e", b"\x00x"), ("INCRBYFLOAT", "e", "2.5"),
        ("SET", "l", "12345678901234567890"), ("INCRBYFLOAT", "l", "0.3"), ("SET", "t", "5"), ("EXPIRE", "t", "100"),
        ("INCRBYFLOAT", "t", "+1.5e0"),
        ("TTL", "t"), ("INCRBYFLOAT",), ("INCRBYFLOAT", "f", "1", "2"), ("INCRBYFLOAT", "f", "0X1P-2"),
        ("INCRBYFLOAT", "f", "1e"), ("INCRBYFLOAT", "f", "1e+"), ("INCRBYFLOAT", "f", "0x1p"),  # scanf takes these
        ("SET", "d", "2.5e"), ("INCRBYFLOAT", "d", "1"),
    ],
    "setrange": [
        ("SETRANGE", "k", "5", "hi"), ("GET", "k"), ("SETRANGE", "k", "0", "HELLO"), ("GET", "k"),
        ("SETRANGE", "k", "6", "there"), ("GET", "k"), ("SETRANGE", "k", "-1", "x"), ("SETRANGE", "k", "x", "y"),
        ("SETRANGE", "n", "3", ""), ("EXISTS", "n"), ("SETRANGE", "k", "2", ""), ("SETRANGE", "k", "600000000", "x"),
        ("SETRANGE", "k", "536870910", "xyz"), ("SETRANGE", "t", "0", "abc"), ("EXPIRE", "t", "100"),
        ("SETRANGE", "t", "1", "Z"), ("TTL", "t"), ("GET", "t"), ("SETRANGE", "k"), ("SETRANGE", "k", "1.5", "x"),
    ],
    # A subcommand's arity or name is checked when MULTI queues it: the transaction aborts and writes nothing (it
    # used to queue, answer the error at EXEC and run the rest).
    "multi_subcommand_errors": [
        ("MULTI",), ("CONFIG", "GET"), ("SET", "a", "1"), ("EXEC",), ("GET", "a"),
        ("MULTI",), ("CONFIG", "NOSUCH"), ("SET", "a", "2"), ("EXEC",), ("GET", "a"),
        ("MULTI",), ("MEMORY", "USAGE"), ("SET", "a", "3"), ("EXEC",), ("GET", "a"),
        ("MULTI",), ("CLIENT", "SETNAME"), ("SET", "a", "4"), ("EXEC",), ("GET", "a"),
        ("MULTI",), ("SCRIPT", "NOSUCH"), ("SET", "a", "5"), ("EXEC",), ("GET", "a"),
        ("MULTI",), ("COMMAND", "COUNT", "x"), ("SET", "a", "6"), ("EXEC",), ("GET", "a"),
        ("MULTI",), ("CONFIG", "GET", "databases"), ("MEMORY", "USAGE", "nope"), ("SET", "a", "7"), ("EXEC",),
    ],
}

RESP3_CASES: dict[str, list[Cmd]] = {
    "nulls": [("GET", "missing"), ("MGET", "a", "missing"), ("SET", "k", "v", "XX"), ("CLIENT", "GETNAME"),
              ("SET", "k", "v"), ("SET", "k", "w", "GET"), ("GETDEL", "missing"), ("GETEX", "missing", "PERSIST"),
              ("GETSET", "missing", "v"), ("GETSET", "missing", "w"), ("TYPE", "k")],
    "config_map": [("CONFIG", "GET", "databases")],
    "watch_null": [("SET", "a", "1"), ("WATCH", "a"), ("SET", "a", "2"), ("MULTI",), ("GET", "a"), ("EXEC",),
                   ("MULTI",), ("GET", "a"), ("GET", "missing"), ("EXEC",)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_replies_match_redis_resp2(case: str, reference: int, foresight: int) -> None:
    assert_same_replies(case, CASES[case], reference, foresight, resp3=False)


@pytest.mark.parametrize("case", sorted(RESP3_CASES))
def test_replies_match_redis_resp3(case: str, reference: int, foresight: int) -> None:
    assert_same_replies(case, RESP3_CASES[case], reference, foresight, resp3=True)


def test_pipeline_replies_match_redis(reference: int, foresight: int) -> None:
    pipeline: list[Cmd] = [("SET", "p1", "1"), ("INCR", "p1"), ("GET", "p1"), ("NOSUCH",), ("GET",),
                           ("MGET", "p1", "p2"), ("DEL", "p1"), ("GET", "p1")] * 20
    RawClient(reference).send(("DEL", "p1", "p2"))
    RawClient(foresight).send(("DEL", "p1", "p2"))
    want = RawClient(reference).send(*pipeline)
    got = RawClient(foresight).send(*pipeline)
    assert got == want


def test_expired_keys_look_the_same(reference: int, foresight: int) -> None:
    setup: list[Cmd] = [("SET", "e1", "v", "PX", "50"), ("SET", "e2", "v"), ("PEXPIRE", "e2", "50")]
    probe: list[Cmd] = [("GET", "e1"), ("EXISTS", "e1", "e2"), ("TTL", "e1"), ("PTTL", "e2"), ("STRLEN", "e1"),
                        ("INCR", "e2"), ("TTL", "e2")]
    for port in (reference, foresight):
        RawClient(port).send(*setup)
    time.sleep(0.2)
    assert RawClient(foresight).send(*probe) == RawClient(reference).send(*probe)


GLOB_KEYS = [b"hello", b"hallo", b"hxllo", b"hllo", b"heeello", b"h]llo", b"h-llo", b"a*b", b"a[b", b"a\\b", b"x?y",
             b"", b"^", b"[", b"]", b"Z", b"z", b"-", b"\\", "\u00fcber".encode(), b"\x00\xff", b"user:1", b"user:10",
             b"user:2:name", b"a", b"ab", b"abc", b"a\nb"]
GLOB_PATTERNS = [b"*", b"h?llo", b"h*llo", b"h[ae]llo", b"h[^e]llo", b"h[a-b]llo", b"h[b-a]llo", b"h[]llo",
                 b"h[^]llo", b"h[a-]", b"h[\\]]llo", b"a\\*b", b"a\\[b", b"a[\\[]b", b"a\\\\b", b"x\\?y", b"[", b"[^",
                 b"\\", b"[z-a]", b"[Z]", b"user:*", b"user:?", b"user:[0-9]*", b"*:name", b"**a**", b"a*", b"*b*c*",
                 b"*\x00*", b"", b"[a", b"ab\\", b"?", b"??", b"*?", b"[-]", b"[a-c-z]", b"[\\^]", b"a?b", b"[!a]",
                 "\u00fc*".encode(), b"\xc3?ber", b"a.b", b"a\\nb", b"*\n*"]


def test_keys_and_scan_match_patterns_as_redis_does(reference: int, foresight: int) -> None:
    """Glob rules (classes, ranges, escapes, the empty key) by real clients: KEYS, and SCAN walked to its end."""
    clients = [redis.Redis(port=port) for port in (reference, foresight)]
    for client in clients:
        client.flushall()
        client.mset(dict.fromkeys(GLOB_KEYS, b"v"))
    for pattern in GLOB_PATTERNS:
        want, got = (sorted(client.keys(pattern)) for client in clients)
        assert got == want, f"KEYS {pattern!r}"
        scanned = sorted(clients[1].scan_iter(match=pattern, count=3))
        assert scanned == want, f"SCAN MATCH {pattern!r}"
    assert sorted(clients[1].scan_iter(_type="string")) == sorted(GLOB_KEYS)
