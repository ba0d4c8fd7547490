"""The origin contract: fetch one key's bytes, or say it does not exist, or fail with a clear reason."""

from __future__ import annotations

from typing import Protocol


class OriginError(Exception):
    """The origin could not answer; the message is safe to show a client."""


class OriginTimeout(OriginError):
    """The origin did not answer in time."""


class UnmappableKey(OriginError):
    """The key names no object the origin could hold (an empty, '.' or '..' path segment): the client's mistake,
    not the origin's failure."""


class Origin(Protocol):
    description: str

    async def fetch(self, key: bytes) -> bytes | None:
        """The object's bytes, or None when the origin has no such object. Raises OriginError."""
