"""The image's HEALTHCHECK probe (images/service/healthcheck.py) against real HTTP and HTTPS listeners."""

from __future__ import annotations

import http.server
import importlib.util
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from tests.images.tools import IMAGES
from tests.tlsutil import make_pki


def load_probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", IMAGES / "service" / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = load_probe()


@contextmanager
def healthz_server(status: int, tls: ssl.SSLContext | None = None) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    pki = make_pki(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    return context, pki.cert


def configure(monkeypatch: pytest.MonkeyPatch, port: int, cert: Path | None) -> None:
    monkeypatch.setenv("FORESIGHT_BIND", "0.0.0.0")
    monkeypatch.setenv("FORESIGHT_HTTP_PORT", str(port))
    if cert is None:
        monkeypatch.delenv("FORESIGHT_TLS_CERT_FILE", raising=False)
    else:
        monkeypatch.setenv("FORESIGHT_TLS_CERT_FILE", str(cert))


def test_healthy_when_healthz_answers_200_over_https(monkeypatch, server_tls) -> None:
    context, cert = server_tls
    with healthz_server(200, context) as port:
        configure(monkeypatch, port, cert)
        assert probe.main() == 0


def test_unhealthy_when_healthz_answers_an_error(monkeypatch, server_tls, capsys) -> None:
    context, cert = server_tls
    with healthz_server(503, context) as port:
        configure(monkeypatch, port, cert)
        assert probe.main() == 1
    assert "503" in capsys.readouterr().err


def test_unhealthy_when_nothing_listens(monkeypatch) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    configure(monkeypatch, port, None)
    assert probe.main() == 1


def test_plain_http_when_tls_is_not_configured(monkeypatch) -> None:
    with healthz_server(200) as port:
        configure(monkeypatch, port, None)
        assert probe.main() == 0


def test_wildcard_binds_are_probed_on_loopback() -> None:
    assert probe.probe_host("0.0.0.0") == "127.0.0.1"
    assert probe.probe_host("::") == "::1"
    assert probe.probe_host("10.0.0.5") == "10.0.0.5"
