"""Google Cloud KMS as the KMS (google-cloud-kms, imported only when this provider is built).

`key_name` is the CryptoKey resource name (``projects/P/locations/L/keyRings/R/cryptoKeys/K``). Cloud KMS
picks the key version from the ciphertext on decrypt, so `key_ref` is the CryptoKey name; after a rotation
(new primary version) old envelopes keep opening and `rewrap` (decrypt, then encrypt under the primary)
moves their DEKs to the new version. Every call carries CRC32C checksums both ways, as Google recommends,
so corruption in transit is caught. Needs roles/cloudkms.cryptoKeyEncrypterDecrypter on the key.

Headers are not authenticated, so unwrap accepts only a header naming the configured CryptoKey (a
``/cryptoKeyVersions/N`` suffix on either side is ignored: decrypt takes the CryptoKey) or one of `previous`,
and asks Cloud KMS to decrypt with that CryptoKey; any other key is refused without a call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.security.kms.base import (
    KmsError,
    KmsProvider,
    KmsRejected,
    KmsUnavailable,
    WrappedKey,
    check_dek,
)


class GcpKms(KmsProvider):
    name = "gcp-kms"

    def __init__(self, key_name: str, *, client: Any = None, previous: Sequence[str] = ()) -> None:
        """`client`: a `kms.KeyManagementServiceClient`; default: one with Application Default Credentials.
        `previous`: CryptoKeys whose envelopes may still be unwrapped, to `rewrap` them onto this one."""
        from google.api_core import exceptions

        self._errors = exceptions
        self.key_name = key_name
        self._accepted = {crypto_key(name) for name in (key_name, *previous)}
        if client is None:
            from google.cloud import kms

            client = kms.KeyManagementServiceClient()
        self.client = client

    @property
    def key_ref(self) -> str:
        return self.key_name

    def accepts(self, key_ref: str) -> bool:
        return crypto_key(key_ref) in self._accepted

    def wrap(self, dek: bytes) -> WrappedKey:
        check_dek(dek)
        reply = self._call("encrypt", {"name": self.key_name, "plaintext": dek, "plaintext_crc32c": crc32c(dek)})
        if not reply.verified_plaintext_crc32c or reply.ciphertext_crc32c != crc32c(reply.ciphertext):
            raise KmsError("Cloud KMS encrypt: checksum mismatch (data corrupted in transit)")
        return WrappedKey(self.name, self.key_name, bytes(reply.ciphertext))

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        self._check_key(wrapped)
        request = {
            "name": crypto_key(wrapped.key_ref),
            "ciphertext": wrapped.blob,
            "ciphertext_crc32c": crc32c(wrapped.blob),
        }
        reply = self._call("decrypt", request)
        if reply.plaintext_crc32c != crc32c(reply.plaintext):
            raise KmsError("Cloud KMS decrypt: checksum mismatch (data corrupted in transit)")
        return bytes(reply.plaintext)

    def version_of(self, wrapped: WrappedKey) -> str | None:
        return None  # the version is inside Cloud KMS's opaque ciphertext: every rewrap rewrites

    def _call(self, operation: str, request: dict[str, Any]) -> Any:
        errors = self._errors
        try:
            return getattr(self.client, operation)(request=request)
        except errors.InvalidArgument:
            raise KmsRejected("Cloud KMS rejected the wrapped data key (invalid ciphertext)") from None
        except (errors.ServiceUnavailable, errors.DeadlineExceeded, errors.InternalServerError) as err:
            raise KmsUnavailable(f"Cloud KMS {operation} unavailable: {type(err).__name__}") from None
        except errors.GoogleAPICallError as err:
            raise KmsError(f"Cloud KMS {operation} failed: {type(err).__name__}: {err.message}") from None


def crypto_key(name: str) -> str:
    """The CryptoKey resource name of a CryptoKey or CryptoKeyVersion name (decrypt wants the CryptoKey)."""
    return name.split("/cryptoKeyVersions/", 1)[0].rstrip("/")


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli), the checksum Cloud KMS uses; pure Python is fine for key-sized inputs."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
