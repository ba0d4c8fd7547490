"""Throwaway CA and server certificates for tests (generated per run, never committed), made by the same
CertificateAuthority that `foresight local up` uses."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from service.security.local_ca import CertificateAuthority


@dataclass(frozen=True)
class PKI:
    ca_cert: Path
    cert: Path
    key: Path


def make_pki(directory: Path, hostname: str = "localhost") -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("foresight test CA", days=1)
    pki = PKI(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca_cert.write_bytes(ca.cert_pem)
    ca.issue(hostname, dns_names=[hostname], ip_addresses=["127.0.0.1"], days=1).write(pki.cert, pki.key)
    return pki


def assert_tls_serves(conf: Path, host: str) -> None:
    """A client that trusts only the secret's CA completes a handshake with the minted certificate for `host`."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(conf / "tls.crt", conf / "tls.key")
    client_context = ssl.create_default_context(cafile=str(conf / "ca.crt"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            connection, _ = listener.accept()
            with server_context.wrap_socket(connection, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join(timeout=5)
