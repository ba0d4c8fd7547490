"""Throwaway CA and server certificates for tests (generated per run, never committed), made by the same
CertificateAuthority that `foresight local up` uses."""

from __future__ import annotations

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
