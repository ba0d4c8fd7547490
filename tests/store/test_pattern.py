"""The glob matcher against a line-by-line port of Redis's own `stringmatchlen` (util.c, 7.0) and against a real
redis-server, on random patterns and keys, and on a pattern that makes a backtracking matcher take exponential
time."""

from __future__ import annotations

import platform
import random

import pytest
import redis

from service.store import pattern as pattern_module
from service.store.pattern import MAX_PATTERN_BYTES, PatternTooLong, compile_glob
from tests import servers
from tests.service.harness import running_service


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


# (pattern, key, whether Redis matches): each of ?, *, classes, ranges and escapes, and their edge cases.
GLOB_CASES = [
    (b"h?llo", b"hello", True), (b"h?llo", b"hllo", False), (b"h?llo", b"heello", False),
    (b"h*llo", b"hllo", True), (b"h*llo", b"heeeello", True), (b"h*llo", b"hellox", False),
    (b"**", b"x", True), (b"a*", b"a", True), (b"*a", b"ba", True), (b"*a*b*", b"xxaxxbxx", True),
    (b"*a*b*", b"xxbxxaxx", False), (b"", b"a", False),
    (b"h[ae]llo", b"hallo", True), (b"h[ae]llo", b"hillo", False), (b"h[^e]llo", b"hallo", True),
    (b"h[^e]llo", b"hello", False), (b"h[a-b]llo", b"hbllo", True), (b"h[b-a]llo", b"hbllo", True),
    (b"h[a-b]llo", b"hcllo", False), (b"[]", b"a", False), (b"[^]", b"a", True), (b"[a-]", b"-", False),
    (b"[a-]", b"a", True), (b"[a-]", b"_", True), (b"[ab", b"b", True), (b"[ab", b"[", False), (b"[\\]]", b"]", True),
    (b"[\\-]", b"-", True), (b"[a\\", b"\\", True),
    (b"h\\*llo", b"h*llo", True), (b"h\\*llo", b"hello", False), (b"h\\?llo", b"h?llo", True),
    (b"\\[a]", b"[a]", True), (b"\\[a]", b"a", False), (b"a\\", b"a\\", True), (b"\\\\", b"\\", True),
    (b"h\\ello", b"hello", True), (b"[\xff-a]", b"\x00", True), (b"[\xff-a]", b"b", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), GLOB_CASES)
def test_glob_cases_match_as_redis_does(pattern: bytes, key: bytes, expected: bool) -> None:
    assert redis_stringmatch(pattern, key) is expected  # the table is right about Redis
    assert compile_glob(pattern)(key) is expected
    long_form = pattern + b"*" * 300 if pattern.endswith(b"*") else b"*" * 300 + pattern if pattern[:1] == b"*" \
        else None  # the same pattern over the cached length: compiled afresh, matched alike
    if long_form is not None:
        assert compile_glob(long_form)(key) is expected


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="Redis's ranges follow the C char's sign")
def test_the_glob_table_agrees_with_a_real_redis_server() -> None:
    with servers.redis_server() as server:
        client = redis.Redis(port=server.port)
        for pattern, key, expected in GLOB_CASES:
            client.flushall()
            client.set(key, b"1")
            assert (client.keys(pattern) == [key]) is expected, (pattern, key)


def test_only_short_patterns_stay_cached_and_absurdly_long_ones_are_refused() -> None:
    pattern_module._cached.cache_clear()
    short, long_ = b"user:*:profile", b"user:" + b"?" * 1000 + b"*"
    assert compile_glob(short) is compile_glob(short)
    assert compile_glob(long_) is not compile_glob(long_)  # compiled for the command, then freed
    assert compile_glob(long_)(b"user:" + b"x" * 1000) and not compile_glob(long_)(b"user:x")
    largest = b"[a]" * (MAX_PATTERN_BYTES // 3) + b"*"
    assert compile_glob(largest)(b"a" * (MAX_PATTERN_BYTES // 3) + b"tail")
    with pytest.raises(PatternTooLong, match=r"the pattern is 65537 bytes, over the 65536 bytes a key pattern"):
        compile_glob(b"k" * (MAX_PATTERN_BYTES + 1))
    for i in range(300):  # clients varying patterns: long ones are never kept, short ones up to the cache's size
        compile_glob(b"k%d*" % i + b"?" * 400)
    assert pattern_module._cached.cache_info().currsize == 1  # `short` alone
    for i in range(300):
        compile_glob(b"k%d*" % i)
    info = pattern_module._cached.cache_info()
    assert info.currsize == info.maxsize == 256


def test_keys_and_scan_refuse_a_pattern_over_the_cap_with_a_clear_error() -> None:
    too_long = b"*" + b"a" * MAX_PATTERN_BYTES
    with running_service(dev=True, prefetcher="none") as svc:
        client = redis.Redis(port=svc.resp_port)
        client.set("a", "1")
        for call in (lambda: client.keys(too_long), lambda: client.scan(0, match=too_long)):
            with pytest.raises(redis.ResponseError, match=f"over the {MAX_PATTERN_BYTES} bytes"):
                call()
        assert client.keys("a*") == [b"a"] and client.ping()  # the connection still serves
