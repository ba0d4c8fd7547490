"""Versioned model checkpoints: saved (encrypted when a cipher is given), promoted when better, rolled back.

Layout under the registry directory: `v0001.ckpt`, `v0002.ckpt`, ... and `index.json`, which records each
version's metric and which version serves. Writes go to a temporary file and are renamed into place, so a
crash never leaves a torn checkpoint or index.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


class Cipher(Protocol):
    """At-rest encryption (the security issue's envelope encryption fits here)."""

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes, context: bytes) -> bytes: ...


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, or fails to decrypt."""


@dataclass(slots=True)
class VersionInfo:
    version: int
    metric: float  # higher is better (e.g. prefetch accuracy on a held-out window)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Index:
    versions: list[VersionInfo] = field(default_factory=list)
    serving: int | None = None
    history: list[int] = field(default_factory=list)  # serving versions, oldest first


class CheckpointRegistry:
    def __init__(self, directory: str | Path, tenant: str, cipher: Cipher | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tenant = tenant
        self.cipher = cipher
        self._index = self._load_index()

    # -- storage -----------------------------------------------------------------------------------

    def _path(self, version: int) -> Path:
        return self.directory / f"v{version:04d}.ckpt"

    def _context(self, version: int) -> bytes:
        # Binds a ciphertext to its tenant and version: a checkpoint swapped between them fails to decrypt.
        return f"foresight-model:{self.tenant}:v{version}".encode()

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _load_index(self) -> _Index:
        path = self.directory / "index.json"
        if not path.exists():
            return _Index()
        raw = json.loads(path.read_text())
        return _Index(
            versions=[VersionInfo(**v) for v in raw["versions"]],
            serving=raw["serving"],
            history=raw["history"],
        )

    def _save_index(self) -> None:
        self._write(self.directory / "index.json", json.dumps(asdict(self._index), indent=1).encode())

    # -- API ---------------------------------------------------------------------------------------

    @property
    def serving(self) -> int | None:
        return self._index.serving

    def info(self, version: int) -> VersionInfo:
        for v in self._index.versions:
            if v.version == version:
                return v
        raise CheckpointError(f"no model version {version} for tenant {self.tenant!r}")

    def save(self, state: dict[str, Any], metric: float, meta: dict[str, Any] | None = None) -> int:
        """Store a new version (not yet serving); returns its number."""
        version = max((v.version for v in self._index.versions), default=0) + 1
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        if self.cipher is not None:
            data = self.cipher.encrypt(data, self._context(version))
        self._write(self._path(version), data)
        self._index.versions.append(VersionInfo(version, metric, meta or {}))
        self._save_index()
        return version

    def load(self, version: int) -> dict[str, Any]:
        path = self._path(version)
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} is missing")
        data = path.read_bytes()
        if self.cipher is not None:
            try:
                data = self.cipher.decrypt(data, self._context(version))
            except Exception as err:
                raise CheckpointError(f"checkpoint {path} does not decrypt: {err}") from err
        try:
            state: dict[str, Any] = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as err:
            raise CheckpointError(f"checkpoint {path} is unreadable: {err}") from err
        return state

    def promote_if_better(self, version: int, margin: float = 0.02) -> bool:
        """Serve `version` if nothing serves yet or it beats the serving one's metric by `margin`."""
        candidate = self.info(version)
        if self.serving is not None and candidate.metric < self.info(self.serving).metric * (1 + margin):
            return False
        self._serve(version)
        return True

    def record_live_metric(self, metric: float, margin: float = 0.1) -> int | None:
        """Live metric of the serving version; rolls back (and returns the version) when it is much worse
        than the version served before it measured."""
        if self.serving is None or len(self._index.history) < 2:
            return None
        previous = self._index.history[-2]
        if metric < self.info(previous).metric * (1 - margin):
            self._index.history.pop()
            self._index.serving = previous
            self._save_index()
            return previous
        return None

    def _serve(self, version: int) -> None:
        self._index.serving = version
        self._index.history.append(version)
        self._save_index()
