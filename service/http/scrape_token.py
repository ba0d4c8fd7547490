"""The metrics scrape credential: a bearer token that Prometheus and the service each read from a file.

The file is read again when it changes (a rotated Kubernetes secret, a renewed file), and a presented token is
compared as a SHA-256 digest in constant time, so neither the token nor its length shows in the answer time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

from service.config import ConfigError

log = logging.getLogger(__name__)

# 128 bits as hex; make one with `openssl rand -hex 32` or `python -c "import secrets; print(secrets.token_hex())"`.
MIN_TOKEN_CHARS = 32


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _read(path: Path) -> bytes:
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"the token must be one word of at least {MIN_TOKEN_CHARS} characters")
    return _digest(token)


class ScrapeToken:
    """The token held in `path`; with `path` None there is none, and only the other ways in remain."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._digest: bytes | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._problem: str | None = None
        if path is not None:
            try:
                self._stamp = self._stat(path)
                self._digest = _read(path)
            except (OSError, ValueError) as err:
                raise ConfigError(f"metrics_token_file (FORESIGHT_METRICS_TOKEN_FILE) {path}: {err}") from None

    @property
    def configured(self) -> bool:
        return self.path is not None

    def verify(self, token: str) -> bool:
        """Whether `token` is the current scrape token (never, when none is configured)."""
        if self.path is not None:
            self._refresh(self.path)
        return self._digest is not None and hmac.compare_digest(_digest(token), self._digest)

    @staticmethod
    def _stat(path: Path) -> tuple[int, int, int]:
        stat = os.stat(path)
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _refresh(self, path: Path) -> None:
        """Read the file again if it changed. One that went bad keeps the last good token, and is logged once."""
        try:
            stamp = self._stat(path)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            self._digest = _read(path)
            self._problem = None
        except (OSError, ValueError) as err:
            problem = str(err)
            if problem != self._problem:
                log.warning("metrics token file %s cannot be used (%s); the last good token stays", path, problem)
                self._problem = problem
