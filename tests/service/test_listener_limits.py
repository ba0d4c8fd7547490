"""What a client that has not said anything yet may hold: the TLS handshake and request-head deadlines, and the
per-address and total caps, which count a connection from accept, its TLS handshake included (real service, real
sockets). Clients from 127.0.0.2 and 127.0.0.3 stand for other addresses."""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import ConfigError, load_settings
from service.net import free_port
from tests.servers import wait_until
from tests.service.harness import RawClient, RunningService, running_service, write_tenants_file
from tests.tlsutil import PKI

HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n"


@contextmanager
def _service(tmp_path: Path, pki: PKI, **limits: Any) -> Iterator[RunningService]:
    write_tenants_file(tmp_path / "tenants.json", {"acme": {}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tmp_path / "tenants.json",
                         **limits) as svc:
        yield svc


def _http_port(svc: RunningService) -> int:
    return int(svc.endpoints.http_url.rsplit(":", 1)[1])


def _tls(port: int, pki: PKI, source: str = "127.0.0.1") -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return context.wrap_socket(raw, server_hostname="localhost")


def _raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _until_closed(sock: socket.socket, within: float) -> bytes | None:
    """What the server sends until it closes the connection, or None if it is still open after `within` seconds."""
    deadline = time.monotonic() + within
    received = b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        except (ConnectionResetError, ssl.SSLError):
            return received
        if not chunk:
            return received
        received += chunk


def _get(sock: socket.socket) -> int:
    """GET /healthz on an open connection, kept alive: the status."""
    sock.sendall(HEALTHZ)
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {response!r}"
        response += chunk
    head, body = response.split(b"\r\n\r\n", 1)
    headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers[b"content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1])


def _refused(port: int, pki: PKI, source: str = "127.0.0.1") -> bool:
    """Whether a TLS connection from `source` is closed before its handshake completes."""
    try:
        _tls(port, pki, source).close()
    except OSError:  # the server closed it unanswered: an EOF or a reset during the handshake
        return True
    return False


def test_a_tls_client_that_sends_nothing_is_dropped_at_the_head_deadline(tmp_path: Path, pki: PKI) -> None:
    with _service(tmp_path, pki, http_request_head_timeout_s=0.5) as svc:
        silent = _tls(_http_port(svc), pki)
        connected = time.monotonic()
        assert _until_closed(silent, within=5) == b""  # uvicorn alone holds it for good
        assert 0.4 < time.monotonic() - connected < 4


def test_a_request_head_that_trickles_in_is_answered_408_and_closed(tmp_path: Path, pki: PKI) -> None:
    """The deadline counts again from the end of the previous response: a header line every 0.2 s never ends it."""
    with _service(tmp_path, pki, http_request_head_timeout_s=1) as svc:
        client = _tls(_http_port(svc), pki)
        assert _get(client) == 200
        client.sendall(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n")
        started, received = time.monotonic(), b""
        while time.monotonic() - started < 5:
            client.settimeout(0.2)
            try:
                chunk = client.recv(65536)
            except TimeoutError:
                client.sendall(b"x-slow: 1\r\n")
                continue
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert received.endswith(b"no request line and headers within 1 s: closing the connection")
        assert time.monotonic() - started < 4


def test_each_request_on_a_kept_alive_connection_gets_the_whole_deadline(tmp_path: Path, pki: PKI) -> None:
    with _service(tmp_path, pki, http_request_head_timeout_s=1) as svc:
        busy, silent = _tls(_http_port(svc), pki), _tls(_http_port(svc), pki)
        for _ in range(15):  # 3 s on one connection, 3 deadlines' worth
            assert _get(busy) == 200
            time.sleep(0.2)
        assert _until_closed(silent, within=0.1) == b""  # opened with it, dropped long ago


def test_a_client_that_never_starts_its_tls_handshake_is_dropped_on_both_listeners(tmp_path: Path, pki: PKI) -> None:
    with _service(tmp_path, pki, tls_handshake_timeout_s=0.5) as svc:
        for port in (svc.resp_port, _http_port(svc)):
            raw = _raw(port)
            connected = time.monotonic()
            assert _until_closed(raw, within=5) == b""  # asyncio's own deadline is 60 s
            assert 0.4 < time.monotonic() - connected < 4


def test_one_address_may_hold_only_so_many_http_connections(tmp_path: Path, pki: PKI) -> None:
    with _service(tmp_path, pki, http_max_connections_per_source=2) as svc:
        port = _http_port(svc)
        held = [_tls(port, pki), _tls(port, pki)]
        assert _refused(port, pki)
        assert _get(_tls(port, pki, source="127.0.0.2")) == 200  # another address is not held up
        assert all(_get(sock) == 200 for sock in held)  # the held ones still serve
        held[0].close()
        wait_until(lambda: not _refused(port, pki), "a slot given back once a connection closes")
        tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        scrape = httpx.get(f"{svc.endpoints.http_url}/metrics", verify=tls)  # a loopback scrape needs no token
        refused = dict(line.rsplit(" ", 1) for line in scrape.text.splitlines()
                       if line.startswith("foresight_connections_refused_total{"))
        assert float(refused['foresight_connections_refused_total{listener="http"}']) >= 1  # and once more a retry
        assert refused['foresight_connections_refused_total{listener="resp"}'] == "0.0"


def test_a_connection_counts_against_its_address_before_its_tls_handshake(tmp_path: Path, pki: PKI) -> None:
    """On RESP too, where its admission counts a connection from the end of its handshake until it logs in."""
    keys = write_tenants_file(tmp_path / "tenants.json", {"acme": {}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tmp_path / "tenants.json",
                         http_max_connections_per_source=2, resp_max_unauthenticated_per_source=2) as svc:
        for port in (_http_port(svc), svc.resp_port):
            stalled = [_raw(port), _raw(port)]  # connected, never a byte of TLS
            assert _refused(port, pki), port
            assert not _refused(port, pki, source="127.0.0.2"), port
            for sock in stalled:
                sock.close()
            wait_until(lambda: not _refused(port, pki), "slots given back once stalled handshakes end")  # noqa: B023
        resp = RawClient(svc.resp_port, _tls(svc.resp_port, pki))
        assert resp.send(("AUTH", keys["acme"].secret)) == b"+OK\r\n"


def test_resp_connections_in_their_tls_handshake_count_towards_resp_max_clients(tmp_path: Path, pki: PKI) -> None:
    with _service(tmp_path, pki, resp_max_clients=3) as svc:
        logged_out = _tls(svc.resp_port, pki, source="127.0.0.2")
        wait_until(lambda: len(svc.state.resp_clients) == 1, "a RESP connection past its handshake")
        stalled = [_raw(svc.resp_port), _raw(svc.resp_port)]
        assert _refused(svc.resp_port, pki, source="127.0.0.3")
        stalled[0].close()
        wait_until(lambda: not _refused(svc.resp_port, pki, source="127.0.0.3"), "a slot given back")
        assert RawClient(svc.resp_port, logged_out).send(("PING",)).startswith(b"-NOAUTH")


def test_http_max_connections_caps_every_address_together(tmp_path: Path, pki: PKI) -> None:
    with _service(tmp_path, pki, http_max_connections=2) as svc:
        port = _http_port(svc)
        held = [_tls(port, pki, source="127.0.0.1"), _tls(port, pki, source="127.0.0.2")]
        assert _refused(port, pki, source="127.0.0.3")
        held[1].close()
        wait_until(lambda: not _refused(port, pki, source="127.0.0.3"), "a slot given back once a connection closes")


def test_a_trusted_proxy_is_not_capped_per_address(tmp_path: Path, pki: PKI) -> None:
    """It carries many clients: only http_max_connections bounds it."""
    with _service(tmp_path, pki, http_max_connections_per_source=1, forwarded_allow_ips="127.0.0.1") as svc:
        port = _http_port(svc)
        proxied = [_tls(port, pki), _tls(port, pki), _tls(port, pki)]
        assert all(_get(sock) == 200 for sock in proxied)
        other = _tls(port, pki, source="127.0.0.2")
        assert _refused(port, pki, source="127.0.0.2")
        assert _get(other) == 200


@pytest.mark.parametrize("setting", ["tls_handshake_timeout_s", "http_request_head_timeout_s",
                                     "http_max_connections_per_source", "http_max_connections"])
def test_the_listener_limits_must_be_positive(setting: str) -> None:
    variable = f"FORESIGHT_{setting.upper()}"
    with pytest.raises(ConfigError, match=rf"{setting} \({variable}\): Input should be greater than 0"):
        load_settings(dev=True, **{setting: 0})


def test_uvicorn_given_no_sockets_listens_on_none() -> None:
    """The service hands uvicorn the connections its own Listener accepted, and no socket: were uvicorn to take an
    empty list as 'bind config.host:config.port', it would open a second listener, without TLS or caps."""
    port = free_port()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None))

    async def serve_briefly() -> list[Any]:
        serving = asyncio.create_task(server.serve(sockets=[]))
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        listening = list(server.servers)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
        server.should_exit = True
        await serving
        return listening

    assert asyncio.run(serve_briefly()) == []


def test_uvicorn_httptools_protocol_has_the_hooks_the_head_deadline_uses() -> None:
    """HeadDeadlineProtocol arms its deadline in connection_made and on_response_complete, notes a begun head in
    on_message_begin, ends the wait in on_headers_complete, and is built as uvicorn builds it."""
    for hook in ("connection_made", "connection_lost", "on_message_begin", "on_headers_complete",
                 "on_response_complete"):
        assert hook in vars(HttpToolsProtocol), hook
    assert list(inspect.signature(HttpToolsProtocol.__init__).parameters)[1:4] == ["config", "server_state",
                                                                                  "app_state"]


class _AcceptFails(socket.socket):
    """A listening socket whose accept() fails with the errors given, then has nothing waiting."""

    errors: list[int] = []

    def accept(self):  # type: ignore[no-untyped-def]
        if self.errors:
            raise OSError(self.errors.pop(0), os.strerror(0))
        raise BlockingIOError


@pytest.mark.parametrize(("errors", "paused"), [
    ([errno.EPROTO, errno.ENETDOWN, errno.EPERM], False),  # the one pending connection's: go on accepting
    ([errno.EMFILE], True),  # out of descriptors: wait a second, as asyncio's servers do
])
def test_only_running_out_of_resources_pauses_accepting(errors: list[int], paused: bool) -> None:
    from service.config import Settings
    from service.listener import Listener, Slots

    async def accept_once() -> bool:
        sock = _AcceptFails(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        _AcceptFails.errors = list(errors)
        listener = Listener(sock, lambda _slot: asyncio.Protocol(),
                            Slots("HTTP", Settings(), "http_max_connections_per_source", "http_max_connections"),
                            tls=None, tls_timeout_s=1.0, held=True)
        listener.start()
        listener._accept()
        was_paused = listener._paused is not None
        listener.close()
        return was_paused

    assert asyncio.run(accept_once()) is paused
