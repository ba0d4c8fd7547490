"""First boot of a marketplace node on any cloud: a buyer has no Vault, so the node mints its own TLS, first key
and metrics scrape token; and, for the rest of the node's life, the renewal of its TLS certificate under the CA its
clients trust.

Each cloud's `first_boot.py` (`marketplace/aws/`, `marketplace/gcp/`, `marketplace/azure/`) finds the node's
addresses and puts the result into that cloud's secret store; this module is what they share. It runs inside the
service image, so the key format, its hash, the tenants file and the KMS are the service's own code, not a copy,
and it imports no cloud SDK (the KMS provider that foresight.env names is imported when it is built). `provision`
wraps the CA's private key with the node's KMS key and puts the plaintext API key, the scrape token and the CA
certificate into the secret store *before* writing ca.crt, ca.key.enc, tls.crt, tls.key, metrics.token and
tenants.json (key hashes only), so that a failed put leaves nothing behind and the next attempt starts over.
metrics.token is what the service's `metrics_token_file` names (first_boot.sh sets FORESIGHT_METRICS_TOKEN_FILE
only once the file is there), so the buyer's Prometheus, given the secret's `metrics_token`, can scrape /metrics.

Clients pin the CA (the secret's `ca_certificate`), so it lives ten years and its key is kept: ca.key.enc is an
envelope (`service.security.envelope`) whose data key only the node's KMS key unwraps, never the key in clear.
`python -m marketplace.first_boot renew`, which the image's foresight-tls-renew.timer runs daily, issues a new
server certificate for the same names under that CA once the current one expires within 60 days; the service
reloads the new pair by itself. Renewal leaves tenants.json and metrics.token as they are.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.bootstrap import build_cipher
from service.config import ConfigError, load_settings
from service.http.scrape_token import new_token
from service.security.apikeys import new_key
from service.security.envelope import EnvelopeCipher, EnvelopeError
from service.security.kms.base import KmsError
from service.security.local_ca import CertificateAuthority, IssuedCert, write_private
from service.tenancy import KeyRecord, TenantsFile, TenantSpec

# The image's first-boot contract (images/packer/cloud-init/user-data.example.yaml): TLS and tenants live here.
CONF_DIR = "/etc/foresight/conf"
# Clients pin the CA, so it outlives many server certificates; re-issuing it means a new ca.crt on every client.
CA_DAYS = 3650
# The longest server certificate Apple's platforms accept, from a private CA too; renewal keeps it fresh.
LEAF_DAYS = 825
# Daily attempts for two months before a client could see an expired certificate.
RENEW_WITHIN_DAYS = 60
CA_KEY_FILE = "ca.key.enc"
# The service's metrics_token_file on a marketplace node (first_boot.sh names it in foresight.env).
METRICS_TOKEN_FILE = "metrics.token"  # noqa: S105 - a file name, not a secret
# Binds the envelope to its purpose: no other Foresight envelope (a snapshot, a checkpoint) opens as the CA key.
CA_KEY_AAD = b"foresight:marketplace:ca-key"
COMMON_NAME_MAX = 64  # RFC 5280's ub-common-name
# Where the manual steps (a node without a stored CA key, a CA near its end) are written down.
RENEWAL_DOCS = "docs/images.md#tls-renewal"
# The buyer's only key may do everything within the tenant, FLUSHDB included.
FIRST_KEY_SCOPES = ["read", "write", "admin"]


class FirstBootError(RuntimeError):
    """A step failed; the message names it and never carries the key or the scrape token."""


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
    ca: CertificateAuthority
    tls: IssuedCert
    api_key: str
    metrics_token: str  # the bearer token the buyer's Prometheus presents on /metrics
    tenants: TenantsFile

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem


def mint(tenant: str, addresses: Addresses) -> Minted:
    """A CA, a server certificate for the addresses, the tenant's first key with its tenants file, and a scrape
    token (256 bits, as `foresight metrics-token rotate` makes)."""
    ca = CertificateAuthority.create(common_name=ca_common_name(tenant, addresses.public_ip), days=CA_DAYS)
    tls = ca.issue(
        addresses.host,
        dns_names=[addresses.public_hostname] if addresses.public_hostname else [],
        ip_addresses=[addresses.public_ip, addresses.private_ip],
        days=LEAF_DAYS,
    )
    key = new_key()
    tenants = TenantsFile(
        tenants=[TenantSpec(name=tenant)],
        keys=[KeyRecord(key_id=key.key_id, tenant=tenant, hash=key.key_hash, scopes=FIRST_KEY_SCOPES)],
    )
    return Minted(ca=ca, tls=tls, api_key=key.secret, metrics_token=new_token(), tenants=tenants)


def ca_common_name(who: str, detail: str) -> str:
    """`Foresight <who> CA (<detail>)`, `who` cut to fit the 64 characters X.509 allows a common name (a tenant
    name may have 63)."""
    room = max(COMMON_NAME_MAX - len(f"Foresight  CA ({detail})"), 1)
    return f"Foresight {who[:room]} CA ({detail})"[:COMMON_NAME_MAX]


def secret_document(minted: Minted, addresses: Addresses) -> str:
    """What the buyer reads from the secret: the key, its tenant, the scrape token, and the CA to trust."""
    return json.dumps(
        {
            "tenant": minted.tenants.tenants[0].name,
            "key_id": minted.tenants.keys[0].key_id,
            "api_key": minted.api_key,
            "metrics_token": minted.metrics_token,
            "host": addresses.host,
            "ca_certificate": minted.ca_pem.decode(),
        }
    )


def write_files(out: Path, minted: Minted, sealed_ca_key: bytes) -> None:
    """tenants.json last: its presence is what tells first_boot.sh that this already ran."""
    write_private(out / CA_KEY_FILE, sealed_ca_key)
    write_private(out / "ca.crt", minted.ca_pem, mode=0o644)
    minted.tls.write(out / "tls.crt", out / "tls.key")
    write_private(out / METRICS_TOKEN_FILE, minted.metrics_token.encode())
    write_private(out / "tenants.json", minted.tenants.model_dump_json(indent=2).encode(), mode=0o600)


def provision(
    out: Path, tenant: str, addresses: Addresses, put_secret: Callable[[str], None], cipher: EnvelopeCipher
) -> Minted:
    """Mint, wrap the CA's key with the node's KMS key, hand the document to the cloud's secret store, and only
    then write the node's files."""
    minted = mint(tenant, addresses)

    def seal() -> bytes:
        try:
            return seal_ca_key(cipher, minted.ca)
        except KmsError as err:  # the node's grant on the key, or its credentials, may still be on their way
            raise NotYet(str(err)) from None

    sealed_ca_key = with_retries(seal, "wrapping the CA key with the node's KMS key")
    put_secret(secret_document(minted, addresses))
    write_files(out, minted, sealed_ca_key)
    return minted


def node_cipher() -> EnvelopeCipher:
    """The service's own KMS key, from the FORESIGHT_KMS_* settings in the environment (foresight.env's)."""
    try:
        cipher = build_cipher(load_settings(), None)
    except ConfigError as err:
        raise FirstBootError(str(err)) from None
    if cipher is None:
        raise FirstBootError("FORESIGHT_KMS_PROVIDER is not set: the CA's key is kept only wrapped by a KMS key")
    return cipher


def seal_ca_key(cipher: EnvelopeCipher, ca: CertificateAuthority) -> bytes:
    """The CA's private key as an envelope that only the node's KMS key opens. Blocks (KMS)."""
    pem = ca.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cipher.encrypt(pem, CA_KEY_AAD)


# --- renewal ------------------------------------------------------------------------------------------------------


class NoStoredCaKey(FirstBootError):
    """The node has no ca.key.enc: its first boot discarded the CA's key, so only a new CA can sign."""


@dataclass(frozen=True)
class Renewal:
    certificate: x509.Certificate  # the one in tls.crt now
    renewed: bool


def renew(
    conf: Path,
    open_cipher: Callable[[], EnvelopeCipher],
    now: dt.datetime,
    within: dt.timedelta = dt.timedelta(days=RENEW_WITHIN_DAYS),
) -> Renewal:
    """A new server certificate for the same names under the same CA, written over tls.crt and tls.key, when the
    current one expires within `within` of `now`; nothing touched while it does not. `open_cipher` is called (and
    the KMS used) only when a certificate is due. Blocks (KMS, disk)."""
    current = read_certificate(conf / "tls.crt")
    if current.not_valid_after_utc - now > within:
        return Renewal(current, renewed=False)
    if not (conf / CA_KEY_FILE).exists():
        raise NoStoredCaKey(
            f"{conf / CA_KEY_FILE} does not exist: this node's first boot kept no CA key (first boots before TLS "
            "renewal did not), so no certificate its clients already trust can be issued, and none was. Before "
            f"{conf / 'tls.crt'} expires on {current.not_valid_after_utc:%Y-%m-%d}, run `renew --new-ca` and have "
            f"every client trust the new {conf / 'ca.crt'} ({RENEWAL_DOCS})"
        )
    ca = load_ca(conf, open_cipher())
    ca_left = ca.cert.not_valid_after_utc - now
    if ca_left <= within:
        raise FirstBootError(
            f"the CA in {conf / 'ca.crt'} expires on {ca.cert.not_valid_after_utc:%Y-%m-%d}, too soon to sign a "
            f"certificate worth renewing: run `renew --new-ca` and have every client trust the new CA ({RENEWAL_DOCS})"
        )
    return Renewal(_issue_like(conf, ca, current, min(LEAF_DAYS, ca_left.days)), renewed=True)


def replace_ca(conf: Path, cipher: EnvelopeCipher, now: dt.datetime) -> CertificateAuthority:
    """A new CA, its key kept in ca.key.enc, and a server certificate under it for the current certificate's
    names: the manual step for a node without a stored CA key, or with a CA near its end. Every client must then
    trust the new ca.crt. Blocks (KMS, disk)."""
    current = read_certificate(conf / "tls.crt")
    ip_addresses = _alt_names(current)[1]
    who = ip_addresses[0] if ip_addresses else _common_name(current)  # the public address, as at first boot
    ca = CertificateAuthority.create(common_name=ca_common_name(who, f"{now:%Y-%m-%d}"), days=CA_DAYS)
    try:
        sealed = seal_ca_key(cipher, ca)
    except KmsError as err:
        raise FirstBootError(f"cannot wrap the new CA's key with the node's KMS key: {err}") from None
    write_private(conf / CA_KEY_FILE, sealed)
    write_private(conf / "ca.crt", ca.cert_pem, mode=0o644)
    _issue_like(conf, ca, current, LEAF_DAYS)
    return ca


def load_ca(conf: Path, cipher: EnvelopeCipher) -> CertificateAuthority:
    """The node's CA: ca.crt with the key that ca.key.enc holds, unwrapped by the node's KMS key. Blocks (KMS)."""
    cert = read_certificate(conf / "ca.crt")
    sealed_file = conf / CA_KEY_FILE
    try:
        pem = cipher.decrypt(sealed_file.read_bytes(), CA_KEY_AAD)
    except OSError as err:
        raise FirstBootError(f"cannot read {sealed_file}: {err.strerror}") from None
    except (EnvelopeError, KmsError) as err:
        raise FirstBootError(f"cannot open {sealed_file} with the node's KMS key: {err}") from None
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _spki(key.public_key()) != _spki(cert):
        raise FirstBootError(f"{sealed_file} does not hold the key of {conf / 'ca.crt'} ({RENEWAL_DOCS})")
    return CertificateAuthority(cert, key)


def read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise FirstBootError(f"{path} does not exist: first boot has not finished on this node") from None
    except (OSError, ValueError) as err:
        raise FirstBootError(f"cannot read the certificate {path}: {err}") from None


def _issue_like(conf: Path, ca: CertificateAuthority, current: x509.Certificate, days: int) -> x509.Certificate:
    """A certificate for `current`'s names from `ca`, over tls.key then tls.crt, each atomically: the service
    skips the mismatched pair in between and loads the new one once both are there."""
    dns_names, ip_addresses = _alt_names(current)
    issued = ca.issue(_common_name(current), dns_names=dns_names, ip_addresses=ip_addresses, days=days)
    issued.write(conf / "tls.crt", conf / "tls.key")
    os.chmod(conf / "tls.key", 0o400)  # as first_boot.sh leaves it
    return x509.load_pem_x509_certificate(issued.cert_pem)


def _alt_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The certificate's DNS names and IP addresses, in its order."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return names.get_values_for_type(x509.DNSName), [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _spki(holder: ec.EllipticCurvePublicKey | x509.Certificate) -> bytes:
    key = holder.public_key() if isinstance(holder, x509.Certificate) else holder
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


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


# --- the renewal command (foresight-tls-renew.service) ----------------------------------------------------------


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m marketplace.first_boot", description="TLS of a marketplace node after its first boot."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    renew_command = commands.add_parser(
        "renew", help="a new server certificate under the node's CA when the current one is about to expire"
    )
    renew_command.add_argument(
        "--conf", type=Path, default=Path(CONF_DIR), help="the directory holding tls.crt, ca.crt and ca.key.enc"
    )
    renew_command.add_argument(
        "--within-days", type=int, default=RENEW_WITHIN_DAYS, help="renew once the certificate expires within this"
    )
    renew_command.add_argument(
        "--new-ca", action="store_true",
        help="manual step: a new CA and certificate now; every client must then trust the new ca.crt",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`renew`: 0 when the certificate is renewed or not yet due, 1 with one line saying why it cannot be."""
    parser = arguments()
    args = parser.parse_args(argv)
    if not 0 < args.within_days < LEAF_DAYS:  # else every day would renew a certificate just renewed
        parser.error(f"--within-days must be between 1 and {LEAF_DAYS - 1}")
    now = dt.datetime.now(dt.UTC)
    try:
        if args.new_ca:
            ca = replace_ca(args.conf, node_cipher(), now)
            print(
                f"renew: new CA {ca.cert.subject.rfc4514_string()} valid until {ca.cert.not_valid_after_utc:%Y-%m-%d} "
                f"and a certificate under it; every client must now trust {args.conf / 'ca.crt'} (the secret's "
                "ca_certificate is the old CA)"
            )
            return 0
        within = dt.timedelta(days=args.within_days)
        renewal = renew(args.conf, node_cipher, now, within)
    except FirstBootError as err:
        print(f"renew: {err}", file=sys.stderr)
        return 1
    expiry = renewal.certificate.not_valid_after_utc
    if renewal.renewed:
        print(
            f"renew: new certificate for {_common_name(renewal.certificate)} under the same CA, valid until "
            f"{expiry:%Y-%m-%d}; the service loads it by itself"
        )
    else:
        due = expiry - within
        print(f"renew: {args.conf / 'tls.crt'} is valid until {expiry:%Y-%m-%d}; renewal due {due:%Y-%m-%d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
