"""Azure Key Vault (or Managed HSM) as the KMS (azure-keyvault-keys + azure-identity, imported only here).

`key_id` is the key's URL without a version (``https://<vault>.vault.azure.net/keys/<name>``); new DEKs are
wrapped (RSA-OAEP-256 by default) under the key's current version. Key Vault unwraps only with the version
that wrapped, so `key_ref` in headers is the *versioned* key URL. After a rotation (new version) old
envelopes keep opening as long as the old version stays enabled, and `rewrap` moves DEKs to the new one.
The identity needs keys/get, wrapKey and unwrapKey ("Key Vault Crypto Service Encryption User"); keys/get
lets the SDK learn the current version and wrap locally with the public key.

Headers are not authenticated, so unwrap accepts only a versioned URL of the configured key (same vault, same
key name, any version) or of one of `previous`, and builds the URL it calls from the configured vault: a
forged header can neither pick another key nor send the service to another vault.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from service.security.kms.base import (
    KmsError,
    KmsProvider,
    KmsRejected,
    KmsUnavailable,
    WrappedKey,
    check_dek,
)


class AzureKeyVaultKms(KmsProvider):
    name = "azure-keyvault"

    def __init__(
        self,
        key_id: str,
        *,
        credential: Any = None,
        algorithm: str = "RSA-OAEP-256",
        previous: Sequence[str] = (),
        **client_kwargs: Any,
    ) -> None:
        """`credential`: an azure-identity credential; default: a managed identity via DefaultAzureCredential.
        `previous`: key URLs whose envelopes may still be unwrapped, to `rewrap` them onto this key.
        `client_kwargs` pass through to CryptographyClient (e.g. `transport`, `connection_verify`)."""
        from azure.core import exceptions
        from azure.keyvault.keys import KeyVaultKeyIdentifier
        from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self._errors = exceptions
        self._parse = KeyVaultKeyIdentifier
        self._client_class = CryptographyClient
        self._algorithm = KeyWrapAlgorithm(algorithm)
        self._credential = credential
        self._client_kwargs = client_kwargs
        self.key_id = key_id.rstrip("/")
        self.previous = tuple(key.rstrip("/") for key in previous)
        self._current: Any = None
        self._by_version: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def key_ref(self) -> str:
        return self._current.key_id if self._current is not None else self.key_id

    def accepts(self, key_ref: str) -> bool:
        return self._versioned_url(key_ref) is not None

    def _versioned_url(self, key_ref: str) -> str | None:
        """The URL to unwrap with, built from our own configured vault and key name plus the header's version;
        None when the header names no version or another vault or key."""
        parts = _key_parts(key_ref)
        if parts is None or not parts[2]:
            return None
        for known in (self.key_id, *self.previous):
            ours = _key_parts(known)
            if ours is not None and (ours[0].lower(), ours[1].lower()) == (parts[0].lower(), parts[1].lower()):
                return f"{ours[0]}/keys/{ours[1]}/{parts[2]}"
        return None

    def refresh(self) -> None:
        """Forget the current key version; the next wrap asks Key Vault for the newest one."""
        with self._lock:
            self._current = None

    def wrap(self, dek: bytes) -> WrappedKey:
        check_dek(dek)
        with self._lock:
            if self._current is None:
                self._current = self._client(self.key_id)
            client = self._current
        result = self._call("wrap", client.wrap_key, self._algorithm, dek)
        key_ref = result.key_id or ""
        if not self._parse(key_ref).version:
            raise KmsError(f"Key Vault did not name the key version for {self.key_id}: grant keys/get to the identity")
        return WrappedKey(self.name, key_ref, bytes(result.encrypted_key))

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        self._check_key(wrapped)
        url = self._versioned_url(wrapped.key_ref)
        assert url is not None  # _check_key accepted it
        with self._lock:
            client = self._by_version.get(url)
            if client is None:
                client = self._by_version[url] = self._client(url)
        return bytes(self._call("unwrap", client.unwrap_key, self._algorithm, wrapped.blob).key)

    def rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        self.refresh()
        return self.wrap(self.unwrap(wrapped))

    def _client(self, key_id: str) -> Any:
        try:
            self._parse(key_id)
        except ValueError:
            raise KmsError(f"not a Key Vault key URL: {key_id!r}") from None
        return self._client_class(key_id, self._credential, **self._client_kwargs)

    def _call(self, operation: str, method: Any, *args: Any) -> Any:
        errors = self._errors
        try:
            return method(*args)
        except errors.ClientAuthenticationError as err:
            raise KmsError(f"Key Vault {operation}: authentication failed ({type(err).__name__})") from None
        except errors.ResourceNotFoundError:
            raise KmsError(f"Key Vault {operation}: key not found") from None
        except errors.HttpResponseError as err:
            if operation == "unwrap" and err.status_code == 400:
                raise KmsRejected("Key Vault rejected the wrapped data key") from None
            if err.status_code in (429, 500, 502, 503, 504):
                raise KmsUnavailable(f"Key Vault {operation} unavailable: HTTP {err.status_code}") from None
            raise KmsError(f"Key Vault {operation} failed: HTTP {err.status_code}") from None
        except errors.ServiceRequestError as err:
            raise KmsUnavailable(f"Key Vault unreachable: {type(err).__name__}") from None


def _key_parts(url: str) -> tuple[str, str, str] | None:
    """(vault URL, key name, version or "") of a plain Key Vault key URL; None for anything else."""
    try:
        parts = urlsplit(url.rstrip("/"))
        segments = parts.path.strip("/").split("/")
        if parts.username or parts.password or parts.query or parts.fragment:
            return None
    except ValueError:
        return None
    if parts.scheme != "https" or not parts.netloc or len(segments) not in (2, 3) or segments[0] != "keys":
        return None
    name, version = segments[1], segments[2] if len(segments) == 3 else ""
    if not (_plain(name.replace("-", "")) and (not version or _plain(version))):
        return None
    return f"https://{parts.netloc}", name, version


def _plain(text: str) -> bool:
    return text.isascii() and text.isalnum()
