"""Random command sequences, replayed on Debian's redis-server (7.0) and on Foresight, must get the same
replies byte for byte: the hand-written differential cases pick the edges we thought of, these the ones we
did not. Small pools of keys and values make commands collide on the same keys (an INCR on a value SET
earlier, a WATCHed key written in between, by the same client or a second one); relative expiries are never
short, so no reply depends on how long the two servers take; commands whose replies depend on time or on
hash order (TTL, EXPIRETIME, SCAN, KEYS, INFO, DBSIZE, which counts a key set with a deadline already past
until Redis happens to reclaim it, RANDOMKEY) are left to the other tests. Scripts call the same commands from Lua, with
redis.call, redis.pcall and pcall, and through cjson, so the conversions and error texts meet the same edge values."""

from __future__ import annotations

import random

import pytest

from tests.service.harness import Cmd, RawClient, replay

KEYS = ["a", "b", "c", "n"]
VALUES = ["", "0", "1", "-1", "10", "9223372036854775807", "-9223372036854775808", "abc", "1.5", " 1", "5\n",
          "x" * 20, "\x00\xff"]
NUMBERS = ["0", "1", "-1", "10", "abc", "", "1.5", "9223372036854775807", "-9223372036854775808",
           "99999999999999999999", "+1", "01", "-3", "2"]
LONG_EXPIRIES = ["0", "-1", "abc", "100000", "9223372036854775807", "1.5", "4611686018427387", "-100000"]
ABSOLUTE_EXPIRIES = ["1", "0", "-5", "99999999999", "99999999999999", "abc"]
BIT_OFFSETS = ["0", "1", "7", "8", "15", "100", "-1", "abc", "01", "4294967296"]  # not 2^32-1: Redis allocates 512 MB
BIT_RANGES = ["0", "1", "-1", "-2", "3", "-100", "100", "abc", "BIT", "BYTE", "bit", "FOO"]
LCS_OPTIONS = ["LEN", "IDX", "WITHMATCHLEN", "MINMATCHLEN", "MINMATCHLEN", "2", "-1", "x", "idx"]


def _pick(rng: random.Random, pool: list[str], low: int = 1, high: int = 3) -> list[str]:
    return [rng.choice(pool) for _ in range(rng.randint(low, high))]


SCRIPTS = [  # each called with KEYS = (two keys) and ARGV = (a command name, a value)
    "return redis.call(ARGV[1], KEYS[1], ARGV[2])",
    "return redis.pcall(ARGV[1], KEYS[1], ARGV[2])",
    "local ok, e = pcall(redis.call, ARGV[1], KEYS[1], ARGV[2]) return {tostring(ok), e}",
    "if redis.call('GET', KEYS[1]) == ARGV[2] then return redis.call('DEL', KEYS[1]) else return 0 end",
    "local v = redis.call('INCRBY', KEYS[1], ARGV[2]) return {v, redis.call('GET', KEYS[1])}",
    "return {redis.call('MGET', KEYS[1], KEYS[2]), redis.call('EXISTS', KEYS[1], KEYS[2])}",
    "return tonumber(redis.call('GET', KEYS[1]))",
    "redis.setresp(3) return redis.call('GET', KEYS[1])",
    "redis.call('SET', KEYS[2], ARGV[2]) return redis.call('APPEND', KEYS[1], redis.call('GET', KEYS[2]))",
    "return cjson.encode({redis.call('GET', KEYS[1]), redis.call('MGET', KEYS[1], KEYS[2]), ARGV[2]})",
    "local ok, v = pcall(cjson.decode, redis.call('GET', KEYS[1])) return {tostring(ok), ok and cjson.encode(v) or v}",
]
CALLED = ["GET", "SET", "INCRBY", "APPEND", "GETSET", "DEL", "STRLEN", "GETDEL", "SETNX", "INCR", "NOSUCH", "MULTI",
          "INCRBYFLOAT", "GETBIT", "BITCOUNT", "BITPOS", "SETBIT", "LCS"]
SET_OPTIONS = ["NX", "XX", "GET", "KEEPTTL", "EX", "PX", "EXAT", "PXAT", "nx", "BOGUS"]
GETEX_OPTIONS = ["EX", "PX", "EXAT", "PXAT", "PERSIST", "KEEPTTL"]


def _options(rng: random.Random, names: list[str], most: int) -> list[str]:
    """Up to `most` options, each expiry with an argument from its pool (repeats and conflicts included)."""
    options: list[str] = []
    for _ in range(rng.randint(0, most)):
        choice = rng.choice(names)
        options.append(choice)
        if choice in ("EX", "PX"):
            options.append(rng.choice(LONG_EXPIRIES))
        elif choice in ("EXAT", "PXAT"):
            options.append(rng.choice(ABSOLUTE_EXPIRIES))
    return options


def _command(rng: random.Random) -> Cmd:
    key, value, number = rng.choice(KEYS), rng.choice(VALUES), rng.choice(NUMBERS)
    flags = _pick(rng, ["NX", "XX", "GT", "LT", "FOO"], 0, 2)  # GT, LT: for absolute deadlines only, as two
    relative_flags = [f for f in flags if f not in ("GT", "LT")]  # relative ones tie when read in the same ms
    makers = [
        lambda: ("GET", key), lambda: ("SET", key, value, *_options(rng, SET_OPTIONS, 3)),
        lambda: ("SETNX", key, value), lambda: ("SETEX", key, rng.choice(LONG_EXPIRIES), value),
        lambda: ("PSETEX", key, rng.choice(LONG_EXPIRIES), value),
        lambda: ("GETSET", key, value), lambda: ("GETDEL", key),
        lambda: ("GETEX", key, *_options(rng, GETEX_OPTIONS, 2)),
        lambda: ("MGET", *_pick(rng, KEYS)), lambda: ("MSET", *[x for k in _pick(rng, KEYS) for x in (k, value)]),
        lambda: ("MSETNX", *[x for k in _pick(rng, KEYS) for x in (k, rng.choice(VALUES))]),
        lambda: ("DEL", *_pick(rng, KEYS)), lambda: ("UNLINK", *_pick(rng, KEYS)),
        lambda: ("EXISTS", *_pick(rng, KEYS)),
        lambda: ("TOUCH", *_pick(rng, KEYS)), lambda: ("TYPE", key), lambda: ("STRLEN", key),
        lambda: ("INCR", key), lambda: ("DECR", key), lambda: ("INCRBY", key, number), lambda: ("DECRBY", key, number),
        lambda: ("APPEND", key, value), lambda: ("PERSIST", key),
        lambda: ("GETRANGE", key, number, rng.choice(NUMBERS)),
        lambda: (rng.choice(["EXPIRE", "PEXPIRE"]), key, rng.choice(LONG_EXPIRIES), *relative_flags),
        lambda: (rng.choice(["EXPIREAT", "PEXPIREAT"]), key, rng.choice(ABSOLUTE_EXPIRIES), *flags),
        lambda: (rng.choice(["RENAME", "RENAMENX"]), key, rng.choice(KEYS)),
        lambda: ("COPY", key, rng.choice(KEYS), *_pick(rng, ["REPLACE", "DB", "0", "1"], 0, 2)),
        lambda: ("MULTI",), lambda: ("EXEC",), lambda: ("DISCARD",), lambda: ("WATCH", *_pick(rng, KEYS)),
        lambda: ("UNWATCH",), lambda: ("FLUSHDB",), lambda: ("PING",), lambda: ("ECHO", value),
        lambda: ("NOSUCH", key), lambda: ("GET",), lambda: ("SET", key),
        lambda: (rng.choice(["EVAL", "EVAL", "EVAL_RO"]), rng.choice(SCRIPTS), "2", key, rng.choice(KEYS),
                 rng.choice(CALLED), value),
        lambda: ("INCRBYFLOAT", key, rng.choice([number, value])), lambda: ("SETRANGE", key, number, value),
        lambda: ("SETBIT", key, rng.choice(BIT_OFFSETS), rng.choice(["0", "1", "1", "2", "-1", "abc"])),
        lambda: ("GETBIT", key, rng.choice(BIT_OFFSETS)), lambda: ("BITCOUNT", key, *_pick(rng, BIT_RANGES, 0, 3)),
        lambda: ("BITPOS", key, rng.choice(["0", "1", "2"]), *_pick(rng, BIT_RANGES, 0, 3)),
        lambda: ("BITOP", rng.choice(["AND", "OR", "XOR", "NOT", "not", "FOO"]), key, *_pick(rng, KEYS, 1, 2)),
        lambda: ("LCS", key, rng.choice(KEYS), *_pick(rng, LCS_OPTIONS, 0, 3)),
    ]
    weights = [6, 8, 2, 2, 2, 2, 2, 3, 2, 2, 1, 2, 1, 2, 1, 1, 2, 3, 2, 3, 2, 3, 2, 2, 3, 3, 2, 2, 3, 3, 1, 2, 1,
               1, 1, 1, 1, 1, 1, 4, 3, 2, 3, 2, 3, 3, 3, 2]
    return rng.choices(makers, weights)[0]()


@pytest.mark.parametrize("seed", range(6))
def test_random_sequences_get_the_replies_redis_gives(seed: int, reference: int, foresight: int) -> None:
    rng = random.Random(seed)
    commands, on = _sequence(rng, 1500)
    resp3 = seed % 3 == 2
    for port in (reference, foresight):
        RawClient(port).send(("FLUSHALL",))
    expected = replay(reference, commands, resp3, on)
    actual = replay(foresight, commands, resp3, on)
    for i, (cmd, want, got) in enumerate(zip(commands, expected, actual, strict=True)):
        assert got == want, f"seed {seed}, command {i} {cmd!r} on client {on[i]}: redis replied {want!r}, " \
                            f"foresight {got!r}"


def _sequence(rng: random.Random, length: int) -> tuple[list[Cmd], list[int]]:
    """Commands, and which of two clients sends each (mostly the first: the second writes under its WATCH)."""
    commands = [_command(rng) for _ in range(length)]
    return commands, [0 if rng.random() < 0.8 else 1 for _ in commands]


if __name__ == "__main__":  # a longer hunt: python -m tests.service.test_differential_fuzz [SEEDS] [LENGTH]
    import sys

    from tests import servers
    from tests.service.harness import running_service

    seeds, length = (int(a) for a in [*sys.argv[1:], "200", "3000"][:2])
    port = servers.free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--databases", "1"]
    mismatches = 0
    with servers.process(argv, "redis-reference"), running_service(dev=True) as svc:
        servers.wait_until(lambda: servers.tcp_open(port), "reference redis-server")
        for seed in range(100, 100 + seeds):
            rng = random.Random(seed)
            commands, on = _sequence(rng, length)
            for server in (port, svc.resp_port):
                RawClient(server).send(("FLUSHALL",))
            resp3 = seed % 2 == 0
            pairs = zip(replay(port, commands, resp3, on), replay(svc.resp_port, commands, resp3, on), strict=True)
            first = next(((i, w, g) for i, (w, g) in enumerate(pairs) if w != g), None)
            if first is not None:
                mismatches += 1
                print(f"seed {seed}, command {first[0]} {commands[first[0]]!r}: redis {first[1]!r}, foresight "
                      f"{first[2]!r}")
    print(f"{mismatches} of {seeds} sequences of {length} differed")
    sys.exit(1 if mismatches else 0)
