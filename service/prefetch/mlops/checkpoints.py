"""Versioned model checkpoints: saved (encrypted when a cipher is given), promoted when better, rolled back.

Layout under the registry directory: `v0001.ckpt`, `v0002.ckpt`, ... and `index.json`, which records each
version's metric, its model config, which version serves and which served before it. Writes go to a temporary
file that is synced and renamed into place, and the directory is synced after the rename, so neither a crash
nor a power loss leaves a torn checkpoint or index. Only the serving version, the one a rollback would load and
the newest `KEEP_NEWEST` are kept: the others are deleted once the index no longer names them.

Serving changes in two steps, so that the index never names a version the model could not load:
`rollback_target` (or a version just saved) says which version to load, and `commit_serving` records it once it
has loaded. A version saved from another model config (an older release's) is never rolled back to, and a
serving one of another config does not stand in the way of promoting a version of this one.

Each encrypted checkpoint is bound to its tenant, its version and the tenant's incarnation (`TenantSpec.incarnation`,
where the tenant has one): a tenant deleted and created again under the same name cannot load the deleted one's
models, even where its models directory or its plaintext `incarnation` file was put back or edited. The index records
the incarnation its versions were written for; versions of another one (tampering, or checkpoints written before
this binding existed) are dropped when the registry opens. Upgrading to a release with this binding therefore costs
each tenant with an incarnation its saved models once: they would no longer decrypt, so they are deleted, a warning
is logged once per tenant, and the tenant trains a new model from its live reads.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from service.security.envelope import atomic_output

log = logging.getLogger(__name__)

KEEP_NEWEST = 3  # versions kept besides the serving one and the one a rollback would load
_VERSION_FILE = re.compile(r"v(\d+)\.ckpt")


class Cipher(Protocol):
    """At-rest encryption (the security issue's envelope encryption fits here)."""

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes, context: bytes) -> bytes: ...


class CheckpointError(Exception):
    """A checkpoint or index that is missing, unreadable, or fails to decrypt; the message names the file."""


@dataclass(slots=True)
class VersionInfo:
    version: int
    metric: float  # higher is better (e.g. prefetch accuracy on a held-out window)
    meta: dict[str, Any] = field(default_factory=dict)  # "model_config": the config of the model it was saved from


@dataclass(slots=True)
class _Index:
    versions: list[VersionInfo] = field(default_factory=list)
    serving: int | None = None
    history: list[int] = field(default_factory=list)  # the version a rollback would load, then the serving one
    incarnation: str | None = None  # the tenant incarnation the versions were encrypted for


def _parse_index(raw: Any) -> _Index:
    """The index from its JSON; KeyError, TypeError or ValueError where it is not one."""
    versions = [VersionInfo(**v) for v in raw["versions"]]
    serving, history = raw["serving"], list(raw["history"])
    numbers = [v.version for v in versions] + history + ([] if serving is None else [serving])
    if not all(isinstance(number, int) for number in numbers):
        raise TypeError("version numbers must be integers")
    incarnation = raw.get("incarnation")  # absent: written before checkpoints were bound to an incarnation
    if incarnation is not None and not isinstance(incarnation, str):
        raise TypeError("incarnation must be a string")
    return _Index(versions, serving, history, incarnation)


class CheckpointRegistry:
    """One tenant's model versions. `model_config`: the config of the model they are loaded into (as the
    checkpoint's `model_config` records it); versions saved from another one are passed over. Without it, the
    serving version's config stands for it. `incarnation`: the tenant's, bound into every encrypted checkpoint;
    versions written for another one are dropped on open."""

    def __init__(self, directory: str | Path, tenant: str, cipher: Cipher | None = None,
                 model_config: Mapping[str, Any] | None = None, incarnation: str | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tenant = tenant
        self.cipher = cipher
        self.model_config = dict(model_config) if model_config is not None else None
        self.incarnation = incarnation
        self._index = self._load_index()
        if self._index.incarnation != incarnation:
            self._drop_other_incarnation()

    # -- storage -----------------------------------------------------------------------------------

    def _path(self, version: int) -> Path:
        return self.directory / f"v{version:04d}.ckpt"

    def _context(self, version: int) -> bytes:
        # Binds a ciphertext to its tenant, incarnation and version: one swapped between them fails to decrypt.
        if self.incarnation is None:
            return f"foresight-model:{self.tenant}:v{version}".encode()
        return f"foresight-model:{self.tenant}:{self.incarnation}:v{version}".encode()

    def _drop_other_incarnation(self) -> None:
        """Forget versions encrypted for another incarnation (or before the binding): they cannot decrypt."""
        index = self._index
        if index.versions:
            log.warning("tenant %s: its %d saved model versions in %s were written for another incarnation of the "
                        "tenant, or by a release that did not bind checkpoints to it; they cannot load, so they are "
                        "deleted and the tenant starts a new model", self.tenant, len(index.versions), self.directory)
        self._index = _Index(incarnation=self.incarnation)
        if index.versions or (self.directory / "index.json").exists():
            self._commit()

    def _write(self, path: Path, data: bytes) -> None:
        with atomic_output(path) as file:  # a power loss leaves the old file or the new, never an empty one
            file.write(data)

    def _load_index(self) -> _Index:
        path = self.directory / "index.json"
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return _Index()
        except OSError as err:
            raise CheckpointError(f"checkpoint index {path} cannot be read: {err}") from err
        try:
            return _parse_index(json.loads(text))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint index {path} is torn or not an index "
                                  f"({type(err).__name__}: {err})") from err

    def _save_index(self) -> None:
        self._write(self.directory / "index.json", json.dumps(asdict(self._index), indent=1).encode())

    def _commit(self) -> None:
        """Save the index trimmed to the versions kept, then delete the files of the others."""
        index = self._index
        if index.serving is None:
            index.history = []
        else:
            previous = self._rollback_candidate()
            index.history = [index.serving] if previous is None else [previous, index.serving]
        newest = sorted(v.version for v in index.versions)[-KEEP_NEWEST:]
        kept = set(newest) | set(index.history)
        index.versions = [v for v in index.versions if v.version in kept]
        self._save_index()
        for path in self.directory.glob("v*.ckpt"):
            match = _VERSION_FILE.fullmatch(path.name)
            if match is not None and int(match.group(1)) not in kept:
                path.unlink(missing_ok=True)

    # -- versions ----------------------------------------------------------------------------------

    @property
    def serving(self) -> int | None:
        return self._index.serving

    def info(self, version: int) -> VersionInfo:
        for v in self._index.versions:
            if v.version == version:
                return v
        raise CheckpointError(f"no model version {version} for tenant {self.tenant!r} in {self.directory}")

    def _fits(self, version: int, config: Mapping[str, Any] | None) -> bool:
        """Whether `version` is known and was saved from a model of `config` (None, or unrecorded: any)."""
        try:
            recorded = self.info(version).meta.get("model_config")
        except CheckpointError:
            return False
        return config is None or recorded is None or recorded == config

    def compatible(self, version: int) -> bool:
        """Whether `version` can be loaded into the registry's `model_config` (any, without one)."""
        return self._fits(version, self.model_config)

    def _config(self) -> Mapping[str, Any] | None:
        """The running model's config: the registry's, else the serving version's."""
        if self.model_config is not None or self.serving is None:
            return self.model_config
        try:
            recorded: Mapping[str, Any] | None = self.info(self.serving).meta.get("model_config")
        except CheckpointError:
            return None
        return recorded

    def _rollback_candidate(self) -> int | None:
        """The newest version that served before the serving one and fits the running model's config."""
        config = self._config()
        earlier = [v for v in self._index.history if v != self.serving and self._fits(v, config)]
        return earlier[-1] if earlier else None

    # -- API ---------------------------------------------------------------------------------------

    def save(self, state: dict[str, Any], metric: float, meta: dict[str, Any] | None = None) -> int:
        """Store a new version (not yet serving); returns its number. The state's `model_config`, if any, is
        recorded with it."""
        version = max((v.version for v in self._index.versions), default=0) + 1
        meta = dict(meta or {})
        if "model_config" in state:
            meta.setdefault("model_config", state["model_config"])
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        if self.cipher is not None:
            data = self.cipher.encrypt(data, self._context(version))
        self._write(self._path(version), data)
        self._index.versions.append(VersionInfo(version, metric, meta))
        self._commit()
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
        """Serve `version`, saved from the running model, if nothing serves yet, the serving version is of
        another model config, or `version` beats its metric by `margin`. Nothing to load: the model runs it."""
        candidate = self.info(version)
        if not self.compatible(version):
            return False
        serving = self.serving
        config = self.model_config if self.model_config is not None else candidate.meta.get("model_config")
        if (serving is not None and self._fits(serving, config)
                and candidate.metric < self.info(serving).metric * (1 + margin)):
            return False
        self.commit_serving(version)
        return True

    def rollback_target(self, metric: float, margin: float = 0.1) -> int | None:
        """The version to roll back to when the serving one's live `metric` is well below what the version
        before it measured, or None. The index is unchanged: load the version into the model, then
        `commit_serving(version)`; if the load fails, nothing serves that the model could not load."""
        previous = self._rollback_candidate() if self.serving is not None else None
        if previous is not None and metric < self.info(previous).metric * (1 - margin):
            return previous
        return None

    def commit_serving(self, version: int) -> None:
        """Record `version` as serving, once the model runs it: a rollback target, or a version just saved."""
        self._serve(version)
        self._commit()

    def _serve(self, version: int) -> None:
        self.info(version)  # a CheckpointError for a version the index does not know
        history = self._index.history
        if version in history:
            del history[history.index(version) + 1 :]
        else:
            history.append(version)
        self._index.serving = version
