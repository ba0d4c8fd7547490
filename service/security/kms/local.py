"""A KMS in a local keyring file, for development, tests and `foresight local up` without a Vault.

The keyring holds versioned 256-bit key-encryption keys; data keys are wrapped with AES-256-GCM under the
primary version. It protects nothing against someone who can read the keyring file (mode 0600): production
deployments use Vault transit or a cloud KMS.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.security.envelope import atomic_output
from service.security.kms.base import KmsError, KmsProvider, KmsRejected, WrappedKey, check_dek

_NONCE = 12


class LocalKms(KmsProvider):
    name = "local"

    def __init__(self, keys: dict[str, bytes], primary: str, path: Path | None = None) -> None:
        if primary not in keys:
            raise KmsError(f"local keyring has no key version {primary!r}")
        self._keys = dict(keys)
        self._primary = primary
        self._path = path
        self._lock = threading.Lock()

    @classmethod
    def generate(cls, path: Path | None = None) -> LocalKms:
        """A new keyring with one key version, saved to `path` (mode 0600) when given."""
        kms = cls({"v1": secrets.token_bytes(32)}, "v1", path)
        kms._save()
        return kms

    @classmethod
    def from_file(cls, path: Path) -> LocalKms:
        try:
            raw = json.loads(path.read_text())
            keys = {version: base64.b64decode(key) for version, key in raw["keys"].items()}
            return cls(keys, raw["primary"], path)
        except FileNotFoundError:
            raise KmsError(f"local keyring {path} does not exist") from None
        except (ValueError, KeyError, TypeError):
            raise KmsError(f"local keyring {path} is not a valid keyring file") from None

    @property
    def key_ref(self) -> str:
        return self._primary

    def accepts(self, key_ref: str) -> bool:
        return key_ref in self._keys

    def rotate(self) -> str:
        """Add a key version and make it primary; older versions keep unwrapping. Returns the new version."""
        with self._lock:
            version = f"v{len(self._keys) + 1}"
            self._keys[version] = secrets.token_bytes(32)
            self._primary = version
            self._save()
            return version

    def wrap(self, dek: bytes) -> WrappedKey:
        check_dek(dek)
        version = self._primary
        nonce = secrets.token_bytes(_NONCE)
        blob = nonce + AESGCM(self._keys[version]).encrypt(nonce, dek, _aad(version))
        return WrappedKey(self.name, version, blob)

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        self._check_key(wrapped)
        key = self._keys.get(wrapped.key_ref)
        if key is None:
            raise KmsRejected(f"local keyring has no key version {wrapped.key_ref!r}")
        try:
            nonce, body = wrapped.blob[:_NONCE], wrapped.blob[_NONCE:]
            return AESGCM(key).decrypt(nonce, body, _aad(wrapped.key_ref))
        except (InvalidTag, ValueError):
            raise KmsRejected("local keyring rejected the wrapped data key") from None

    def _save(self) -> None:
        if self._path is None:
            return
        raw = {
            "primary": self._primary,
            "keys": {v: base64.b64encode(k).decode() for v, k in self._keys.items()},
        }
        with atomic_output(self._path) as out:  # a torn keyring after a rotation would lose every envelope
            out.write(json.dumps(raw).encode())


def _aad(version: str) -> bytes:
    return b"foresight-local-kms\x00" + version.encode()
