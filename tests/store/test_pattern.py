"""The glob matcher against a line-by-line port of Redis's own `stringmatchlen` (util.c, 7.0) and against a real
redis-server, on random patterns and keys, and on a pattern that makes a backtracking matcher take exponential
time."""

from __future__ import annotations

import platform
import random

import pytest
import redis

from service.store.pattern import compile_glob
from tests import servers


def _char(byte: int) -> int:
    """A byte as the signed C `char` that Redis compares on x86."""
    return byte - 256 if byte >= 0x80 else byte


def redis_stringmatch(pattern: bytes, string: bytes) -> bool:
    """util.c's stringmatchlen_impl without nocase, skip-longer-matches kept (it only prunes)."""
    skip = [False]

    def match(p: int, s: int) -> bool:
        while p < len(pattern) and s < len(string):
            c = pattern[p]
            if c == ord("*"):
                while p + 1 < len(pattern) and pattern[p + 1] == ord("*"):
                    p += 1
                if p + 1 == len(pattern):
                    return True
                while s < len(string):
                    if match(p + 1, s):
                        return True
                    if skip[0]:
                        return False
                    s += 1
                skip[0] = True
                return False
            if c == ord("?"):
                s += 1
            elif c == ord("["):
                p += 1
                negate = p < len(pattern) and pattern[p] == ord("^")
                if negate:
                    p += 1
                hit = False
                while True:
                    if p < len(pattern) and pattern[p] == ord("\\") and len(pattern) - p >= 2:
                        p += 1
                        hit |= pattern[p] == string[s]
                    elif p < len(pattern) and pattern[p] == ord("]"):
                        break
                    elif p >= len(pattern):
                        p -= 1
                        break
                    elif len(pattern) - p >= 3 and pattern[p + 1] == ord("-"):
                        low, high = sorted((_char(pattern[p]), _char(pattern[p + 2])))
                        p += 2
                        hit |= low <= _char(string[s]) <= high
                    else:
                        hit |= pattern[p] == string[s]
                    p += 1
                if hit == negate:
                    return False
                s += 1
            else:
                if c == ord("\\") and len(pattern) - p >= 2:
                    p += 1
                if pattern[p] != string[s]:
                    return False
                s += 1
            p += 1
            if s == len(string):
                while p < len(pattern) and pattern[p] == ord("*"):
                    p += 1
                break
        return p == len(pattern) and s == len(string)

    return match(0, 0)


def test_random_patterns_match_as_redis_does() -> None:
    rng = random.Random(11)
    alphabet = b"ab-]^\\[*?\x00\x7f\x80\xff"
    checked = 0
    for _ in range(20_000):
        pattern = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        key = bytes(rng.choice(b"ab-]^\\[\x00\x7f\x80\xff") for _ in range(rng.randint(1, 8)))
        if pattern == b"*":
            continue  # KEYS and SCAN shortcut it before calling stringmatchlen
        assert compile_glob(pattern)(key) == redis_stringmatch(pattern, key), (pattern, key)
        checked += 1
    assert checked > 19_000


@pytest.mark.timeout(10)
def test_many_stars_on_a_long_key_do_not_backtrack() -> None:
    """A backtracking regex needs about 20 s for this on a 100-byte key; a 5,000-byte one would never end."""
    assert compile_glob(b"*a*a*a*a*a*a*a*a*b")(b"a" * 5000) is False
    assert compile_glob(b"*a*a*a*a*a*a*a*a*b")(b"a" * 5000 + b"b") is True


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="Redis's ranges follow the C char's sign")
def test_random_patterns_with_high_bytes_match_as_a_real_redis_server_does() -> None:
    """KEYS on Debian's redis-server (7.0, x86) over keys and patterns with bytes 0x80 and above, where a range's
    bounds compare as signed chars (`[\\xff-a]` runs from -1 to 97)."""
    rng = random.Random(3)
    with servers.redis_server() as server:
        client = redis.Redis(port=server.port)
        keys = {bytes(rng.choice(b"ab-^]\\[x\x00\x7f\x80\xff") for _ in range(rng.randint(1, 6))) for _ in range(400)}
        client.mset(dict.fromkeys(keys, b"1"))
        ranges = [b"[\xff-a]", b"[a-\xff]", b"[\x80-\x7f]", b"[^\xff-\x00]", b"[x\xff-]"]
        patterns = ranges + [bytes(rng.choice(b"ab-^]\\[*?x\x00\xff") for _ in range(rng.randint(1, 7)))
                             for _ in range(1500)]
        for pattern in patterns:
            matches = compile_glob(pattern)
            assert {key for key in keys if matches(key)} == set(client.keys(pattern)), pattern
