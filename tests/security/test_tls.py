"""Server TLS: TLS 1.2+ only, hot reload without dropping connections, mTLS, uvicorn, and Vault PKI."""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import time
from pathlib import Path

import httpx
import hvac
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from service.security.local_ca import CertificateAuthority
from service.security.tls import ServerTLS, TLSConfigError, client_context
from service.security.vault_pki import VaultPkiCertificates, VaultPkiError
from tests.security.conftest import TlsFiles
from tests.security.tls_servers import connect, echo, echo_server, serial_of, uvicorn_server


def wait_for_new_serial(port: int, context: ssl.SSLContext, old: int, limit: float = 3.0) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with connect(port, context) as sock:
            serial = serial_of(sock)
        if serial != old:
            return serial
        time.sleep(0.05)
    raise AssertionError("server kept presenting the old certificate")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_only_tls_1_2_and_later_are_accepted(tls_files: TlsFiles) -> None:
    tls = ServerTLS(tls_files.cert_file, tls_files.key_file)
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    with echo_server(tls) as port:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            context = client_context(tls_files.ca_file)
            context.maximum_version = version
            with connect(port, context) as sock:
                assert sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        legacy.load_verify_locations(tls_files.ca_file)
        legacy.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.0/1.1 at all
        legacy.minimum_version = ssl.TLSVersion.TLSv1
        legacy.maximum_version = ssl.TLSVersion.TLSv1_2
        with connect(port, legacy) as sock:  # control: this client works when it may use TLS 1.2
            assert sock.version() == "TLSv1.2"
        legacy.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError, match=r"(?i)protocol version|unsupported protocol|EOF"):
            connect(port, legacy)


def test_rotated_certificate_serves_new_handshakes_and_keeps_old_connections(tls_files: TlsFiles) -> None:
    tls = ServerTLS(tls_files.cert_file, tls_files.key_file)
    context = client_context(tls_files.ca_file)
    with echo_server(tls) as port, connect(port, context) as long_lived:
        old_serial = serial_of(long_lived)
        assert echo(long_lived, "before") == "- before"
        tls_files.rotate()
        new_serial = wait_for_new_serial(port, context, old_serial)
        assert echo(long_lived, "after") == "- after"  # the established connection never noticed
        assert serial_of(long_lived) == old_serial != new_serial
        assert tls.reloads == 1


def test_half_written_rotation_keeps_the_current_certificate(
    tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTLS(tls_files.cert_file, tls_files.key_file)
    context = client_context(tls_files.ca_file)
    fresh = tls_files.ca.issue("localhost", dns_names=["localhost"])
    with echo_server(tls, watch_interval=60) as port:
        with connect(port, context) as sock:
            old_serial = serial_of(sock)
        tls_files.cert_file.write_bytes(fresh.cert_pem)  # certificate first, key not yet
        with caplog.at_level(logging.ERROR):
            assert tls.reload() is False
            assert tls.reload() is False
        assert sum("does not load" in r.getMessage() for r in caplog.records) == 1  # said once, not every tick
        with connect(port, context) as sock:
            assert serial_of(sock) == old_serial
        tls_files.key_file.write_bytes(fresh.key_pem)
        assert tls.reload() is True
        with connect(port, context) as sock:
            assert serial_of(sock) != old_serial


def refused(port: int, context: ssl.SSLContext) -> bool:
    """True if the server will not talk over this context (TLS 1.3 reports a refused client cert on read)."""
    try:
        with connect(port, context) as sock:
            echo(sock, "let me in")
    except (ssl.SSLError, ConnectionError):
        return True
    return False


def test_mtls_requires_a_client_certificate_from_the_ca(tls_files: TlsFiles, tmp_path: Path) -> None:
    tls = ServerTLS(tls_files.cert_file, tls_files.key_file, client_ca_file=tls_files.ca_file, require_client_cert=True)
    tls_files.ca.issue("app-7", client=True).write(tmp_path / "client.crt", tmp_path / "client.key")
    CertificateAuthority.create("Rogue CA").issue("mallory", client=True).write(
        tmp_path / "rogue.crt", tmp_path / "rogue.key"
    )
    with echo_server(tls) as port:
        with connect(port, client_context(tls_files.ca_file, tmp_path / "client.crt", tmp_path / "client.key")) as sock:
            assert echo(sock, "hello") == "app-7 hello"
        assert refused(port, client_context(tls_files.ca_file))
        assert refused(port, client_context(tls_files.ca_file, tmp_path / "rogue.crt", tmp_path / "rogue.key"))


def test_optional_client_certificates_are_verified_when_presented(tls_files: TlsFiles, tmp_path: Path) -> None:
    tls = ServerTLS(tls_files.cert_file, tls_files.key_file, client_ca_file=tls_files.ca_file)
    tls_files.ca.issue("app-8", client=True).write(tmp_path / "c.crt", tmp_path / "c.key")
    with echo_server(tls) as port:
        with connect(port, client_context(tls_files.ca_file)) as sock:
            assert echo(sock, "anon") == "- anon"
        with connect(port, client_context(tls_files.ca_file, tmp_path / "c.crt", tmp_path / "c.key")) as sock:
            assert echo(sock, "named") == "app-8 named"


def peer_der(response: httpx.Response) -> bytes:
    """The certificate the server presented on the connection that carried `response`."""
    return bytes(response.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True))


def test_uvicorn_serves_the_reloadable_context(tls_files: TlsFiles) -> None:
    tls = ServerTLS(tls_files.cert_file, tls_files.key_file)
    context = client_context(tls_files.ca_file)
    with uvicorn_server(tls) as port, httpx.Client(verify=context, base_url=f"https://localhost:{port}") as client:
        first = client.get("/ping")
        assert first.json() == {"pong": "ok"}
        old_der = peer_der(first)
        tls_files.rotate()
        with connect(port, context) as probe:
            wait_for_new_serial(port, context, serial_of(probe))
        again = client.get("/ping")  # same keep-alive connection, still up, still the old certificate
        assert peer_der(again) == old_der
        with httpx.Client(verify=context) as fresh:
            new = fresh.get(f"https://localhost:{port}/ping")
            assert peer_der(new) != old_der


def test_configuration_errors_name_the_problem(tls_files: TlsFiles, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="client_ca_file"):
        ServerTLS(tls_files.cert_file, tls_files.key_file, require_client_cert=True)
    with pytest.raises(TLSConfigError, match="cannot load TLS certificate"):
        ServerTLS(tmp_path / "missing.crt", tls_files.key_file)


def test_world_readable_key_is_warned_about(tls_files: TlsFiles, caplog: pytest.LogCaptureFixture) -> None:
    tls_files.key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        ServerTLS(tls_files.cert_file, tls_files.key_file)
    assert "readable by group or others" in caplog.text


def test_vault_pki_issues_certificates_the_server_can_use(service_client: hvac.Client, tmp_path: Path) -> None:
    pki = VaultPkiCertificates(
        service_client,
        role="foresight-server",
        common_name="localhost",
        ip_sans=["127.0.0.1"],
        directory=tmp_path,
        ttl="1h",
    )
    assert pki.needs_renewal()
    first = pki.issue()
    assert pki.key_file.stat().st_mode & 0o777 == 0o600
    assert not pki.needs_renewal()
    assert pki.needs_renewal(now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=45))
    tls = ServerTLS(pki.cert_file, pki.key_file)
    context = client_context(pki.ca_file)
    with echo_server(tls) as port, connect(port, context) as long_lived:
        assert serial_of(long_lived) == first.serial_number
        second = pki.issue()
        assert wait_for_new_serial(port, context, first.serial_number) == second.serial_number
        assert echo(long_lived, "still here") == "- still here"


def test_vault_pki_refusal_is_a_clear_error(service_client: hvac.Client, tmp_path: Path) -> None:
    pki = VaultPkiCertificates(
        service_client, role="foresight-server", common_name="evil.example.com", directory=tmp_path
    )
    with pytest.raises(VaultPkiError, match=r"refused 'evil\.example\.com'"):
        pki.issue()
    assert not pki.key_file.exists()


def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, common_name: str, cert_file: Path,
                 key_file: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)


def _common_name_served(port: int, rsa_only: bool) -> str | None:
    """The CN a client gets; an RSA-only TLS 1.2 client, when asked. None: no handshake was possible."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if rsa_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    try:
        with connect(port, context) as sock:
            der = sock.getpeercert(binary_form=True)
    except (ssl.SSLError, ConnectionError):
        return None
    assert der is not None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


@pytest.mark.parametrize("listener", [echo_server, uvicorn_server], ids=["resp-asyncio", "http-uvicorn"])
def test_rsa_to_ecdsa_rotation_never_serves_the_old_certificate(tmp_path: Path, listener) -> None:  # type: ignore[no-untyped-def]
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    _self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), "OLD-RSA", cert_file, key_file)
    tls = ServerTLS(cert_file, key_file)
    with listener(tls) as port:
        assert _common_name_served(port, rsa_only=True) == "CN=OLD-RSA"
        _self_signed(ec.generate_private_key(ec.SECP256R1()), "NEW-EC", cert_file, key_file)
        deadline = time.monotonic() + 5
        while tls.reloads == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tls.reloads == 1
        assert _common_name_served(port, rsa_only=False) == "CN=NEW-EC"
        assert _common_name_served(port, rsa_only=True) is None  # no RSA certificate left: refused, not the old one
