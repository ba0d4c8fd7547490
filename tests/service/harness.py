"""Run a real Service (both listeners, uvloop) on a background thread for the duration of a test."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hiredis
import uvloop

from service.config import Settings
from service.security.apikeys import IssuedKey, new_key
from service.server import Endpoints, Service


class RunningService:
    def __init__(self, service: Service, loop: asyncio.AbstractEventLoop, endpoints: Endpoints) -> None:
        self.service = service
        self.loop = loop
        self.endpoints = endpoints

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.service.state

    @property
    def resp_port(self) -> int:
        return self.endpoints.resp_port

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the service's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


@contextmanager
def running_service(**settings: Any) -> Iterator[RunningService]:
    settings.setdefault("resp_port", 0)
    settings.setdefault("http_port", 0)
    settings.setdefault("shutdown_grace_s", 2)
    service_settings = Settings(**settings)
    loop = uvloop.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            service = Service(service_settings)
            started["service"] = service
            started["endpoints"] = loop.run_until_complete(service.start())
        except BaseException as err:
            started["error"] = err
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in started:
        raise started["error"]
    running = RunningService(started["service"], loop, started["endpoints"])
    try:
        yield running
    finally:
        try:
            running.call(running.service.stop())
        finally:  # even after a stop that failed or hung: a loop left running would starve every later test
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


def write_tenants_file(path: Path, tenants: dict[str, dict[str, Any]]) -> dict[str, IssuedKey]:
    """A tenants file with one fresh key per tenant; returns the keys (tests only ever see them in memory)."""
    keys = {name: new_key() for name in tenants}
    path.write_text(json.dumps({
        "tenants": [{"name": name, "quota": quota} for name, quota in tenants.items()],
        "keys": [{"key_id": k.key_id, "tenant": name, "hash": k.key_hash} for name, k in keys.items()],
    }))
    return keys


class RawClient:
    """A byte-exact RESP client: sends raw commands and returns the raw reply bytes."""

    def __init__(self, port: int, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=10)

    @staticmethod
    def encode(*args: bytes | str | int) -> bytes:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)

    def send(self, *commands: tuple[bytes | str | int, ...]) -> bytes:
        """Send commands in one write (a pipeline); return the raw bytes of all their replies."""
        self.sock.sendall(b"".join(self.encode(*c) for c in commands))
        reader = hiredis.Reader()
        raw = b""
        replies = 0
        while replies < len(commands):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            raw += chunk
            reader.feed(chunk)
            while reader.gets() is not False:
                replies += 1
        return raw

    def close(self) -> None:
        self.sock.close()


Cmd = tuple[bytes | str | int, ...]


def replay(port: int, commands: list[Cmd], resp3: bool, on: list[int] | None = None) -> list[bytes]:
    """Each command's raw reply, one round trip each, on fresh connections (RESP3 after HELLO 3): all on one,
    or command i on connection `on[i]`, so that one client's WATCH can see another's writes."""
    on = on or [0] * len(commands)
    clients = [RawClient(port) for _ in range(max(on, default=0) + 1)]
    try:
        if resp3:
            for client in clients:
                client.send(("HELLO", "3"))
        return [clients[i].send(cmd) for i, cmd in zip(on, commands, strict=True)]
    finally:
        for client in clients:
            client.close()


def assert_same_replies(case: str, commands: list[Cmd], reference: int, foresight: int, resp3: bool) -> None:
    """Replay `commands` on both servers, each emptied first, and compare every reply byte for byte."""
    for port in (reference, foresight):
        RawClient(port).send(("FLUSHALL",), ("SCRIPT", "FLUSH"))
    expected = replay(reference, commands, resp3)
    actual = replay(foresight, commands, resp3)
    for cmd, want, got in zip(commands, expected, actual, strict=True):
        assert got == want, f"{case}: {cmd!r}: redis replied {want!r}, foresight replied {got!r}"
