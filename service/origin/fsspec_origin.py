"""One origin class for a local directory, S3, GCS and Azure Blob: fsspec speaks to all of them.

A key maps to the object at `<root>/<key>`, its '/'-separated segments as they are (no quoting); a key that would
escape the root (`..`, absolute paths) is refused rather than read. fsspec calls block (making a filesystem too),
so they run on threads of the origins' own (`ReadSlots`), never the default executor that prefetch steps,
checkpoints and audit writes share (a read waiting there for a thread spends its timeout queued behind them, and
fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import fsspec

from service.origin.base import MAX_OBJECT_BYTES, ObjectTooLarge, OriginError, OriginTimeout, UnmappableKey, shown_key
from service.origin.urls import BadOriginUrl, check_origin_url, origin_protocol

log = logging.getLogger(__name__)
T = TypeVar("T")
_LOG_EVERY_S = 60.0
_BUCKET_RECHECK_S = 10.0  # while an origin's bucket is missing, how often a miss asks again (it may be made)
_REOPEN_S = 10.0  # after an origin's filesystem could not be made, how long its reads fail before it is tried again


class ReadSlots:
    """The origin reads a process may have in flight, and threads of their own to run them. A slot is taken before
    a read's thread starts and given back when that thread finishes, not when the read waiting on it gives up: a
    read that timed out on a hung origin keeps its slot while its thread is stuck. With as many threads as slots, a
    read never waits for a thread, and the pool's queue never holds more reads than there are slots. Each origin
    (every tenant has its own) holds at most `per_origin` slots, three quarters of them, so one tenant's hung or
    slow origin always leaves the others a quarter, and a deployment with one tenant still has most of them.
    Shared by every tenant's origin (the registry owns it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.per_origin = max(1, size - size // 4)
        self._free = asyncio.Semaphore(size)
        self.pool = ThreadPoolExecutor(size, thread_name_prefix="origin")  # threads start as reads need them

    def share(self) -> asyncio.Semaphore:
        """A new origin's own share of the slots."""
        return asyncio.Semaphore(self.per_origin)

    async def run(self, share: asyncio.Semaphore, read: Callable[..., T], *args: Any, delay_s: float = 0.0) -> T:
        """`read(*args)` on a thread, once the origin's share and the process have a slot free (and `delay_s` has
        passed, for benchmarks). Cancelled while it waits, it holds nothing; cancelled while its thread runs, the
        thread keeps the slot until it finishes."""
        await share.acquire()
        try:
            await self._free.acquire()
        except BaseException:
            share.release()
            raise
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            work = self.pool.submit(read, *args)
        except BaseException:
            self._release(share)
            raise
        loop = asyncio.get_running_loop()
        work.add_done_callback(lambda _: self._release_soon(loop, share))
        return await asyncio.wrap_future(work)

    def _release(self, share: asyncio.Semaphore) -> None:
        self._free.release()
        share.release()

    def _release_soon(self, loop: asyncio.AbstractEventLoop, share: asyncio.Semaphore) -> None:
        """From the read's thread, once it finished: the slot goes back on the loop that owns the semaphores."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the service has stopped, nobody waits for one
            loop.call_soon_threadsafe(self._release, share)

    def close(self) -> None:
        """Stop the threads once the reads in flight finish: for the service's stop."""
        self.pool.shutdown(wait=False)


class FsspecOrigin:
    """An origin at an fsspec URL. Its filesystem is made at the first read, on a read thread: making one may connect
    (a cloud SDK finding its credentials, a metadata server that does not answer), and origins are made while
    tenants load, on the event loop. One that cannot be made fails that tenant's reads, not the load."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        latency_ms: float = 0.0,
        slots: ReadSlots | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        _check(url)
        self._url = url
        self._storage_options = storage_options or {}
        self._local = origin_protocol(url) == "file"
        self._fs: Any = None
        self._root = ""
        self._open_lock = threading.Lock()
        self._open_failed_at: float | None = None
        self._timeout_s = timeout_s
        self._latency_s = latency_ms / 1000.0
        self._slots = slots or ReadSlots(64)
        self._share = self._slots.share()
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._log_lock = threading.Lock()
        # An object store's bucket, until a look at it settles that it exists (or that this identity may not see
        # it); while it is missing, when that was last asked. A directory has none: its misses are ordinary.
        self._bucket: str | None = None
        self._bucket_missing_at: float | None = None
        self.description = url

    def path_for(self, key: bytes) -> str:
        """The object path of a key under the origin's root: its '/'-separated segments, as they are (`a b.txt`
        reads the object `a b.txt`). An object store's names are UTF-8, so a key that is not UTF-8 names none
        there; a local directory's names are any bytes, and such a key names the file of exactly those bytes."""
        if b"\0" in key:
            raise UnmappableKey("key cannot be mapped to an origin object (a NUL byte)")
        try:
            text = os.fsdecode(key) if self._local else key.decode("utf-8")
        except UnicodeDecodeError:
            raise UnmappableKey("key cannot be mapped to an origin object (not UTF-8, as object names are)") from None
        if any(p in ("", ".", "..") for p in text.split("/")):
            raise UnmappableKey("key cannot be mapped to an origin object (an empty, '.' or '..' path segment)")
        return text

    def _opened(self, key: bytes) -> Any:
        """The filesystem, made on this read thread the first time, and tried again once _REOPEN_S have passed
        after a failure. While an attempt hangs, this origin's other reads wait here, holding only its own slots."""
        with self._open_lock:
            if self._fs is not None:
                return self._fs
            failed_at = self._open_failed_at
            if failed_at is None or time.monotonic() - failed_at >= _REOPEN_S:
                try:
                    fs, root = fsspec.core.url_to_fs(self._url, **self._storage_options)
                except Exception as err:  # an SDK missing, credentials not found, a host that does not answer
                    self._open_failed_at = time.monotonic()
                    log.warning("origin %s could not be opened: %s: %s", self.description, type(err).__name__, err)
                else:
                    self._root = root.rstrip("/")
                    self._bucket = (self._root.split("/")[0] or None) if _protocols(fs) & _BUCKET_LOOKS else None
                    self._fs = fs
                    return fs
        raise OriginError(f"origin read failed for key {shown_key(key)}: the origin could not be opened")

    def _read(self, key: bytes, relative: str, limit: int) -> bytes | None:
        fs = self._opened(key)
        path = posixpath.join(self._root, relative)
        try:
            info = fs.info(path)
            if info.get("type") == "directory":
                return None
            size = info.get("size") if info.get("type") == "file" else None  # a pipe or device has no size to trust
            if size is not None and size > limit:
                raise ObjectTooLarge(f"origin object for key {shown_key(key)} is {size} bytes, over the {limit} bytes "
                                     "this tenant can load", size)
            expected = limit if size is None else size
            data = fs.cat_file(path, start=0, end=expected + 1) if expected else b""
            if size is not None and len(data) > size:  # it grew since `info`: read again, a byte past the limit
                data = fs.cat_file(path, start=0, end=limit + 1)
            if len(data) > limit:
                raise ObjectTooLarge(f"origin object for key {shown_key(key)} is over the {limit} bytes this tenant "
                                     "can load", len(data))
            return bytes(data)
        except (FileNotFoundError, IsADirectoryError):
            if self._bucket_is_missing():
                self._log("failed", f"{path}: the bucket {self._bucket!r} does not exist")
                raise OriginError(f"origin read failed for key {shown_key(key)}: the origin's bucket does not "
                                  "exist") from None
            return None
        except OSError as err:
            if err.errno == errno.ENAMETOOLONG:  # no object can have that name
                return None
            raise self._failed(key, path, err) from None
        except ObjectTooLarge:
            raise
        except Exception as err:  # every backend raises its own types; the client gets one clear error
            raise self._failed(key, path, err) from None

    def _bucket_is_missing(self) -> bool:
        """Whether a miss is the bucket's: a misspelt or deleted bucket would otherwise make every read a silent
        miss. Asked at the first miss, then every _BUCKET_RECHECK_S while it is missing, never once it was seen."""
        bucket, checked = self._bucket, self._bucket_missing_at
        if bucket is None:
            return False
        if checked is not None and time.monotonic() - checked < _BUCKET_RECHECK_S:
            return True
        try:
            _look_at_bucket(self._fs, bucket)
        except FileNotFoundError:
            self._bucket_missing_at = time.monotonic()
            return True
        except Exception as err:  # a 403 (it exists; this identity may not look at it) or a network error
            log.info("origin %s: looking at the bucket %r gave %s; it is taken to exist, and misses as the keys'",
                     self.description, bucket, type(err).__name__)
        self._bucket, self._bucket_missing_at = None, None
        return False

    def _failed(self, key: bytes, path: str, err: Exception) -> OriginError:
        if _denied(err):  # the likeliest cause on a new deployment: the bucket's read was never granted
            self._log("denied", f"{path}: {type(err).__name__}: {err} (grant the node's identity read on the "
                      "bucket: the stack's foresight:originBuckets, or its nodeIdentity output)")
            return OriginError(f"origin read failed for key {shown_key(key)}: access denied")
        self._log("failed", f"{path}: {type(err).__name__}: {err}")
        return OriginError(f"origin read failed for key {shown_key(key)}: {type(err).__name__}")

    def _log(self, what: str, detail: str) -> None:
        """The server's log gets the path and the backend's text, at most once a minute per origin and kind (from
        the loop and the read threads alike)."""
        with self._log_lock:
            self._unlogged[what] = self._unlogged.get(what, 0) + 1
            now = time.monotonic()
            if now - self._logged_at.get(what, -_LOG_EVERY_S) < _LOG_EVERY_S:
                return
            self._logged_at[what] = now
            count = self._unlogged.pop(what)
        log.warning("origin %s: %d read(s) %s since the last report, the latest: %s", self.description, count, what,
                    detail)

    async def fetch(self, key: bytes, limit: int = MAX_OBJECT_BYTES) -> bytes | None:
        """The object's bytes or None; the wait for a slot counts against the timeout."""
        relative = self.path_for(key)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._slots.run(self._share, self._read, key, relative, min(limit, MAX_OBJECT_BYTES),
                                             delay_s=self._latency_s)
        except TimeoutError:
            self._log("timed out", relative)
            raise OriginTimeout(f"origin timed out after {self._timeout_s:g}s reading key {shown_key(key)}") from None
        except RuntimeError:  # the pool was shut down: the service is stopping
            raise OriginError(f"origin closed before reading key {shown_key(key)}") from None


# The stores whose `info` of a bucket (container) asks about the bucket itself, so that FileNotFoundError means
# it does not exist: S3's HeadBucket, Azure's container properties, Cloud Storage's bucket GET (below).
_BUCKET_LOOKS = {"s3", "s3a", "gs", "gcs", "az", "abfs"}


def _denied(err: Exception) -> bool:
    """A 403, in each backend's own type: s3fs's PermissionError, gcsfs's OSError("Forbidden: ..."), azure-core's
    HttpResponseError with its status."""
    return (isinstance(err, PermissionError) or getattr(err, "status_code", None) == 403
            or (isinstance(err, OSError) and str(err).startswith("Forbidden")))


def _protocols(fs: Any) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def _look_at_bucket(fs: Any, bucket: str) -> None:
    """FileNotFoundError when `bucket` does not exist; a 403 says it does (S3 and Cloud Storage answer 404 for a
    bucket that does not exist, whoever asks)."""
    if _protocols(fs) & {"gs", "gcs"}:
        # gcsfs's `info` answers a 403 on the bucket (roles/storage.objectViewer has no storage.buckets.get) by
        # listing it, and an empty bucket by FileNotFoundError: the bucket's own GET tells them apart.
        fs.call("GET", f"b/{bucket}", json_out=True)
    else:
        fs.info(bucket)


def _check(url: str) -> None:
    """OriginError naming `url` unless it is an origin the service reads (service.origin.urls)."""
    try:
        check_origin_url(url)
    except BadOriginUrl as err:
        raise OriginError(f"origin {url} could not be opened: {err}") from None


def open_origin(url: str, tenant: str | None = None, **kwargs: Any) -> FsspecOrigin:
    """An origin rooted at `url`, or at `url/<tenant>` when it is a deployment-wide default. Raises OriginError for
    a URL the service does not read; opens nothing (the first read does)."""
    _check(url)
    root = url.rstrip("/") + (f"/{tenant}" if tenant else "")
    return FsspecOrigin(root, **kwargs)
