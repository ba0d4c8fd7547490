"""Vault (or OpenBao) transit as the KMS: the key-encryption key never leaves Vault.

Vault's ciphertext (``vault:v<version>:...``) names the key version itself, so `key_ref` is the key name.
`rewrap` uses transit's native rewrap endpoint: the DEK is re-encrypted inside Vault under the newest key
version and never appears in this process. Needs a token whose policy grants `update` on
``<mount>/encrypt/<key>``, ``<mount>/decrypt/<key>`` and ``<mount>/rewrap/<key>``
(`service.security.vault_keys.service_policy` writes that).

Headers are not authenticated, so unwrap and rewrap accept only a header naming the configured key (or one of
`previous`, keys envelopes are being moved off): a forged header cannot make the service decrypt with another
transit key its token happens to reach.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import hvac
import hvac.exceptions
import requests

from service.security.kms.base import (
    KmsError,
    KmsProvider,
    KmsRejected,
    KmsUnavailable,
    WrappedKey,
    check_dek,
)


class VaultTransitKms(KmsProvider):
    name = "vault-transit"

    def __init__(
        self, client: hvac.Client, key_name: str, mount: str = "transit", *, previous: Sequence[str] = ()
    ) -> None:
        """`previous`: transit keys whose envelopes may still be unwrapped, to `rewrap` them onto `key_name`."""
        self.client = client
        self.key_name = key_name
        self.mount = mount
        self.previous = tuple(previous)

    @property
    def key_ref(self) -> str:
        return self.key_name

    def accepts(self, key_ref: str) -> bool:
        return key_ref == self.key_name or key_ref in self.previous

    def wrap(self, dek: bytes) -> WrappedKey:
        plaintext = base64.b64encode(check_dek(dek)).decode()
        reply = self._call(self.client.secrets.transit.encrypt_data, plaintext=plaintext)
        return WrappedKey(self.name, self.key_name, reply["data"]["ciphertext"].encode())

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        self._check_key(wrapped)
        ciphertext = _ciphertext(wrapped)
        reply = self._call(self.client.secrets.transit.decrypt_data, ciphertext=ciphertext, key=wrapped.key_ref)
        return base64.b64decode(reply["data"]["plaintext"])

    def rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        self._check_key(wrapped)
        if wrapped.key_ref != self.key_name:  # moving to another transit key: no native call for that
            return self.wrap(self.unwrap(wrapped))
        reply = self._call(self.client.secrets.transit.rewrap_data, ciphertext=_ciphertext(wrapped))
        return WrappedKey(self.name, self.key_name, reply["data"]["ciphertext"].encode())

    def _call(self, method: Callable[..., Any], *, key: str | None = None, **params: str) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = method(name=key or self.key_name, mount_point=self.mount, **params)
            return reply
        except hvac.exceptions.InvalidRequest as err:
            _raise_rejected_or_error(err, self.mount, key or self.key_name)
        except hvac.exceptions.Forbidden:
            raise KmsError(f"Vault token may not use transit key {self.mount}/{key or self.key_name}") from None
        except hvac.exceptions.InvalidPath:
            raise KmsError(f"transit key {self.mount}/{key or self.key_name} does not exist") from None
        except (
            requests.ConnectionError,
            requests.Timeout,
            hvac.exceptions.VaultDown,
            hvac.exceptions.BadGateway,
            hvac.exceptions.InternalServerError,
        ) as err:
            raise KmsUnavailable(f"Vault transit unreachable: {type(err).__name__}") from None


def _ciphertext(wrapped: WrappedKey) -> str:
    try:
        text = wrapped.blob.decode("ascii")
    except UnicodeDecodeError:
        raise KmsRejected("not a Vault transit ciphertext") from None
    if not text.startswith("vault:v"):
        raise KmsRejected("not a Vault transit ciphertext")
    return text


def _raise_rejected_or_error(err: hvac.exceptions.InvalidRequest, mount: str, key: str) -> NoReturn:
    # Vault answers 400 both for bad ciphertext and for a missing encrypt key; tell them apart by message.
    text = " ".join(err.errors or [str(err)]).lower()
    if "not found" in text or "no existing key" in text:
        raise KmsError(f"transit key {mount}/{key} does not exist") from None
    raise KmsRejected("Vault transit rejected the wrapped data key") from None
