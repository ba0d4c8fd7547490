"""The metrics scrape credential: a bearer token that Prometheus presents and the service checks.

The token comes from one source: a file (`metrics_token_file`, read again when it changes: a rotated Kubernetes
secret, a renewed file) or, when keys come from Vault, a KV v2 secret (`vault_metrics_path`, written by
`foresight metrics-token rotate`, read again at most every `vault_metrics_refresh_s`). Reads run in a worker
thread, never on the event loop (hvac blocks). A source that fails keeps the last good token and says so once; a
Vault secret that does not exist means no token. A presented token is compared as a SHA-256 digest in constant time,
so neither the token nor its length shows in the answer time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Protocol

import hvac
import hvac.exceptions
import requests

from service.config import ConfigError

log = logging.getLogger(__name__)

# 128 bits as hex; `foresight metrics-token rotate` makes 256, as does `openssl rand -hex 32`.
MIN_TOKEN_CHARS = 32
VAULT_FIELD = "token"  # the field of the Vault secret that holds the token


class SourceUnavailable(Exception):
    """The source could not say what the token is now; the message names why, never the token."""


class TokenSource(Protocol):
    """Where the scrape token lives."""

    name: str  # for messages: which setting and where

    def due(self) -> bool:
        """Whether the token may have changed since the last read. Cheap: called on the event loop."""

    def read(self) -> str | None:
        """The token now (None: there is none); SourceUnavailable keeps the last good one. Blocks."""


def check_token(token: str) -> str:
    """The token if it is one word of MIN_TOKEN_CHARS or more; ValueError saying what is wrong (not the token)."""
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"the token must be one word of at least {MIN_TOKEN_CHARS} characters")
    return token


def new_token() -> str:
    """A fresh scrape token: 256 random bits as hex, for the file a marketplace node writes and for Vault."""
    return secrets.token_hex(32)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class FileSource:
    """`metrics_token_file`: read again whenever its inode, size or modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"metrics_token_file (FORESIGHT_METRICS_TOKEN_FILE) {path}"
        self._stamp: tuple[int, int, int] | None = None

    def _stat(self) -> tuple[int, int, int]:
        stat = os.stat(self.path)
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def due(self) -> bool:
        try:
            return self._stat() != self._stamp
        except OSError:
            return self._stamp is not None  # gone since the last read: say so once, then wait for it to return

    def read(self) -> str:
        try:
            self._stamp = None
            stamp = self._stat()
            self._stamp = stamp  # a bad rewrite is not read again until it changes
            return check_token(self.path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError) as err:
            raise SourceUnavailable(str(err)) from None


class VaultSource:
    """A KV v2 secret `{"token": ...}` read with the service's own Vault client, at most every `interval` seconds
    (failures included, so a Vault outage costs one read an interval)."""

    def __init__(self, client: hvac.Client, mount: str, path: str, interval: float) -> None:
        self.client, self.mount, self.path, self.interval = client, mount, path, interval
        self.name = f"vault_metrics_path (FORESIGHT_VAULT_METRICS_PATH) {mount}/{path}"
        self._next = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def read(self) -> str | None:
        self._next = time.monotonic() + self.interval
        try:
            reply = self.client.secrets.kv.v2.read_secret_version(
                self.path, mount_point=self.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None  # never written, or deleted: no token
        except (requests.RequestException, hvac.exceptions.VaultError) as err:
            raise SourceUnavailable(f"Vault unavailable ({type(err).__name__})") from None
        token = reply["data"]["data"].get(VAULT_FIELD)
        if not isinstance(token, str):
            raise SourceUnavailable(f"the secret has no string field {VAULT_FIELD!r}")
        try:
            return check_token(token)
        except ValueError as err:
            raise SourceUnavailable(str(err)) from None


class ScrapeToken:
    """The current token of `source`; with no source, or a source that holds none, only the other ways in remain."""

    def __init__(self, source: TokenSource | None) -> None:
        self.source = source
        self._digest: bytes | None = None
        self._problem: str | None = None
        self._refreshing = asyncio.Lock()

    @classmethod
    def from_file(cls, path: Path) -> ScrapeToken:
        """The file's token, which must be good now: a service must not start with a scrape token it cannot use."""
        source = FileSource(path)
        try:
            token = source.read()
        except SourceUnavailable as err:
            raise ConfigError(f"{source.name}: {err}") from None
        scrape = cls(source)
        scrape._digest = _digest(token)
        return scrape

    @property
    def configured(self) -> bool:
        """A token is in force, so loopback clients need it too."""
        return self._digest is not None

    async def refresh(self) -> None:
        """Read the source again, in a worker thread, if it is due; one read at a time."""
        source = self.source
        if source is None or not source.due():
            return
        async with self._refreshing:
            if source.due():  # not already read by the request this one waited for
                await asyncio.to_thread(self._reload, source)

    def verify(self, token: str) -> bool:
        """Whether `token` is the current scrape token (never, when there is none)."""
        return self._digest is not None and hmac.compare_digest(_digest(token), self._digest)

    def _reload(self, source: TokenSource) -> None:
        try:
            token = source.read()
        except SourceUnavailable as err:
            problem = str(err)
            if problem != self._problem:
                log.warning("metrics token from %s cannot be used (%s); the last good token stays", source.name,
                            problem)
                self._problem = problem
            return
        if self._problem is not None or (token is None) != (self._digest is None):
            log.info("metrics token from %s: %s", source.name,
                     "none, so only the admin token and loopback clients scrape" if token is None else "in use")
        self._problem = None
        self._digest = None if token is None else _digest(token)
