"""The bit commands, LCS and RANDOMKEY: Redis 7.0's replies byte for byte (against redis-server, as in
test_differential.py), and what only Foresight has: tenants, budgets, scopes, read-through and the access log."""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from service.resp import replies as r
from service.resp.commands import bits
from service.security.apikeys import IssuedKey, new_key
from service.store import MemoryStore, entry_size
from tests.service.conftest import ProductionService
from tests.service.harness import Cmd, RawClient, assert_same_replies, replay, running_service
from tests.service.test_tenancy import _client
from tests.tlsutil import PKI

HUGE, TINY = "9223372036854775807", "-9223372036854775808"
CASES: dict[str, list[Cmd]] = {
    "setbit_getbit": [
        ("SETBIT", "k", "7", "1"), ("GET", "k"), ("SETBIT", "k", "7", "0"), ("GET", "k"), ("SETBIT", "k", "100", "1"),
        ("STRLEN", "k"), ("GETBIT", "k", "100"), ("GETBIT", "k", "101"), ("GETBIT", "k", "100000"),
        ("GETBIT", "missing", "0"), ("GETBIT", "missing", "4294967295"), ("GETBIT", "missing", "4294967296"),
        ("GETBIT", "k", "-1"), ("GETBIT", "k", "abc"), ("GETBIT", "k", "01"), ("GETBIT", "k", HUGE),
        ("SETBIT", "k", "-1", "1"), ("SETBIT", "k", "4294967296", "1"), ("SETBIT", "k", "abc", "1"),
        ("SETBIT", "k", "1.5", "1"), ("SETBIT", "k", "01", "1"), ("SETBIT", "k", "-0", "1"),
        ("SETBIT", "k", "99999999999999999999", "1"), ("SETBIT", "k", "-1", "2"), ("SETBIT", "k", "0", "2"),
        ("SETBIT", "k", "0", "-1"), ("SETBIT", "k", "0", "-0"), ("SETBIT", "k", "0", "01"), ("SETBIT", "k", "0", "abc"),
        ("SETBIT", "k", "0", " 1"), ("SETBIT", "k", "0", HUGE), ("SETBIT", "k", "0", ""), ("SETBIT", "k", "0"),
        ("SETBIT", "k", "0", "1", "1"), ("GETBIT", "k"), ("GETBIT", "k", "0", "1"), ("SET", "s", "foobar"),
        ("GETBIT", "s", "1"), ("GETBIT", "s", "2"), ("SETBIT", "s", "2", "1"), ("GET", "s"), ("SET", "n", "255"),
        ("GETBIT", "n", "2"), ("SETBIT", "n", "6", "0"), ("GET", "n"), ("INCR", "n"), ("SETBIT", "fresh", "0", "0"),
        ("GET", "fresh"), ("SETBIT", "b", "15", "1"), ("GET", "b"),
    ],
    "setbit_keeps_the_ttl": [("SET", "t", "abc", "EX", "100"), ("SETBIT", "t", "3", "1"), ("TTL", "t"), ("GET", "t"),
                             ("SETBIT", "t", "50", "1"), ("TTL", "t"), ("GET", "t")],
    "setbit_under_watch": [  # a bit set as it was is no change, one that grows the value is
        ("SET", "w", "a"), ("WATCH", "w"), ("SETBIT", "w", "1", "1"), ("MULTI",), ("GET", "w"), ("EXEC",),
        ("WATCH", "w"), ("SETBIT", "w", "0", "1"), ("MULTI",), ("GET", "w"), ("EXEC",), ("WATCH", "w"),
        ("SETBIT", "w", "20", "0"), ("MULTI",), ("GET", "w"), ("EXEC",), ("WATCH", "new"), ("SETBIT", "new", "0", "0"),
        ("MULTI",), ("GET", "new"), ("EXEC",),
    ],
    "bitcount": [
        ("SET", "s", "foobar"), ("BITCOUNT", "s"), ("BITCOUNT", "s", "0", "0"), ("BITCOUNT", "s", "1", "1"),
        ("BITCOUNT", "s", "1", "1", "BYTE"), ("BITCOUNT", "s", "5", "30", "BIT"), ("BITCOUNT", "s", "5", "30", "bit"),
        ("BITCOUNT", "s", "-1", "-1"), ("BITCOUNT", "s", "-2", "-1", "BIT"), ("BITCOUNT", "s", "-1", "-2"),
        ("BITCOUNT", "s", "-100", "-200"), ("BITCOUNT", "s", "-200", "-100"),
        ("BITCOUNT", "s", "-200", "-100", "BIT"), ("BITCOUNT", "s", "-1", "-2", "FOO"),
        ("BITCOUNT", "s", "0", "100"), ("BITCOUNT", "s", "100", "200"), ("BITCOUNT", "s", "3", "1"),
        ("BITCOUNT", "s", "9", "9", "BIT"), ("BITCOUNT", "s", "0", "47", "BIT"), ("BITCOUNT", "s", "47", "47", "BIT"),
        ("BITCOUNT", "s", "0"), ("BITCOUNT", "s", "0", "1", "2"), ("BITCOUNT", "s", "0", "1", "BITS"),
        ("BITCOUNT", "s", "a", "1"), ("BITCOUNT", "s", "1", "a"), ("BITCOUNT", "s", "a", "1", "FOO"),
        ("BITCOUNT", "s", "0", "-1", "BIT", "x"), ("BITCOUNT", "missing"), ("BITCOUNT", "missing", "a", "b"),
        ("BITCOUNT", "missing", "0"), ("BITCOUNT", "missing", "0", "1", "FOO"), ("BITCOUNT",), ("SET", "e", ""),
        ("BITCOUNT", "e"), ("BITCOUNT", "e", "0", "-1"), ("BITCOUNT", "e", "0", "-1", "BIT"),
        ("BITCOUNT", "s", HUGE, TINY), ("BITCOUNT", "s", TINY, HUGE, "BIT"), ("BITCOUNT", "s", TINY, TINY),
        ("SET", "n", "12345"), ("BITCOUNT", "n"), ("SET", "b", b"\xff\x00\xff\x80"),
        ("BITCOUNT", "b", "7", "24", "BIT"),
    ],
    "bitpos": [
        ("SET", "s", b"\xff\xf0\x00"), ("BITPOS", "s", "0"), ("BITPOS", "s", "1"), ("BITPOS", "s", "0", "1"),
        ("BITPOS", "s", "0", "2", "-1"), ("BITPOS", "s", "1", "2"), ("BITPOS", "s", "1", "1", "-1"),
        ("BITPOS", "s", "0", "5", "12", "BIT"), ("BITPOS", "s", "1", "7", "15", "BIT"),
        ("BITPOS", "s", "0", "0", "11", "BIT"),
        ("BITPOS", "s", "1", "12", "23", "BIT"), ("BITPOS", "s", "0", "12", "12", "bit"),
        ("BITPOS", "s", "1", "3", "1", "BIT"),
        ("BITPOS", "s", "1", "-100", "-200"), ("BITPOS", "s", "0", "100"), ("BITPOS", "s", "0", "-1"),
        ("BITPOS", "s", "1", "-9", "-1", "BIT"), ("BITPOS", "s", "0", TINY, HUGE, "BIT"), ("BITPOS", "s", "1", HUGE),
        ("SET", "ones", b"\xff\xff\xff"), ("BITPOS", "ones", "0"), ("BITPOS", "ones", "0", "0"),
        ("BITPOS", "ones", "0", "1"), ("BITPOS", "ones", "0", "0", "-1"), ("BITPOS", "ones", "0", "0", "-1", "BIT"),
        ("BITPOS", "ones", "0", "0", "-1", "BYTE"), ("BITPOS", "ones", "0", "0", "BIT"),
        ("BITPOS", "ones", "1", "-1", "-2"),
        ("SET", "zeros", b"\x00\x00"), ("BITPOS", "zeros", "1"), ("BITPOS", "zeros", "0"),
        ("BITPOS", "zeros", "1", "0", "-1"),
        ("BITPOS", "missing", "0"), ("BITPOS", "missing", "1"), ("BITPOS", "missing", "2"),
        ("BITPOS", "missing", "1", "a"),
        ("BITPOS", "missing", "0", "0", "-1", "FOO", "x"), ("BITPOS", "s", "2"), ("BITPOS", "s", "-1"),
        ("BITPOS", "s", "01"), ("BITPOS", "s", "a"), ("BITPOS", "s", "1", "a"), ("BITPOS", "s", "1", "0", "a"),
        ("BITPOS", "s", "1", "a", "0", "FOO"), ("BITPOS", "s", "1", "0", "a", "FOO"),
        ("BITPOS", "s", "1", "0", "-1", "FOO"),
        ("BITPOS", "s", "1", "0", "-1", "BIT", "x"), ("SET", "e", ""), ("BITPOS", "e", "0"), ("BITPOS", "e", "1"),
        ("BITPOS", "e", "0", "0", "-1", "BIT"), ("BITPOS", "s"), ("BITPOS",),
    ],
    "bitop": [
        ("SET", "a", "foobar"), ("SET", "b", "abcdef"), ("BITOP", "AND", "d", "a", "b"), ("GET", "d"),
        ("BITOP", "OR", "d", "a", "b"), ("GET", "d"), ("BITOP", "XOR", "d", "a", "b"), ("GET", "d"),
        ("BITOP", "NOT", "d", "a"), ("GET", "d"), ("SET", "short", "ab"), ("BITOP", "xor", "d", "a", "short"),
        ("GET", "d"), ("BITOP", "and", "d", "a", "short"), ("GET", "d"), ("BITOP", "Or", "d", "short", "a", "b"),
        ("GET", "d"), ("BITOP", "NOT", "d", "a", "b"), ("BITOP", "NOT", "d"), ("BITOP", "FOO", "d", "a"),
        ("BITOP", "DIFF", "d", "a", "b"), ("BITOP", "ONE", "d", "a", "b"), ("BITOP", "ANDOR", "d", "a", "b"),
        ("BITOP", "AND", "d", "missing1", "missing2"), ("EXISTS", "d"), ("SET", "d", "x", "EX", "100"),
        ("BITOP", "OR", "d", "a"), ("TTL", "d"), ("GET", "d"), ("BITOP", "AND", "d", "d", "b"), ("GET", "d"),
        ("SET", "d", "x"), ("BITOP", "AND", "d", "missing"), ("EXISTS", "d"), ("BITOP", "OR", "d", "a", "missing"),
        ("GET", "d"), ("BITOP", "AND", "d", "a", "missing"), ("GET", "d"), ("SET", "e", ""), ("BITOP", "NOT", "d", "e"),
        ("EXISTS", "d"), ("BITOP", "NOT", "d", "missing"), ("BITOP", "XOR", "a", "a"), ("GET", "a"), ("BITOP",),
        ("BITOP", "AND", "d"), ("SET", "n", "12"), ("BITOP", "NOT", "d", "n"), ("GET", "d"),
    ],
    "lcs": [
        ("MSET", "k1", "ohmytext", "k2", "mynewtext"), ("LCS", "k1", "k2"), ("LCS", "k1", "k2", "LEN"),
        ("LCS", "k1", "k2", "IDX"), ("LCS", "k1", "k2", "IDX", "MINMATCHLEN", "4"),
        ("LCS", "k1", "k2", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"), ("LCS", "k1", "k2", "IDX", "WITHMATCHLEN"),
        ("LCS", "k1", "k2", "withmatchlen", "idx", "minmatchlen", "2", "minmatchlen", "0"),
        ("LCS", "k1", "k2", "LEN", "IDX"), ("LCS", "k1", "k2", "idx", "len"), ("LCS", "k1", "k2", "MINMATCHLEN"),
        ("LCS", "k1", "k2", "MINMATCHLEN", "x"), ("LCS", "k1", "k2", "MINMATCHLEN", "-3", "IDX"),
        ("LCS", "k1", "k2", "MINMATCHLEN", HUGE, "IDX"), ("LCS", "k1", "k2", "FOO"), ("LCS", "k1", "missing"),
        ("LCS", "missing", "missing", "IDX"), ("LCS", "missing", "k1", "LEN"),
        ("LCS", "k1", "k1", "IDX", "WITHMATCHLEN"),
        ("LCS", "k1"), ("LCS", "k1", "k2", "WITHMATCHLEN"), ("LCS", "k1", "k2", "MINMATCHLEN", "2"),
        ("LCS", "k2", "k1", "IDX", "WITHMATCHLEN"), ("MSET", "x", "aaaaabbbbb", "y", "bbbbbaaaaa"), ("LCS", "x", "y"),
        ("LCS", "x", "y", "IDX", "WITHMATCHLEN"), ("LCS", "y", "x", "IDX"), ("SET", "bin", b"\x00\r\n\xff\x00"),
        ("LCS", "bin", "bin", "IDX"), ("LCS", "bin", "x"), ("SET", "big", "x" * 12000), ("LCS", "big", "big"),
        ("LCS", "big", "big", "LEN"), ("LCS", "big", "k1", "IDX"), ("LCS", "k1", "big", "LEN"),
    ],
    "randomkey": [("RANDOMKEY",), ("SET", "only", "v"), ("RANDOMKEY",), ("RANDOMKEY", "x"), ("DEL", "only"),
                  ("RANDOMKEY",), ("SET", "", "empty"), ("RANDOMKEY",)],
    "multi_queues_and_checks_arity": [
        ("MULTI",), ("SETBIT", "k", "1"), ("SET", "a", "1"), ("EXEC",), ("GET", "a"), ("MULTI",), ("BITOP", "AND", "d"),
        ("EXEC",), ("MULTI",), ("LCS", "k"), ("EXEC",), ("MULTI",), ("RANDOMKEY", "x"), ("EXEC",), ("MULTI",),
        ("SETBIT", "k", "0", "1"), ("SETBIT", "k", "-1", "1"), ("BITOP", "NOT", "d", "k", "k"),
        ("BITOP", "NOT", "d", "k"),
        ("GETBIT", "k", "0"), ("BITCOUNT", "k"), ("BITPOS", "k", "0"), ("LCS", "k", "d", "IDX"), ("DEL", "d"),
        ("RANDOMKEY",),
        ("EXEC",),
    ],
}
RESP3_CASES: dict[str, list[Cmd]] = {
    "lcs_idx_map": [("MSET", "k1", "ohmytext", "k2", "mynewtext"), ("LCS", "k1", "k2", "IDX", "WITHMATCHLEN"),
                    ("LCS", "missing", "k2", "IDX")],
    "randomkey_null": [("RANDOMKEY",)],
}


@pytest.mark.parametrize(("case", "resp3"), [(case, False) for case in CASES] + [(case, True) for case in RESP3_CASES])
def test_replies_match_redis(case: str, resp3: bool, reference: int, foresight: int) -> None:
    assert_same_replies(case, (RESP3_CASES if resp3 else CASES)[case], reference, foresight, resp3)


VALUES = [b"", b"\x00", b"\xff", b"\xff\xff\xff", b"\x00\x00\x80", b"foobar", b"\x0f\xf0\x01", b"ab" * 9, b"1234"]
INDEXES = ["0", "1", "2", "3", "7", "8", "9", "15", "16", "23", "100", "-1", "-2", "-3", "-8", "-9", "-17", "-100"]


def _random_read(rng: random.Random) -> Cmd:
    key = rng.choice(["a", "b", "missing"])
    ranges = [(), (rng.choice(INDEXES),), (rng.choice(INDEXES), rng.choice(INDEXES)),
              (rng.choice(INDEXES), rng.choice(INDEXES), rng.choice(["BIT", "BYTE"]))]
    span = rng.choice(ranges)
    return rng.choice([
        ("BITCOUNT", key, *span), ("BITPOS", key, rng.choice(["0", "1"]), *span),
        ("GETBIT", key, rng.choice(INDEXES)), ("SETBIT", key, rng.choice(INDEXES), rng.choice(["0", "1"])),
        ("LCS", key, rng.choice(["a", "b"]), *rng.choice([(), ("LEN",), ("IDX",), ("IDX", "WITHMATCHLEN"),
                                                         ("IDX", "MINMATCHLEN", rng.choice(["0", "2", "3"]))])),
        ("BITOP", rng.choice(["AND", "OR", "XOR"]), "b", "a", "b"), ("BITOP", "NOT", "a", "b"),
        ("SET", key, rng.choice(VALUES)),
    ])


def test_random_ranges_get_the_replies_redis_gives(reference: int, foresight: int) -> None:
    """Every mix of index signs, units and short values, which the hand-picked cases sample."""
    rng = random.Random(7)
    commands = [_random_read(rng) for _ in range(3000)]
    for port in (reference, foresight):
        RawClient(port).send(("FLUSHALL",))
    for cmd, want, got in zip(commands, replay(reference, commands, False), replay(foresight, commands, False),
                              strict=True):
        assert got == want, f"{cmd!r}: redis replied {want!r}, foresight replied {got!r}"


def _conn(store: MemoryStore, **tenant: object) -> SimpleNamespace:
    """What the handlers read of a connection: its tenant's store, and how a miss is answered."""
    fields: dict[str, object] = {"record_hit": None, "record_miss": None, "reads_through": False, **tenant}
    return SimpleNamespace(tenant=SimpleNamespace(store=store, **fields), null=r.NULL2, cache_only=False, protocol=2)


def test_setbit_far_past_the_budget_is_refused_before_the_value_grows() -> None:
    """`SETBIT k 4294967295 1` (40 bytes) asks for a 512 MB value: refused before a byte of padding exists."""
    store = MemoryStore(1 << 20)
    conn = _conn(store)
    tracemalloc.start()
    try:
        reply = bits.setbit(conn, [b"SETBIT", b"k", b"4294967295", b"1"])  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply == r.OOM and store.entry(b"k") is None
    assert peak < 1 << 20
    assert bits.setbit(conn, [b"SETBIT", b"k", b"8000", b"1"]) == r.ZERO  # type: ignore[arg-type]
    assert len(store.entry(b"k").value) == 1001  # type: ignore[union-attr]


def test_lcs_refuses_a_string_longer_than_its_bound_which_redis_takes() -> None:
    """Redis's table bound admits 64 MB against 1 byte (seconds of the shared event loop here); the bound is ours."""
    store = MemoryStore(1 << 30)
    store.set(b"long", b"ab" * (bits._LCS_MAX_BYTES // 2 + 1))
    store.set(b"short", b"b")
    store.set(b"at_bound", b"ab" * (bits._LCS_MAX_BYTES // 2))
    conn = _conn(store)
    for pair in ([b"long", b"short"], [b"short", b"long"]):
        assert bits.lcs(conn, [b"LCS", *pair, b"LEN"]) == bits._LCS_TOO_LONG  # type: ignore[arg-type]
    assert bits.lcs(conn, [b"LCS", b"at_bound", b"short", b"LEN"]) == r.integer(1)  # type: ignore[arg-type]


def test_bitop_refuses_a_destination_over_the_budget_and_keeps_its_sources() -> None:
    value = b"\x0f" * 1000
    store = MemoryStore(entry_size(b"s", value))
    store.set(b"s", value)
    conn = _conn(store)
    assert bits.bitop(conn, [b"BITOP", b"NOT", b"a-longer-destination", b"s"]) == r.OOM  # type: ignore[arg-type]
    assert store.entry(b"a-longer-destination") is None and store.get(b"s") == value


def test_bit_reads_are_recorded_for_the_prefetcher_as_gets_are() -> None:
    store = MemoryStore(1 << 20)
    store.set(b"cached", b"abc")
    hits: list[bytes] = []
    misses: list[bytes] = []
    conn = _conn(store, record_hit=hits.append, record_miss=misses.append)
    for read, args in ((bits.getbit, [b"GETBIT", b"cached", b"1"]), (bits.bitcount, [b"BITCOUNT", b"absent"]),
                       (bits.bitpos, [b"BITPOS", b"cached", b"1"]), (bits.lcs, [b"LCS", b"cached", b"absent"])):
        read(conn, args)  # type: ignore[arg-type]
    assert hits == [b"cached", b"cached", b"cached"] and misses == [b"absent", b"absent"]
    bits.setbit(conn, [b"SETBIT", b"cached", b"0", b"1"])  # type: ignore[arg-type]
    assert len(hits) == 3  # a write reads the cache alone, as SETRANGE does


def test_a_miss_reads_through_to_the_origin_as_getrange_does(tmp_path: Path) -> None:
    (tmp_path / "object").write_bytes(b"foobar")
    (tmp_path / "other").write_bytes(b"fooqux")
    with running_service(dev=True, origin=str(tmp_path), prefetcher="none") as svc:
        client = redis.Redis(port=svc.resp_port)
        assert client.getbit("object", 1) == 1
        assert client.bitcount("object") == 26
        assert client.bitpos("object", 0) == 0
        assert client.lcs("object", "other") == b"foo"
        client.delete("object")
        assert client.execute_command("LCS", "object", "other", "LEN") == 3  # read through again, in one call
        assert client.bitcount("nowhere") == 0 and client.bitpos("nowhere", 0) == 0


def test_randomkey_never_returns_an_expired_key(foresight: int) -> None:
    client = redis.Redis(port=foresight)
    client.flushall()
    client.set("stays", "v")
    for i in range(50):
        client.set(f"goes:{i}", "v", px=20)
    time.sleep(0.1)
    assert {client.randomkey() for _ in range(20)} == {b"stays"}
    client.delete("stays")
    assert client.randomkey() is None


def test_randomkey_returns_the_callers_tenants_keys_only(prod_service: ProductionService) -> None:
    acme, globex = _client(prod_service, "acme"), _client(prod_service, "globex")
    acme.mset({"acme:1": "v", "acme:2": "v"})
    assert globex.randomkey() is None
    globex.set("globex:1", "v")
    assert {globex.randomkey() for _ in range(30)} == {b"globex:1"}
    assert {acme.randomkey() for _ in range(30)} <= {b"acme:1", b"acme:2"}


def test_bitop_reads_and_writes_the_callers_tenant_only(prod_service: ProductionService) -> None:
    acme, globex = _client(prod_service, "acme"), _client(prod_service, "globex")
    acme.set("source", "acme-secret")
    assert globex.bitop("OR", "copy", "source") == 0 and globex.exists("copy") == 0
    globex.set("source", "globex")
    assert globex.bitop("OR", "source", "source") == 6
    assert acme.get("source") == b"acme-secret" and acme.exists("copy") == 0


@pytest.fixture
def reader_and_writer(tmp_path: Path, pki: PKI) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    """Two keys of one tenant: one with the "read" scope alone, one with "read" and "write"."""
    scopes = {"reader": ["read"], "writer": ["read", "write"]}
    keys: dict[str, IssuedKey] = {name: new_key() for name in scopes}
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_text(json.dumps({
        "tenants": [{"name": "acme"}],
        "keys": [{"key_id": keys[n].key_id, "tenant": "acme", "hash": keys[n].key_hash, "scopes": s}
                 for n, s in scopes.items()],
    }))
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants_file) as svc:
        yield tuple(redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(pki.ca_cert),  # type: ignore[misc]
                                password=keys[name].secret) for name in scopes)


def test_a_read_only_key_reads_bits_and_cannot_write_them(reader_and_writer: tuple[redis.Redis, redis.Redis]) -> None:
    reader, writer = reader_and_writer
    writer.set("flags", "a")
    assert reader.getbit("flags", 1) == 1 and reader.bitcount("flags") == 3 and reader.bitpos("flags", 1) == 1
    assert reader.lcs("flags", "flags") == b"a" and reader.randomkey() == b"flags"
    for write in (lambda: reader.setbit("flags", 0, 1), lambda: reader.bitop("NOT", "flags", "flags")):
        with pytest.raises(redis.exceptions.NoPermissionError, match="needs the 'write' scope"):
            write()
    transaction = reader.pipeline()  # refused as MULTI queues it: the transaction is discarded
    transaction.getbit("flags", 0).setbit("flags", 0, 1)
    with pytest.raises(redis.exceptions.ResponseError):
        transaction.execute()
    assert writer.get("flags") == b"a"
    assert writer.setbit("flags", 0, 1) == 0 and writer.bitop("NOT", "flags", "flags") == 1
