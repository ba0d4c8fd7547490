"""Vault (or OpenBao) transit as the KMS: the key-encryption key never leaves Vault.

Vault's ciphertext (``vault:v<version>:...``) names the key version itself, so `key_ref` is the key name.
`rewrap` uses transit's native rewrap endpoint: the DEK is re-encrypted inside Vault under the newest key
version and never appears in this process. Needs a token whose policy grants `update` on
``<mount>/encrypt/<key>``, ``<mount>/decrypt/<key>`` and ``<mount>/rewrap/<key>``
(`service.security.vault_keys.service_policy` writes that).

Errors: 429 and 5xx (a rate limit, a proxy's 504, a sealed or uninitialized Vault) are `KmsUnavailable`; 401
and 403 are `KmsDenied`; a ciphertext whose version is below the key's `min_decryption_version` is
`KmsKeyRetired`, not a rejection: the data is intact.

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
    KmsDenied,
    KmsError,
    KmsKeyRetired,
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

    def version_of(self, wrapped: WrappedKey) -> str | None:
        """``<key>:v<N>``, from the ``vault:v<N>:`` prefix transit puts on every ciphertext."""
        prefix = wrapped.blob[:32].split(b":")
        if len(prefix) < 3 or prefix[0] != b"vault" or prefix[1][:1] != b"v" or not prefix[1][1:].isdigit():
            return None
        return f"{wrapped.key_ref}:{prefix[1].decode()}"

    def _call(self, method: Callable[..., Any], *, key: str | None = None, **params: str) -> dict[str, Any]:
        where = f"{self.mount}/{key or self.key_name}"
        try:
            reply: dict[str, Any] = method(name=key or self.key_name, mount_point=self.mount, **params)
            return reply
        except hvac.exceptions.InvalidRequest as err:
            _raise_for_bad_request(err, where, params.get("ciphertext", ""))
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as err:
            raise KmsDenied(f"Vault token may not use transit key {where} ({type(err).__name__}): it expired or "
                            "was revoked, or its policy does not grant the key") from None
        except hvac.exceptions.InvalidPath:
            raise KmsError(f"transit key {where} does not exist") from None
        except (requests.ConnectionError, requests.Timeout) as err:
            raise KmsUnavailable(f"Vault transit unreachable: {type(err).__name__}") from None
        except _UNAVAILABLE as err:
            raise KmsUnavailable(f"Vault transit unavailable: {type(err).__name__}") from None
        except hvac.exceptions.VaultError as err:
            raise KmsError(f"Vault transit failed for key {where}: {type(err).__name__}") from None


# 429 and 5xx. hvac's UnexpectedError is any status it has no class for and keeps no code: in front of Vault
# that is a proxy's 504 or 408, so it is "try later", never a verdict on the data.
_UNAVAILABLE = (
    hvac.exceptions.RateLimitExceeded,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.VaultNotInitialized,
    hvac.exceptions.BadGateway,
    hvac.exceptions.VaultDown,
    hvac.exceptions.UnexpectedError,
)


def _ciphertext(wrapped: WrappedKey) -> str:
    try:
        text = wrapped.blob.decode("ascii")
    except UnicodeDecodeError:
        raise KmsRejected("not a Vault transit ciphertext") from None
    if not text.startswith("vault:v"):
        raise KmsRejected("not a Vault transit ciphertext")
    return text


def _raise_for_bad_request(err: hvac.exceptions.InvalidRequest, where: str, ciphertext: str) -> NoReturn:
    # Vault answers 400 for bad ciphertext, for a missing key and for a retired version; tell them apart by message.
    text = " ".join(err.errors or [str(err)]).lower()
    if "not found" in text or "no existing key" in text:
        raise KmsError(f"transit key {where} does not exist") from None
    if "disallowed by policy" in text:  # "ciphertext or signature version is disallowed by policy (too old)"
        version = ciphertext.split(":")[1][1:] if ciphertext.count(":") >= 2 else "?"
        raise KmsKeyRetired(
            f"transit key {where} version {version} is retired (below its min_decryption_version); the data is "
            f"intact: lower min_decryption_version to {version}, rewrap with `foresight kms rewrap`, then raise it "
            "again"
        ) from None
    raise KmsRejected("Vault transit rejected the wrapped data key") from None
