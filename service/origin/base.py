"""The origin contract: fetch one key's bytes, or say it does not exist, or fail with a clear reason."""

from __future__ import annotations

from typing import Protocol

# The largest object an origin read loads, whatever the tenant's budget: Redis's largest string (proto-max-bulk-len).
MAX_OBJECT_BYTES = 512 * 1024 * 1024


class OriginError(Exception):
    """The origin could not answer; the message is safe to show a client (the key and the error's kind, never the
    server's paths or the backend's text, which are logged)."""


class OriginTimeout(OriginError):
    """The origin did not answer in time."""


class UnmappableKey(OriginError):
    """The key names no object the origin could hold (an empty, '.' or '..' path segment, a NUL byte, or bytes an
    object store cannot name): the client's mistake, not the origin's failure."""


class ObjectTooLarge(OriginError):
    """The object is larger than the reading tenant may load; refused before it is read."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


def shown_key(key: bytes) -> str:
    """A key as an error message names it: quoted, at most 100 bytes, bytes that are not UTF-8 escaped."""
    text = key[:100].decode("utf-8", "backslashreplace")
    return f"'{text}{'...' if len(key) > 100 else ''}'"


class Origin(Protocol):
    description: str

    def path_for(self, key: bytes) -> str:
        """The object a key names, under the origin's root. Raises UnmappableKey, before anything is read."""

    async def fetch(self, key: bytes, limit: int = MAX_OBJECT_BYTES) -> bytes | None:
        """The object's bytes, or None when the origin has no such object. Raises OriginError; ObjectTooLarge for an
        object over `limit` bytes (never loaded)."""
