"""Throwaway TLS servers for the tests: an asyncio echo server and uvicorn, each watching its ServerTLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from cryptography import x509
from fastapi import FastAPI

from service.security.tls import ServerTLS, peer_common_name
from tests.servers import free_port, wait_until


@contextmanager
def echo_server(tls: ServerTLS, watch_interval: float = 0.05) -> Iterator[int]:
    """An asyncio TLS server on its own loop that answers each line with the client's CN (or '-') and the line."""
    loop = asyncio.new_event_loop()
    port = free_port()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                name = peer_common_name(writer.get_extra_info("ssl_object")) or "-"
                writer.write(f"{name} ".encode() + line)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main(started: threading.Event, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=tls.context)
        watcher = asyncio.create_task(tls.watch(watch_interval))
        started.set()
        await stop.wait()
        watcher.cancel()
        server.close()

    started = threading.Event()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(main(started, stop)), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost")


def serial_of(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def echo(sock: ssl.SSLSocket, text: str) -> str:
    sock.sendall(text.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data.decode().strip()


@contextmanager
def uvicorn_server(
    tls: ServerTLS, setup: Callable[[FastAPI], None] | None = None, watch_interval: float = 0.05
) -> Iterator[int]:
    """uvicorn serving a FastAPI app with the ServerTLS context; the cert watcher runs in the app's lifespan,
    so reloads happen on uvicorn's own event loop. `setup` adds routes."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(tls.watch(watch_interval))
        yield
        watcher.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "ok"}

    if setup is not None:
        setup(app)
    port = free_port()
    config = uvicorn.Config(  # uvicorn serves the reloader's context, so reloads reach it
        app, host="127.0.0.1", port=port, log_level="warning", ssl_context_factory=lambda _config, _default: tls.context
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "uvicorn", timeout=15)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
