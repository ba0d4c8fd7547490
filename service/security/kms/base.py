"""The one interface every KMS provider implements: wrap, unwrap and re-wrap 256-bit data keys.

A provider never sees the data, only data keys (DEKs). `WrappedKey.key_ref` names the KMS key (and, where the
KMS needs it to decrypt, the key version) that wrapped the DEK; it is stored in each envelope's header. That
header is not authenticated, so a provider unwraps only with its configured key (any version of it) or a
`previous` key it was explicitly given: a header naming any other key is refused before the KMS is called.

Errors are split so callers can react correctly: `KmsRejected` means the KMS refused the wrapped key as
invalid (tampered, wrong key); `KmsUnavailable` means it could not be reached or is overloaded (retry later,
never report tampering); `KmsDenied` means it refused this caller (credentials expired, revoked or without the
grant); `KmsKeyRetired` means the key version that wrapped the DEK may no longer decrypt (rewrap, never
report tampering); `KmsError` is everything else (configuration). Messages never contain key material.
All provider methods block on network I/O; call them from a worker thread in async code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

DEK_BYTES = 32


class KmsError(RuntimeError):
    """The KMS failed for a reason other than rejection or unavailability (permissions, configuration)."""


class KmsRejected(KmsError):
    """The KMS refused to unwrap: the wrapped key was altered or belongs to another key."""


class KmsUnavailable(KmsError):
    """The KMS could not be reached, or is overloaded; the operation may succeed later."""


class KmsDenied(KmsError):
    """The KMS refused this caller: its credentials expired or were revoked, or lack the grant for the key."""


class KmsKeyRetired(KmsError):
    """The key version that wrapped the data key is retired (may no longer decrypt): the data is intact, and
    opens again once the version is re-allowed and the envelope rewrapped onto a current one."""


@dataclass(frozen=True, slots=True)
class WrappedKey:
    provider: str  # the provider's `name`, e.g. "aws-kms"
    key_ref: str  # which KMS key (and version, where needed) wrapped it
    blob: bytes  # the wrapped DEK as the KMS returned it

    def __repr__(self) -> str:  # the blob is not secret, but it is noise in logs
        return f"WrappedKey(provider={self.provider!r}, key_ref={self.key_ref!r}, blob=<{len(self.blob)} bytes>)"


class KmsProvider(ABC):
    """A key-encryption key held by a KMS. Implementations must be safe to call from several threads."""

    name: str  # short, stable provider id stored in envelope headers

    @property
    @abstractmethod
    def key_ref(self) -> str:
        """The key new data keys are wrapped with (as stored in headers)."""

    @abstractmethod
    def accepts(self, key_ref: str) -> bool:
        """Whether a header's `key_ref` names this provider's configured key (any version) or a `previous` one."""

    @abstractmethod
    def wrap(self, dek: bytes) -> WrappedKey:
        """Wrap a data key with the current key version. Blocks."""

    @abstractmethod
    def unwrap(self, wrapped: WrappedKey) -> bytes:
        """The plaintext data key; raises KmsRejected if the KMS refuses it. Blocks."""

    def rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        """Re-wrap under the current key version (after rotation) without exposing the data. Blocks.

        The default unwraps and wraps again; providers with a native re-encrypt call override it so the
        plaintext DEK never leaves the KMS.
        """
        return self.wrap(self.unwrap(wrapped))

    def version_of(self, wrapped: WrappedKey) -> str | None:
        """The key version that wrapped `wrapped`, as far as it tells without a KMS call; None where only the KMS
        knows. Comparing it before and after `rewrap` says whether an envelope was already under the current
        version (then `foresight kms rewrap` leaves its file alone)."""
        return wrapped.key_ref

    def _check_provider(self, wrapped: WrappedKey) -> None:
        if wrapped.provider != self.name:
            raise KmsError(f"data key was wrapped by {wrapped.provider!r}, this provider is {self.name!r}")

    def _check_key(self, wrapped: WrappedKey) -> None:
        """Refuse a header naming a key that is not ours: whoever can write the data dir could otherwise choose
        the key (their own, in their own account or vault) that unwraps the DEK of a forged object."""
        self._check_provider(wrapped)
        if not self.accepts(wrapped.key_ref):
            raise KmsRejected(f"the data key names {wrapped.key_ref[:300]!r}, not this provider's configured key")


def check_dek(dek: bytes) -> bytes:
    if len(dek) != DEK_BYTES:
        raise KmsError(f"data keys are {DEK_BYTES} bytes, got {len(dek)}")
    return dek
