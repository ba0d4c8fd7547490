"""Azure Key Vault adapter through the official SDK, against a local stand-in for Key Vault.

There is no Key Vault emulator, so `FakeKeyVault` is a FAKE: an HTTPS server on loopback (certificate from
the local test CA) speaking the Key Vault REST shapes the SDK uses: the bearer challenge (401 with
WWW-Authenticate), GET key (public JWK), wrapkey and unwrapkey with RSA-OAEP-256, and key versions. What
this proves: the adapter drives the real `CryptographyClient` (challenge auth, local wrap with the public
key, remote unwrap by the versioned key URL), rotation and rewrap work by version, and errors map to
KmsRejected / KmsError. What it cannot prove: Entra ID tokens, RBAC, Managed HSM. Those need a real vault.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from service.security.envelope import EnvelopeCipher, TamperedEnvelope, wrapped_key_of
from service.security.kms.base import KmsError, KmsRejected, WrappedKey
from service.security.local_ca import CertificateAuthority
from tests.security.helpers import replace_wrapped_blob

pytest.importorskip("azure.keyvault.keys")
from azure.core.credentials import AccessToken, AccessTokenInfo

from service.security.kms.azure import AzureKeyVaultKms

TOKEN = "fake-entra-token"
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        assert scopes == ("https://vault.azure.net/.default",)
        return AccessToken(TOKEN, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        assert scopes == ("https://vault.azure.net/.default",)
        return AccessTokenInfo(TOKEN, int(time.time()) + 3600)


@dataclass
class FakeKeyVault:
    base: str = ""
    versions: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def rotate(self) -> str:
        version = f"v{len(self.versions) + 1:032d}"
        self.versions[version] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return version

    def latest(self) -> str:
        return list(self.versions)[-1]

    def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = path.split("?")[0].strip("/").split("/")  # keys/<name>[/<version>[/<op>]]
        if parts[:2] != ["keys", "data"]:
            return 404, {"error": {"code": "KeyNotFound", "message": "no such key"}}
        version = parts[2] if len(parts) > 2 and parts[2] else self.latest()
        key = self.versions.get(version)
        if key is None:
            return 404, {"error": {"code": "KeyNotFound", "message": "no such version"}}
        kid = f"{self.base}/keys/data/{version}"
        op = parts[3] if len(parts) > 3 else ""
        self.calls.append(f"{method} {op or 'key'} {version[-2:]}")
        if method == "GET":
            numbers = key.public_key().public_numbers()
            jwk = {
                "kid": kid,
                "kty": "RSA",
                "key_ops": ["wrapKey", "unwrapKey"],
                "n": b64url(numbers.n.to_bytes(256, "big")),
                "e": b64url(numbers.e.to_bytes(3, "big")),
            }
            return 200, {"key": jwk, "attributes": {"enabled": True}}
        if op == "wrapkey":
            return 200, {"kid": kid, "value": b64url(key.public_key().encrypt(unb64url(body["value"]), OAEP))}
        if op == "unwrapkey":
            try:
                return 200, {"kid": kid, "value": b64url(key.decrypt(unb64url(body["value"]), OAEP))}
            except ValueError:
                return 400, {"error": {"code": "BadParameter", "message": "Invalid ciphertext"}}
        return 400, {"error": {"code": "BadParameter", "message": "unsupported"}}


def serve(vault: FakeKeyVault, local_ca: CertificateAuthority, tmp: Path) -> Iterator[ThreadingHTTPServer]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_response(401)
                self.send_header(
                    "WWW-Authenticate",
                    'Bearer authorization="https://login.microsoftonline.com/'
                    'tenant", resource="https://vault.azure.net"',
                )
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, reply = vault.handle(self.command, self.path, json.loads(raw) if raw else {})
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _reply

        def log_message(self, *args: Any) -> None:
            pass

    cert = local_ca.issue("127.0.0.1", ip_addresses=["127.0.0.1"])
    cert.write(tmp / "kv.crt", tmp / "kv.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "kv.crt", tmp / "kv.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    vault.base = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def key_vault(local_ca: CertificateAuthority, tmp_path: Path) -> Iterator[tuple[FakeKeyVault, AzureKeyVaultKms]]:
    vault = FakeKeyVault()
    vault.rotate()
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(local_ca.cert_pem)
    for _ in serve(vault, local_ca, tmp_path):
        kms = AzureKeyVaultKms(
            f"{vault.base}/keys/data",
            credential=FakeCredential(),
            verify_challenge_resource=False,
            connection_verify=str(ca_file),
        )
        yield vault, kms


def test_envelope_round_trip_names_the_key_version(key_vault: tuple[FakeKeyVault, AzureKeyVaultKms]) -> None:
    vault, kms = key_vault
    cipher = EnvelopeCipher(kms)
    envelope = cipher.encrypt(b"audit archive", b"audit")
    assert wrapped_key_of(envelope).key_ref == f"{vault.base}/keys/data/{vault.latest()}"
    assert cipher.decrypt(envelope, b"audit") == b"audit archive"
    # The SDK wrapped locally with the public key it fetched; only unwrap needed the vault's private key.
    operations = [c.split()[1] for c in vault.calls]
    assert "wrapkey" not in operations
    assert operations[-1] == "unwrapkey"


def test_tampered_wrapped_key_is_rejected(key_vault: tuple[FakeKeyVault, AzureKeyVaultKms]) -> None:
    _, kms = key_vault
    envelope = EnvelopeCipher(kms).encrypt(b"data")
    blob = wrapped_key_of(envelope).blob
    with pytest.raises(TamperedEnvelope, match="KMS rejected"):
        EnvelopeCipher(kms).decrypt(replace_wrapped_blob(envelope, blob[:-1] + bytes([blob[-1] ^ 1])))


def test_rotation_then_rewrap_moves_to_the_new_version(key_vault: tuple[FakeKeyVault, AzureKeyVaultKms]) -> None:
    vault, kms = key_vault
    cipher = EnvelopeCipher(kms)
    envelope = cipher.encrypt(b"weights" * 40)
    old_version = vault.latest()
    new_version = vault.rotate()
    assert cipher.decrypt(envelope) == b"weights" * 40  # old version still enabled
    rewrapped = cipher.rewrap(envelope)
    assert wrapped_key_of(rewrapped).key_ref.endswith(new_version)
    assert rewrapped.endswith(envelope[-(280 + 16) :])
    del vault.versions[old_version]  # old version purged
    assert cipher.decrypt(rewrapped) == b"weights" * 40
    with pytest.raises(KmsError):
        cipher.decrypt(envelope)


def test_bad_key_url_is_a_configuration_error() -> None:
    with pytest.raises(KmsError, match="not a Key Vault key URL"):
        AzureKeyVaultKms("https://example.invalid/secrets", credential=FakeCredential()).wrap(b"k" * 32)
    assert not issubclass(KmsError, KmsRejected)


def test_header_naming_another_vault_or_key_is_refused_without_calling_it(
    key_vault: tuple[FakeKeyVault, AzureKeyVaultKms], local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    vault, kms = key_vault
    attacker_vault = FakeKeyVault()
    attacker_vault.rotate()
    (tmp_path / "attacker").mkdir()
    for _ in serve(attacker_vault, local_ca, tmp_path / "attacker"):
        attacker = AzureKeyVaultKms(f"{attacker_vault.base}/keys/data", credential=FakeCredential(),
                                    verify_challenge_resource=False, connection_verify=str(tmp_path / "ca.crt"))
        forged = EnvelopeCipher(attacker).encrypt(b"forged entries", b"snapshot")
        attacker_vault.calls.clear()
        with pytest.raises(TamperedEnvelope, match="not this provider's configured key"):
            EnvelopeCipher(kms).decrypt(forged, b"snapshot")
        assert attacker_vault.calls == [] and vault.calls == []  # refused before any request, to either vault
    wrapped = kms.wrap(b"k" * 32)
    version = wrapped.key_ref.rsplit("/", 1)[1]
    for key_ref in (
        f"{vault.base}/keys/other/{version}",  # another key in our vault
        f"{vault.base}/keys/data",  # no version
        f"{vault.base}/secrets/data/{version}",
        f"{vault.base.replace('https://', 'https://x@')}/keys/data/{version}",
        f"{vault.base}/keys/data/{version}?api-version=1",
    ):
        with pytest.raises(KmsRejected):
            kms.unwrap(WrappedKey("azure-keyvault", key_ref, wrapped.blob))
    same_key = wrapped.key_ref.replace("/keys/data/", "/keys/DATA/")  # Key Vault names are case-insensitive
    assert kms.unwrap(WrappedKey("azure-keyvault", same_key, wrapped.blob)) == b"k" * 32


def test_previous_key_unwraps_for_rewrap_onto_the_configured_one(
    key_vault: tuple[FakeKeyVault, AzureKeyVaultKms], tmp_path: Path
) -> None:
    vault, kms = key_vault
    envelope = EnvelopeCipher(kms).encrypt(b"old key's data")
    moved = AzureKeyVaultKms(f"{vault.base}/keys/data2", credential=FakeCredential(), previous=[kms.key_id],
                             verify_challenge_resource=False, connection_verify=str(tmp_path / "ca.crt"))
    assert moved.accepts(wrapped_key_of(envelope).key_ref)
    assert not AzureKeyVaultKms(f"{vault.base}/keys/data2", credential=FakeCredential()).accepts(
        wrapped_key_of(envelope).key_ref
    )
    assert EnvelopeCipher(moved).decrypt(envelope) == b"old key's data"
