"""Copies finished audit files off the machine, so that pruning (`keep_files`) never deletes the only copy.

Each rotated file, in its final form (the encrypted `.fse` archive when the log archives, else the plaintext
rotated file), is put at `<url>/<node>/<name>` on any fsspec filesystem: `s3://`, `gs://`, `az://` or a directory
(a mounted share). Credentials come from the machine's identity, as the origin's do. A bucket is never created
here: the customer makes it, with the retention or object lock the trail needs. A copy counts as shipped once
the remote object has the local file's size; `AuditLog` deletes only shipped files past `keep_files`, so a bucket
that is down for a day costs disk, never audit lines.

Shipping runs on a thread of its own (a hung copy must not hold up archiving), never under the lock that logins
wait for. The archives are authenticated encryption: a copy altered in the bucket fails `foresight audit verify`,
it cannot pass as another.
"""

from __future__ import annotations

import logging
import os
import posixpath
import socket
import time
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)
_LOG_EVERY_S = 60.0


class AuditShipper:
    """Where rotated audit files go, and which ones are there already."""

    def __init__(self, url: str, node: str | None = None) -> None:
        """Parses `url` now (a bad scheme or a missing filesystem package fails the start); reaches it later."""
        self.url = url.rstrip("/")
        self.node = node or socket.gethostname()
        self.fs: Any
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.prefix = posixpath.join(root, self.node)
        self.shipped_files = 0  # copies made by this process (foresight_audit_shipped_files_total)
        self._there: set[str] = set()  # local names whose remote copy is known complete
        self._last_error_log = 0.0

    @property
    def destination(self) -> str:
        """This node's folder, as a URL (the audit.pruned lines and the log name it)."""
        return f"{self.url}/{self.node}"

    def remote(self, path: Path) -> str:
        return posixpath.join(self.prefix, path.name)

    def has(self, path: Path) -> bool:
        """Whether `path`'s copy is known complete (from a `ship` pass)."""
        return path.name in self._there

    def ship(self, paths: list[Path]) -> list[Path]:
        """Copy each of `paths` not there yet, oldest first; returns those still not shipped. Stops at the first
        failure (the next pass retries) and logs it at most once a minute: the bucket being down must not flood
        the log, and the files stay until it is back."""
        for index, path in enumerate(paths):
            if path.name in self._there:
                continue
            try:
                size = path.stat().st_size
                if self._remote_size(path) != size:
                    local = isinstance(self.fs, LocalFileSystem)
                    if local:  # not on object stores: s3fs would create the bucket
                        os.makedirs(self.prefix, mode=0o700, exist_ok=True)  # the log's own privacy, not the umask's
                    self.fs.put_file(str(path), self.remote(path))
                    if local:
                        os.chmod(self.remote(path), 0o600)
                    if self._remote_size(path) != size:
                        raise OSError(f"the copy at {self.remote(path)} does not have the file's {size} bytes")
                    self.shipped_files += 1
                    log.info("audit file %s shipped to %s", path.name, self.destination)
            except FileNotFoundError as err:
                if not path.exists():  # pruned or archived meanwhile: nothing to ship
                    continue
                self._failed(path, f"the destination does not exist: {err}")  # no such bucket, or folder
                return [p for p in paths[index:] if p.name not in self._there]
            except Exception as err:
                self._failed(path, f"{type(err).__name__}: {err}")
                return [p for p in paths[index:] if p.name not in self._there]
            self._there.add(path.name)
        return []

    def _remote_size(self, path: Path) -> int | None:
        try:
            return int(self.fs.info(self.remote(path))["size"])
        except FileNotFoundError:
            return None

    def _failed(self, path: Path, why: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _LOG_EVERY_S:
            self._last_error_log = now
            log.error("audit file %s not shipped to %s (%s); it is kept, and shipping is retried each minute",
                      path.name, self.destination, why)
