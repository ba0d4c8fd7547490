"""Copies finished audit files off the machine, so that pruning (`keep_files`) never deletes the only copy.

Each rotated file, in its final form (the encrypted `.fse` archive when the log archives, else the plaintext
rotated file), is put at `<url>/<node>/<name>` on any fsspec filesystem: `s3://`, `gs://`, `az://` or a directory
(a mounted share). Credentials come from the machine's identity, as the origin's do. A bucket is never created
here: the customer makes it, with the retention or object lock the trail needs. A copy counts as shipped once
the remote object holds the local file's very bytes (sha256, read back once per file and process); `AuditLog`
deletes only shipped files past `keep_files`, so a bucket that is down for a day costs disk, never audit lines.

Size alone is not enough: `foresight kms rewrap` rewrites an archive's wrapped data key in place, same length,
so after a rewrap the copy there still opens only with the old key version. A copy of the right size but other
bytes is never replaced (a retention lock, an immutability policy or a write-only role forbids it, and it is
the trail): the file is shipped beside it, as `<url>/<node>/rewrapped/<name>.<sha256 prefix>`, out of the node's
folder so that `foresight audit verify <url>/<node>/` still reads one chain. A copy cut short (smaller or larger)
is replaced at its name.

Shipping runs on a thread of its own (a hung copy must not hold up archiving), never under the lock that logins
wait for. The archives are authenticated encryption: a copy altered in the bucket fails `foresight audit verify`,
it cannot pass as another.
"""

from __future__ import annotations

import hashlib
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
REWRAPPED = "rewrapped"  # the node's subfolder for copies whose first name holds other bytes


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
        self._there: set[str] = set()  # local names whose remote copy is known to hold their bytes
        self._last_error_log = 0.0

    @property
    def destination(self) -> str:
        """This node's folder, as a URL (the audit.pruned lines and the log name it)."""
        return f"{self.url}/{self.node}"

    def remote(self, path: Path) -> str:
        return posixpath.join(self.prefix, path.name)

    def rewrapped(self, path: Path, digest: str) -> str:
        """Where `path` goes when its first name holds a copy of other bytes (an earlier wrapping of its key)."""
        return posixpath.join(self.prefix, REWRAPPED, f"{path.name}.{digest[:16]}")

    def has(self, path: Path) -> bool:
        """Whether a copy of `path`'s very bytes is known to be there (from a `ship` pass)."""
        return path.name in self._there

    def ship(self, paths: list[Path]) -> list[Path]:
        """Copy each of `paths` not there yet, oldest first; returns those still not shipped. Stops at the first
        failure (the next pass retries) and logs it at most once a minute: the bucket being down must not flood
        the log, and the files stay until it is back."""
        for index, path in enumerate(paths):
            if path.name in self._there:
                continue
            try:
                self._ship_one(path)
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

    def _ship_one(self, path: Path) -> None:
        """Make sure a copy with `path`'s bytes is there: at its name, or, when that holds other bytes of the same
        length (the archive was rewrapped since), under `rewrapped/`."""
        size, digest = path.stat().st_size, _sha256(path.open("rb"))
        target = self.remote(path)
        there = self._remote_size(target)
        if there == size and self._remote_digest(target) != digest:
            target = self.rewrapped(path, digest)
            there = self._remote_size(target)
            if there == size and self._remote_digest(target) != digest:  # named by its digest: altered there
                raise OSError(f"the copy at {target} holds other bytes than the file; it was altered there")
            if there is None:
                log.warning("audit file %s differs from its copy in %s (rewrapped since, or altered there): the "
                            "copy is kept, and the file shipped beside it as %s", path.name, self.destination,
                            posixpath.relpath(target, self.prefix))
        if there == size:
            return
        local = isinstance(self.fs, LocalFileSystem)
        if local:  # not on object stores: s3fs would create the bucket
            for folder in dict.fromkeys([self.prefix, posixpath.dirname(target)]):
                os.makedirs(folder, mode=0o700, exist_ok=True)  # the log's own privacy, not the umask's
        self.fs.put_file(str(path), target)
        if local:
            os.chmod(target, 0o600)
        if self._remote_size(target) != size:
            raise OSError(f"the copy at {target} does not have the file's {size} bytes")
        self.shipped_files += 1
        log.info("audit file %s shipped to %s", path.name, self.destination)

    def _remote_size(self, target: str) -> int | None:
        try:
            return int(self.fs.info(target)["size"])
        except FileNotFoundError:
            return None

    def _remote_digest(self, target: str) -> str:
        """The sha256 of the copy's bytes, read back: the one content check every fsspec filesystem offers."""
        return _sha256(self.fs.open(target, "rb"))

    def _failed(self, path: Path, why: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _LOG_EVERY_S:
            self._last_error_log = now
            log.error("audit file %s not shipped to %s (%s); it is kept, and shipping is retried each minute",
                      path.name, self.destination, why)


def _sha256(file: Any) -> str:
    """The sha256 of an open binary file's bytes (read in chunks by hashlib); the file is closed."""
    with file:
        return hashlib.file_digest(file, "sha256").hexdigest()
