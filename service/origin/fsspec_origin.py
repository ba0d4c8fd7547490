"""One origin class for a local directory, S3, GCS and Azure Blob: fsspec speaks to all of them.

Keys map to object paths under a root; a key that would escape the root (`..`, absolute paths) is refused
rather than read. fsspec calls block, so they run in worker threads bounded by a semaphore (`ReadSlots`): threads
of the origins' own, never the default executor that prefetch steps, checkpoints and audit writes share (a read waiting
there for a thread spends its timeout queued behind them, and fails).
"""

from __future__ import annotations

import asyncio
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import fsspec

from service.origin.base import OriginError, OriginTimeout, UnmappableKey


class ReadSlots:
    """The origin reads a process may have in flight, and threads of their own to run them: as many as slots, so a
    read never waits for a thread. Shared by every tenant's origin (the registry owns it)."""

    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.pool = ThreadPoolExecutor(size, thread_name_prefix="origin")  # threads start as reads need them

    def close(self) -> None:
        """Stop the threads once the reads in flight finish: for the service's stop."""
        self.pool.shutdown(wait=False)


class FsspecOrigin:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        latency_ms: float = 0.0,
        slots: ReadSlots | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        try:
            self._fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except (ImportError, ValueError) as err:
            raise OriginError(f"origin {url!r} cannot be opened: {err}") from None
        self._root = root.rstrip("/")
        self._timeout_s = timeout_s
        self._latency_s = latency_ms / 1000.0
        self._slots = slots or ReadSlots(64)
        self.description = url

    def path_for(self, key: bytes) -> str:
        """Object path of a key; keys are UTF-8 with '/' allowed, percent-quoting anything else unsafe."""
        text = key.decode("utf-8", "surrogateescape")
        parts = text.split("/")
        if text.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise UnmappableKey("key cannot be mapped to an origin object (empty, '.' or '..' path segment)")
        return posixpath.join(self._root, *(quote(p, safe="@:=+,-_.~") for p in parts))

    def _read(self, path: str) -> bytes | None:
        try:
            return bytes(self._fs.cat_file(path))
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None
        except Exception as err:  # every backend raises its own types; the client gets one clear error
            raise OriginError(f"origin read failed for {path}: {type(err).__name__}: {err}") from None

    async def fetch(self, key: bytes) -> bytes | None:
        path = self.path_for(key)
        async with self._slots.semaphore:
            try:
                async with asyncio.timeout(self._timeout_s):
                    if self._latency_s:
                        await asyncio.sleep(self._latency_s)
                    try:
                        return await asyncio.get_running_loop().run_in_executor(self._slots.pool, self._read, path)
                    except RuntimeError:  # the pool was shut down: the service is stopping
                        raise OriginError(f"origin closed before reading {path}") from None
            except TimeoutError:
                raise OriginTimeout(f"origin timed out after {self._timeout_s:g}s reading {path}") from None

def open_origin(url: str, tenant: str | None = None, **kwargs: Any) -> FsspecOrigin:
    """An origin rooted at `url`, or at `url/<tenant>` when it is a deployment-wide default."""
    root = url.rstrip("/") + (f"/{tenant}" if tenant else "")
    return FsspecOrigin(root, **kwargs)
