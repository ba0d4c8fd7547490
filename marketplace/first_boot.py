"""First boot of a marketplace node on any cloud: a buyer has no Vault, so the node mints its own TLS and first key.

Each cloud's `first_boot.py` (`marketplace/aws/`, `marketplace/azure/`) finds the node's addresses and puts the
result into that cloud's secret store; this module is what they share. It runs inside the service image, so
the key format, its hash and the tenants file are the service's own code, not a copy, and it imports no
cloud SDK. `provision` puts the plaintext key and the CA certificate into the secret store *before* writing
tls.crt, tls.key, ca.crt and tenants.json (key hashes only), so that a failed put leaves nothing behind and
the next attempt starts over.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from service.security.apikeys import new_key
from service.security.local_ca import CertificateAuthority, IssuedCert, write_private
from service.tenancy import KeyRecord, TenantsFile, TenantSpec

# The image's first-boot contract (images/packer/cloud-init/user-data.example.yaml): TLS and tenants live here.
CONF_DIR = "/etc/foresight/conf"
# Long enough that a trial never meets an expiry, short enough that a leaked key does not live for a decade.
CERT_DAYS = 825
# The buyer's only key may do everything within the tenant, FLUSHDB included.
FIRST_KEY_SCOPES = ["read", "write", "admin"]


class FirstBootError(RuntimeError):
    """A step failed; the message names it and never carries the key."""


@dataclass(frozen=True)
class Addresses:
    public_ip: str
    public_hostname: str | None
    private_ip: str

    @property
    def host(self) -> str:
        """The name clients connect to, and the certificate's subject."""
        return self.public_hostname or self.public_ip


@dataclass(frozen=True)
class Minted:
    tls: IssuedCert
    ca_pem: bytes
    api_key: str
    tenants: TenantsFile


def mint(tenant: str, addresses: Addresses) -> Minted:
    """A CA, a server certificate for the addresses, and the tenant's first key with its tenants file."""
    ca = CertificateAuthority.create(common_name=f"Foresight {tenant} CA ({addresses.public_ip})", days=CERT_DAYS)
    tls = ca.issue(
        addresses.host,
        dns_names=[addresses.public_hostname] if addresses.public_hostname else [],
        ip_addresses=[addresses.public_ip, addresses.private_ip],
        days=CERT_DAYS,
    )
    key = new_key()
    tenants = TenantsFile(
        tenants=[TenantSpec(name=tenant)],
        keys=[KeyRecord(key_id=key.key_id, tenant=tenant, hash=key.key_hash, scopes=FIRST_KEY_SCOPES)],
    )
    return Minted(tls=tls, ca_pem=ca.cert_pem, api_key=key.secret, tenants=tenants)


def secret_document(minted: Minted, addresses: Addresses) -> str:
    """What the buyer reads from the secret: the key, its tenant, and the CA to trust."""
    return json.dumps(
        {
            "tenant": minted.tenants.tenants[0].name,
            "key_id": minted.tenants.keys[0].key_id,
            "api_key": minted.api_key,
            "host": addresses.host,
            "ca_certificate": minted.ca_pem.decode(),
        }
    )


def write_files(out: Path, minted: Minted) -> None:
    """tenants.json last: its presence is what tells first_boot.sh that this already ran."""
    write_private(out / "ca.crt", minted.ca_pem, mode=0o644)
    minted.tls.write(out / "tls.crt", out / "tls.key")
    write_private(out / "tenants.json", minted.tenants.model_dump_json(indent=2).encode(), mode=0o600)


def provision(out: Path, tenant: str, addresses: Addresses, put_secret: Callable[[str], None]) -> Minted:
    """Mint, hand the document to the cloud's secret store, and only then write the node's files."""
    minted = mint(tenant, addresses)
    put_secret(secret_document(minted, addresses))
    write_files(out, minted)
    return minted


def base_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options every cloud's first boot takes; each cloud adds where its addresses and secret store are."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--out", type=Path, required=True, help="directory for the TLS files and tenants.json")
    parser.add_argument("--tenant", required=True, help="the first tenant's name")
    return parser


RETRY_TIMEOUT_S = 900.0  # role grants reach a new secret store within minutes; give up after fifteen
_T = TypeVar("_T")


class NotYet(Exception):
    """The cloud answered "not yet" (a grant still propagating, a server busy): worth another try."""


def with_retries(step: Callable[[], _T], what: str, timeout_s: float = RETRY_TIMEOUT_S) -> _T:
    """`step()` again while the cloud says "not yet", backing off, until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 2.0
    while True:
        try:
            return step()
        except NotYet as err:
            if time.monotonic() + delay > deadline:
                raise FirstBootError(f"gave up {what}: {err}") from None
        time.sleep(delay)
        delay = min(delay * 2, 30.0)
