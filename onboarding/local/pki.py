"""The local CA and the certificate the service and OpenBao both serve (localhost, 127.0.0.1).

The CA persists in the state directory so clients keep trusting the same bundle across `up`s; the server
certificate is reissued when it is missing, not from this CA, or within `RENEW_BEFORE` of expiry.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from onboarding.state import StatePaths
from service.security.local_ca import CertificateAuthority, write_private

SERVER_CERT_DAYS = 90
RENEW_BEFORE = dt.timedelta(days=14)


def ensure_tls(paths: StatePaths) -> bool:
    """CA and server certificate in place and valid; True if anything was (re)issued."""
    ca = _load_ca(paths)
    issued = False
    if ca is None:
        ca = CertificateAuthority.create("Foresight local CA")
        write_private(paths.ca_key, _key_pem(ca.key))
        write_private(paths.ca_cert, ca.cert_pem, mode=0o644)
        issued = True
    if issued or not _server_cert_ok(paths, ca):
        ca.issue("localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"], days=SERVER_CERT_DAYS).write(
            paths.server_cert, paths.server_key
        )
        issued = True
    return issued


def _load_ca(paths: StatePaths) -> CertificateAuthority | None:
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.not_valid_after_utc < _now() + RENEW_BEFORE:
        return None
    return CertificateAuthority(cert, key)


def _server_cert_ok(paths: StatePaths, ca: CertificateAuthority) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
        paths.server_key.stat()
    except (FileNotFoundError, ValueError):
        return False
    return cert.issuer == ca.cert.subject and cert.not_valid_after_utc > _now() + RENEW_BEFORE and _signed_by(cert, ca)


def _signed_by(cert: x509.Certificate, ca: CertificateAuthority) -> bool:
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
