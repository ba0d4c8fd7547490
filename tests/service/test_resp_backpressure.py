"""One RESP client cannot hold the event loop or the server's memory: pipelines, unread replies, long
transactions, and shutdown with idle clients (real service, real sockets)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hiredis
import pytest
import redis

from service.resp.connection import _HIGH_WATER, _TURN_BYTES, YIELD_EVERY, RespConnection
from service.state import DEV_TENANT
from tests.servers import wait_until
from tests.service.harness import RawClient, RunningService, running_service, write_tenants_file
from tests.tlsutil import PKI

PING = RawClient.encode("PING")


def _only_client(svc: RunningService) -> RespConnection:
    wait_until(lambda: len(svc.state.resp_clients) == 1, "one RESP connection")
    return next(iter(svc.state.resp_clients))


@contextmanager
def _most_work_per_loop_turn(svc: RunningService, measure: Callable[[], int]) -> Iterator[list[int]]:
    """The largest growth of `measure()` within one turn of the service's loop, while the block runs."""
    worst = [0]
    stop = threading.Event()

    async def tick() -> None:
        last = measure()
        while not stop.is_set():
            await asyncio.sleep(0)
            now = measure()
            worst[0] = max(worst[0], now - last)
            last = now

    future = asyncio.run_coroutine_threadsafe(tick(), svc.loop)
    try:
        yield worst
    finally:
        stop.set()
        future.result(10)


def _read_replies(sock: socket.socket, count: int) -> list[object]:
    reader, replies = hiredis.Reader(), []
    while len(replies) < count:
        chunk = sock.recv(1 << 20)
        assert chunk, f"connection closed after {len(replies)} of {count} replies"
        reader.feed(chunk)
        while (reply := reader.gets()) is not False:
            replies.append(reply)
    return replies


def test_a_pipeline_behind_a_slow_read_waits_in_the_kernel_and_shares_the_loop(tmp_path: Path) -> None:
    """While a read-through waits, the client's next commands are not read into the server's memory; once it is
    answered, they run YIELD_EVERY at a time between other clients' turns, and every one is answered in order."""
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "slow").write_bytes(b"loaded")  # the dev tenant's own origin
    pings = 600_000  # 8.4 MB
    with running_service(dev=True, prefetcher="none", origin=str(origin), origin_latency_ms=8000,
                         origin_timeout_s=60) as svc:
        client = RawClient(svc.resp_port)
        conn = _only_client(svc)
        tenant = svc.state.tenants.get(DEV_TENANT)
        with _most_work_per_loop_turn(svc, lambda: conn.commands_processed) as worst:
            client.sock.sendall(RawClient.encode("GET", "slow"))
            wait_until(lambda: tenant.in_flight(b"slow"), "the read-through of 'slow'")
            sender = threading.Thread(target=client.sock.sendall, args=(PING * pings,))
            sender.start()
            sender.join(1.5)  # the old server read it all at once; this one leaves it to the kernel's buffers
            assert tenant.in_flight(b"slow")
            assert conn.reader.len() < 64 * 1024  # nothing read since the GET (the old server: all 8 MB)
            replies = _read_replies(client.sock, 1 + pings)
            sender.join()
        assert replies[0] == b"loaded" and replies[1:] == [b"PONG"] * pings
        assert worst[0] <= 2 * YIELD_EVERY


@pytest.mark.parametrize("tls", [False, True])
def test_a_client_that_never_reads_its_replies_costs_about_the_high_water_mark(
        tmp_path: Path, pki: PKI, tls: bool) -> None:
    value = b"v" * (64 * 1024)
    gets = 1000  # 64 MB of replies, from 31 KB of requests
    if tls:
        keys = write_tenants_file(tmp_path / "tenants.json", {"acme": {"memory_bytes": 1 << 28}})
        settings = dict(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tmp_path / "tenants.json")
    else:
        settings = dict(dev=True)
    with running_service(**settings) as svc:  # type: ignore[arg-type]
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        raw.settimeout(10)
        raw.connect(("127.0.0.1", svc.resp_port))
        if tls:
            context = ssl.create_default_context(cafile=str(pki.ca_cert))
            raw = context.wrap_socket(raw, server_hostname="localhost")
        client = RawClient(svc.resp_port, raw)
        if tls:
            assert client.send(("AUTH", keys["acme"].secret)) == b"+OK\r\n"
        assert client.send(("SET", "big", value)) == b"+OK\r\n"
        conn = _only_client(svc)
        before = conn.commands_processed
        raw.sendall(RawClient.encode("GET", "big") * gets)

        async def buffered() -> int:
            assert conn.transport is not None
            return conn.transport.get_write_buffer_size()

        wait_until(lambda: svc.call(buffered()) >= _HIGH_WATER, "the replies to fill the transport")
        answered = conn.commands_processed - before
        assert svc.call(buffered()) <= _HIGH_WATER + _TURN_BYTES + len(value) + 1024
        assert answered < gets / 4  # the rest wait, unread and unanswered, until the client reads
        replies = _read_replies(raw, gets)
        assert replies == [value] * gets


def test_an_idle_connection_holds_neither_its_last_read_nor_its_last_request() -> None:
    """While a read is answered the connection keeps it (an inline request behind an array is looked for in it),
    and in a task the last request too; idle, it keeps neither, so idle clients that each sent a large value do
    not hold a copy each."""
    with running_service(dev=True) as svc:
        client = RawClient(svc.resp_port)
        value = b"v" * 300_000
        assert client.send(("SET", "big", value)) == b"+OK\r\n"
        connection = _only_client(svc)
        wait_until(lambda: connection._read is None, "the read dropped once answered")
        client.sock.sendall(RawClient.encode("GET", "big") * 2)  # past one turn's bytes: the second GET in a task
        assert _read_replies(client.sock, 2) == [value, value]
        wait_until(lambda: not connection.busy, "the task done")
        assert connection._read is None and connection._previous is None


def test_a_transaction_is_charged_what_its_queue_holds_not_just_its_bytes() -> None:
    with running_service(dev=True, max_request_bytes=100_000) as svc:
        client = RawClient(svc.resp_port)
        replies = client.send(("MULTI",), *[("PING",)] * 2000, ("EXEC",))
        assert b"-ERR transaction larger than 100000 bytes; EXEC will discard it\r\n" in replies
        assert replies.endswith(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
        small = redis.Redis(port=svc.resp_port).pipeline(transaction=True)
        for i in range(100):
            small.set(f"k{i}", i)
        assert small.execute() == [True] * 100


def test_a_long_exec_runs_whole_while_a_long_pipeline_shares_the_loop(dev_service: RunningService) -> None:
    """A pipeline gives other clients the loop every YIELD_EVERY commands; an EXEC, however long, runs as one
    step (Redis's isolation: no other client's command lands between its commands)."""
    incrs = 5 * YIELD_EVERY
    client = redis.Redis(port=dev_service.resp_port)
    store = dev_service.state.tenants.get(DEV_TENANT).store
    for transaction, bound in ((False, 2 * YIELD_EVERY), (True, incrs)):
        client.set("n", 0)
        with _most_work_per_loop_turn(dev_service, lambda: int(store.get(b"n") or 0)) as worst:
            pipe = client.pipeline(transaction=transaction)
            for _ in range(incrs):
                pipe.incr("n")
            assert pipe.execute() == list(range(1, incrs + 1))
        assert (worst[0] == incrs) if transaction else (0 < worst[0] <= bound), (transaction, worst[0])


def test_shutdown_drops_idle_tls_clients_at_once_and_lets_a_busy_one_finish(tmp_path: Path, pki: PKI) -> None:
    """An idle TLS client never sends close_notify: waiting for it made every shutdown take the grace period."""
    origin = tmp_path / "origin"
    (origin / "acme").mkdir(parents=True)
    (origin / "acme" / "slow").write_bytes(b"loaded")
    keys = write_tenants_file(tmp_path / "tenants.json", {"acme": {}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tmp_path / "tenants.json",
                         origin=str(origin), origin_latency_ms=4000, prefetcher="none",
                         shutdown_grace_s=20) as svc:
        def connect() -> redis.Redis:
            return redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(pki.ca_cert),
                               password=keys["acme"].secret)

        idle, busy = connect(), connect()
        assert idle.ping() is True
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(busy.get("slow")))
        worker.start()
        tenant = svc.state.tenants.get("acme")
        wait_until(lambda: tenant.in_flight(b"slow"), "the read-through of 'slow'")
        wait_until(lambda: len(svc.state.resp_clients) == 2, "both connections")
        stopping = asyncio.run_coroutine_threadsafe(svc.service.stop(), svc.loop)
        wait_until(lambda: len(svc.state.resp_clients) == 1, "the idle client to be dropped", timeout=10)
        assert tenant.in_flight(b"slow")  # the busy one is still being answered
        worker.join(30)
        assert result == [b"loaded"]
        stopping.result(30)
