"""Google Cloud KMS adapter through the official SDK, against a local stand-in for the KMS service.

There is no Cloud KMS emulator, so `FakeCloudKms` is a FAKE: a gRPC server on loopback implementing
Encrypt and Decrypt of google.cloud.kms.v1.KeyManagementService with the SDK's own protobuf messages and
AES-GCM keys of its own. What this proves: the adapter's requests and responses go through the real
`KeyManagementServiceClient` and gRPC transport, the CRC32C integrity checks work both ways, errors map to
KmsRejected / KmsError, and rotation + rewrap behave as on Cloud KMS (decrypt picks the version from the
ciphertext). What it cannot prove: IAM, real key versions' formats, quotas. Those need a real project.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.security.envelope import EnvelopeCipher, TamperedEnvelope, wrapped_key_of
from service.security.kms.base import KmsError, KmsRejected, WrappedKey
from service.security.kms.gcp import GcpKms, crc32c
from tests.security.helpers import replace_wrapped_blob

pytest.importorskip("google.cloud.kms")
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports import (
    KeyManagementServiceGrpcTransport,
)

KEY = "projects/p/locations/global/keyRings/foresight/cryptoKeys/data"


@dataclass
class FakeCloudKms:
    versions: list[bytes] = field(default_factory=lambda: [AESGCM.generate_key(256)])
    primary: int = 1
    corrupt_responses: bool = False
    calls: list[str] = field(default_factory=list)

    def rotate(self) -> None:
        self.versions.append(AESGCM.generate_key(256))
        self.primary = len(self.versions)

    def encrypt(self, request: kms_v1.EncryptRequest, context: grpc.ServicerContext) -> kms_v1.EncryptResponse:
        self.calls.append("Encrypt")
        if request.name != KEY:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        nonce = secrets.token_bytes(12)
        body = AESGCM(self.versions[self.primary - 1]).encrypt(nonce, request.plaintext, request.name.encode())
        ciphertext = bytes([self.primary]) + nonce + body
        return kms_v1.EncryptResponse(
            name=f"{KEY}/cryptoKeyVersions/{self.primary}",
            ciphertext=ciphertext,
            ciphertext_crc32c=crc32c(ciphertext) ^ (1 if self.corrupt_responses else 0),
            verified_plaintext_crc32c=request.plaintext_crc32c == crc32c(request.plaintext),
        )

    def decrypt(self, request: kms_v1.DecryptRequest, context: grpc.ServicerContext) -> kms_v1.DecryptResponse:
        self.calls.append("Decrypt")
        if request.ciphertext_crc32c != crc32c(request.ciphertext):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ciphertext_crc32c mismatch")
        version, nonce, body = request.ciphertext[0], request.ciphertext[1:13], request.ciphertext[13:]
        try:
            plaintext = AESGCM(self.versions[version - 1]).decrypt(nonce, body, request.name.encode())
        except (InvalidTag, IndexError, ValueError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid.")
        return kms_v1.DecryptResponse(plaintext=plaintext, plaintext_crc32c=crc32c(plaintext))


@pytest.fixture
def fake_kms() -> Iterator[tuple[FakeCloudKms, GcpKms]]:
    fake = FakeCloudKms()
    handlers = {
        "Encrypt": grpc.unary_unary_rpc_method_handler(
            fake.encrypt,
            request_deserializer=kms_v1.EncryptRequest.deserialize,
            response_serializer=kms_v1.EncryptResponse.serialize,
        ),
        "Decrypt": grpc.unary_unary_rpc_method_handler(
            fake.decrypt,
            request_deserializer=kms_v1.DecryptRequest.deserialize,
            response_serializer=kms_v1.DecryptResponse.serialize,
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("google.cloud.kms.v1.KeyManagementService", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = kms_v1.KeyManagementServiceClient(transport=KeyManagementServiceGrpcTransport(channel=channel))
    try:
        yield fake, GcpKms(KEY, client=client)
    finally:
        channel.close()
        server.stop(None)


def test_crc32c_matches_the_published_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_envelope_round_trip_through_the_sdk(fake_kms: tuple[FakeCloudKms, GcpKms]) -> None:
    fake, kms = fake_kms
    cipher = EnvelopeCipher(kms)
    envelope = cipher.encrypt(b"snapshot", b"snap")
    assert wrapped_key_of(envelope).key_ref == KEY
    assert cipher.decrypt(envelope, b"snap") == b"snapshot"
    assert fake.calls == ["Encrypt", "Decrypt"]


def test_tampered_wrapped_key_is_rejected(fake_kms: tuple[FakeCloudKms, GcpKms]) -> None:
    _, kms = fake_kms
    envelope = EnvelopeCipher(kms).encrypt(b"data")
    blob = wrapped_key_of(envelope).blob
    with pytest.raises(TamperedEnvelope, match="KMS rejected"):
        EnvelopeCipher(kms).decrypt(replace_wrapped_blob(envelope, blob[:-1] + bytes([blob[-1] ^ 1])))


def test_corrupted_response_is_caught_by_checksums(fake_kms: tuple[FakeCloudKms, GcpKms]) -> None:
    fake, kms = fake_kms
    fake.corrupt_responses = True
    with pytest.raises(KmsError, match="checksum"):
        kms.wrap(b"k" * 32)


def test_rotation_keeps_old_envelopes_and_rewrap_moves_them(fake_kms: tuple[FakeCloudKms, GcpKms]) -> None:
    fake, kms = fake_kms
    cipher = EnvelopeCipher(kms)
    envelope = cipher.encrypt(b"weights" * 30)
    fake.rotate()
    assert cipher.decrypt(envelope) == b"weights" * 30
    rewrapped = cipher.rewrap(envelope)
    assert wrapped_key_of(rewrapped).blob[0] == 2
    assert rewrapped.endswith(envelope[-(210 + 16) :])
    fake.versions[0] = AESGCM.generate_key(256)  # version 1 destroyed
    assert cipher.decrypt(rewrapped) == b"weights" * 30
    with pytest.raises(TamperedEnvelope):
        cipher.decrypt(envelope)


def test_unknown_key_is_a_configuration_error(fake_kms: tuple[FakeCloudKms, GcpKms]) -> None:
    _, kms = fake_kms
    other = GcpKms(KEY + "-missing", client=kms.client)
    with pytest.raises(KmsError, match="NotFound") as info:
        other.wrap(b"k" * 32)
    assert not isinstance(info.value, KmsRejected)
    with pytest.raises(KmsError, match="wrapped by 'aws-kms'"):
        kms.unwrap(WrappedKey("aws-kms", KEY, b"x"))


def test_header_naming_another_key_is_refused_without_a_call(fake_kms: tuple[FakeCloudKms, GcpKms]) -> None:
    fake, kms = fake_kms
    wrapped = kms.wrap(b"k" * 32)
    fake.calls.clear()
    for other in (
        "projects/attacker/locations/global/keyRings/foresight/cryptoKeys/data",
        KEY + "-other",
        KEY.rsplit("/", 1)[0] + "/other/cryptoKeyVersions/1",
    ):
        with pytest.raises(KmsRejected, match="not this provider's configured key"):
            kms.unwrap(WrappedKey("gcp-kms", other, wrapped.blob))
    assert fake.calls == []
    # A version suffix names the same CryptoKey; decrypt is asked with the CryptoKey name.
    assert kms.unwrap(WrappedKey("gcp-kms", f"{KEY}/cryptoKeyVersions/1", wrapped.blob)) == b"k" * 32
    assert GcpKms(f"{KEY}/cryptoKeyVersions/1", client=kms.client).unwrap(wrapped) == b"k" * 32
    assert GcpKms(KEY + "-new", client=kms.client, previous=[KEY]).accepts(KEY)
