"""RANDOMKEY served, beside redis-server 7.0: the same keys reachable, none gone, nil once empty, whatever the
writes after the first call (when Foresight builds its key list)."""

from __future__ import annotations

import time

import redis


def _drawn(client: redis.Redis, draws: int = 1500) -> set[bytes | None]:
    pipe = client.pipeline(transaction=False)
    for _ in range(draws):
        pipe.randomkey()
    return set(pipe.execute())


def _reached_after_each_kind_of_write(client: redis.Redis) -> list[set[bytes | None]]:
    client.flushall()
    reached = [_drawn(client, 10)]
    client.mset({f"k{i:02d}": "v" for i in range(30)})
    reached.append(_drawn(client))
    client.delete("k00", "k01", "k02")
    client.unlink("k03")
    client.rename("k04", "renamed")
    client.renamenx("k05", "renamed-nx")
    client.copy("k06", "copied")
    client.mset({"added:1": "v", "added:2": "v"})
    client.set("k07", "overwritten")
    client.set("k08", "gone soon", px=20)
    client.pexpire("k09", 20)
    client.getdel("k10")
    time.sleep(0.1)
    reached.append(_drawn(client))
    client.flushall()
    reached.append(_drawn(client, 10))
    client.set("after-flush", "v")
    reached.append(_drawn(client, 10))
    return reached


def test_randomkey_reaches_the_same_keys_as_redis_after_every_kind_of_write(reference: int, foresight: int) -> None:
    expected = _reached_after_each_kind_of_write(redis.Redis(port=reference))
    after_writes = {f"k{i:02d}".encode() for i in range(11, 30)} | {b"k06", b"k07", b"renamed", b"renamed-nx",
                                                                     b"copied", b"added:1", b"added:2"}
    assert expected == [{None}, {f"k{i:02d}".encode() for i in range(30)}, after_writes, {None}, {b"after-flush"}]
    assert _reached_after_each_kind_of_write(redis.Redis(port=foresight)) == expected


def test_randomkey_draws_each_key_of_a_small_tenant(foresight: int) -> None:
    client = redis.Redis(port=foresight)
    client.flushall()
    keys = {f"key:{i}".encode() for i in range(50)}
    client.mset(dict.fromkeys(keys, "v"))
    assert _drawn(client, 3000) == keys
