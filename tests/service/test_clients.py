"""Real Redis clients (redis-py in RESP2 and RESP3, redis-cli) work against Foresight unchanged."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from service.resp.connection import COMMANDS
from service.security.apikeys import new_key
from service.store.memory import ENTRY_OVERHEAD
from tests.service.conftest import ProductionService
from tests.service.harness import RunningService, running_service
from tests.tlsutil import PKI


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_round_trip(dev_service: RunningService, protocol: int) -> None:
    client = redis.Redis(port=dev_service.resp_port, protocol=protocol, client_name="spec")
    assert client.ping() is True
    assert client.set("greeting", "hello", ex=100) is True
    assert client.get("greeting") == b"hello"
    assert 99 <= client.ttl("greeting") <= 100
    assert client.mset({"a": "1", "b": "2"}) is True
    assert client.mget("a", "b", "missing") == [b"1", b"2", None]
    assert client.incrby("a", 41) == 42
    assert client.set("greeting", "x", nx=True) is None
    assert client.getdel("b") == b"2"
    assert client.exists("a", "b") == 1
    assert client.client_getname() in ("spec", b"spec")  # redis-py decodes it in RESP2 only
    assert client.dbsize() == 2
    with pytest.raises(redis.ResponseError, match="not an integer"):
        client.incr("greeting")


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_cache_idioms(dev_service: RunningService, protocol: int) -> None:
    """What cache libraries call besides SET EX (flask-caching's setex, setnx-based locks, getex to extend a TTL)."""
    client = redis.Redis(port=dev_service.resp_port, protocol=protocol)
    client.delete("page", "lock")
    assert client.setex("page", 60, "<html>") is True
    assert 59 <= client.ttl("page") <= 60
    assert client.psetex("page", 120_000, "<html2>") is True
    assert 119 <= client.ttl("page") <= 120
    assert client.setnx("lock", "owner-1") is True
    assert client.setnx("lock", "owner-2") is False
    assert client.getset("lock", "owner-3") == b"owner-1"
    assert client.getex("page", ex=300) == b"<html2>"
    assert 299 <= client.ttl("page") <= 300
    assert client.getex("page", persist=True) == b"<html2>" and client.ttl("page") == -1
    assert client.type("page") in (b"string", "string") and client.type("gone") in (b"none", "none")
    assert client.touch("page", "lock", "gone") == 2


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_pipeline(dev_service: RunningService, protocol: int) -> None:
    client = redis.Redis(port=dev_service.resp_port, protocol=protocol)
    pipe = client.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"k{i}", i)
        pipe.incr(f"k{i}")
    results = pipe.execute()
    assert results[1::2] == list(range(1, 501))
    assert client.mget([f"k{i}" for i in range(0, 500, 100)]) == [b"1", b"101", b"201", b"301", b"401"]


def test_a_command_that_fails_unexpectedly_answers_an_error_and_the_pipeline_goes_on(
        dev_service: RunningService, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in one command costs that command an error reply, not the connection and the replies of the
    commands pipelined with it."""
    def broken(conn: object, args: list[bytes]) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setitem(COMMANDS, b"echo", dataclasses.replace(COMMANDS[b"echo"], handler=broken))
    client = redis.Redis(port=dev_service.resp_port)
    pipe = client.pipeline(transaction=False)
    pipe.set("k", "1").echo("x").get("k")
    done, failed, read = pipe.execute(raise_on_error=False)
    assert (done, read) == (True, b"1")
    assert isinstance(failed, redis.ResponseError) and str(failed) == "internal error"
    assert client.ping() is True  # the same connection


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_transactions_and_watch(dev_service: RunningService, protocol: int) -> None:
    """redis-py's default pipeline is MULTI/EXEC; `transaction()` retries a WATCHed check-and-set until no other
    client wrote the key in between."""
    client, rival = (redis.Redis(port=dev_service.resp_port, protocol=protocol) for _ in range(2))
    client.delete("counter", "audit")
    pipe = client.pipeline()
    pipe.set("counter", 1).incrby("counter", 9).get("counter").get("absent")
    assert pipe.execute() == [True, 10, b"10", None]
    attempts = []

    def double(tx: redis.client.Pipeline) -> None:
        value = int(tx.get("counter"))
        attempts.append(value)
        if len(attempts) == 1:
            rival.set("counter", 100)  # another client writes between WATCH and EXEC: the first try must fail
        tx.multi()
        tx.set("counter", value * 2)

    client.transaction(double, "counter")
    assert attempts == [10, 100] and client.get("counter") == b"200"
    bad = client.pipeline()
    bad.set("audit", "x").incr("audit").execute_command("NOSUCH")
    with pytest.raises(redis.ResponseError):
        bad.execute()
    assert client.get("audit") is None  # a command refused while queueing discards the whole transaction
    # A lock without Lua: SET NX PX to take it; release only if still ours, with WATCH + MULTI/EXEC.
    assert client.set("lock", "me", nx=True, px=10_000) and not rival.set("lock", "them", nx=True, px=10_000)

    def release_as(token: bytes) -> Callable[[redis.client.Pipeline], None]:
        def release(tx: redis.client.Pipeline) -> None:
            owned = tx.get("lock") == token
            tx.multi()
            if owned:
                tx.delete("lock")

        return release

    rival.transaction(release_as(b"them"), "lock")  # not the owner: nothing deleted
    assert client.get("lock") == b"me"
    client.transaction(release_as(b"me"), "lock")
    assert client.get("lock") is None


def test_redis_py_resp3_hello_reports_protocol(dev_service: RunningService) -> None:
    client = redis.Redis(port=dev_service.resp_port, protocol=3)
    hello = client.execute_command("HELLO", "3")
    assert hello[b"proto"] == 3
    assert hello[b"mode"] == b"standalone"
    info = client.info()
    assert info["redis_version"] == "7.0.15"


def test_redis_py_over_tls_with_api_key(prod_service: ProductionService) -> None:
    key = prod_service.keys["acme"]
    client = redis.Redis(port=prod_service.svc.resp_port, ssl=True, ssl_ca_certs=str(prod_service.pki.ca_cert),
                         password=key.secret, protocol=3)
    assert client.set("k", "v") is True
    assert client.get("k") == b"v"


def test_redis_cli_over_tls(prod_service: ProductionService) -> None:
    key = prod_service.keys["globex"]
    base = ["redis-cli", "--tls", "--cacert", str(prod_service.pki.ca_cert), "-p", str(prod_service.svc.resp_port),
            "--no-auth-warning", "-a", key.secret]
    stored = subprocess.run([*base, "SET", "city", "Springfield"], capture_output=True, text=True, check=True)
    assert stored.stdout == "OK\n"
    out = subprocess.run([*base, "GET", "city"], capture_output=True, text=True, check=True).stdout
    assert out == "Springfield\n"
    noauth = subprocess.run([*base[:-2], "GET", "city"], capture_output=True, text=True).stdout
    assert "NOAUTH" in noauth


def test_redis_cli_dev_mode_commands(dev_service: RunningService) -> None:
    base = ["redis-cli", "-p", str(dev_service.resp_port)]
    run = lambda *args: subprocess.run([*base, *args], capture_output=True, text=True, check=True).stdout  # noqa: E731
    assert run("PING") == "PONG\n"
    assert run("SET", "n", "5") == "OK\n"
    assert run("INCR", "n") == "6\n"
    assert "redis_version:7.0.15" in run("INFO", "server")
    assert run("COMMAND", "COUNT").strip().isdigit()
    assert "summary" in run("COMMAND", "DOCS", "get")
    run("FLUSHDB")
    run("MSET", "a", "1", "bb", "22", "ccc", "333")
    # redis-cli's key tools: --bigkeys reads TYPE and STRLEN over SCAN, --memkeys MEMORY USAGE (key + value + overhead)
    assert "Biggest string found '\"ccc\"' has 3 bytes" in run("--bigkeys")
    assert f"3 strings with {12 + 3 * ENTRY_OVERHEAD} bytes" in run("--memkeys")
    info = redis.Redis(port=dev_service.resp_port).info()  # the fields redis-cli --stat and monitors read
    assert (info["blocked_clients"], info["loading"], info["rdb_bgsave_in_progress"]) == (0, 0, 0)
    assert info["used_memory_human"] == f"{info['used_memory']}B" and info["maxmemory_human"] == "256.00M"


def test_django_cache_framework_over_tls(tmp_path: Path, pki: PKI) -> None:
    """Django's own Redis cache backend, unchanged: add/get/set with timeouts, many-key calls, incr, touch,
    delete and clear() (FLUSHDB, so the key carries the admin scope)."""
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    from django.core.cache.backends.redis import RedisCache

    key = new_key()
    tenants = tmp_path / "tenants.json"
    tenants.write_text(json.dumps({"tenants": [{"name": "web"}, {"name": "other"}], "keys": [
        {"key_id": key.key_id, "tenant": "web", "hash": key.key_hash, "scopes": ["read", "write", "admin"]}]}))
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants) as svc:
        location = f"rediss://:{key.secret}@127.0.0.1:{svc.resp_port}/0"
        cache = RedisCache(location, {"OPTIONS": {"ssl_ca_certs": str(pki.ca_cert)}, "KEY_PREFIX": "site"})
        cache.set("page:/", {"html": "<h1>hi</h1>"}, timeout=60)
        assert cache.get("page:/") == {"html": "<h1>hi</h1>"}
        assert cache.add("page:/", "other") is False and cache.add("fresh", 1) is True
        cache.set_many({"a": 1, "b": [2, 3]}, timeout=None)
        assert cache.get_many(["a", "b", "nope"]) == {"a": 1, "b": [2, 3]}
        assert cache.incr("a", 41) == 42 and cache.decr("a") == 41
        assert cache.touch("a", timeout=30) is True and cache.touch("nope") is False
        assert cache.has_key("b") and cache.delete("b") and not cache.has_key("b")
        assert cache.get_or_set("computed", lambda: "value", timeout=10) == "value"
        assert svc.state.tenants.get("web").store.entry(b"site:1:computed") is not None  # Django's key layout
        cache.clear()
        assert cache.get("page:/") is None and cache.get_many(["a", "fresh"]) == {}
        assert len(svc.state.tenants.get("web").store) == 0
        cache.close()
