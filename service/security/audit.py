"""The audit log: append-only JSON lines, hash-chained, verifiable, and never holding a secret.

Every line is one event::

    {"action": "auth", "actor": "key:abcd...", "details": {...}, "hash": H, "key_id": ...,
     "outcome": "success",
     "prev": H_prev, "seq": 17, "source": "10.0.0.7:51234", "tenant": "acme", "time": "2026-...Z"}

`hash` is sha256 over the line's canonical JSON (sorted keys, compact, UTF-8) without `hash`; `prev` is the
hash of the line before. Each file opens with an `audit.open` line (whose `prev` links to the last line of
the previous file, or 64 zeros) and a rotated file ends with `audit.close`. `verify_lines` therefore finds
any edited, inserted, dropped or reordered line, and a file missing its first lines. Lines dropped from the
*end* of the live file leave a valid shorter chain: pass the head hash recorded elsewhere (`--head`) to
catch that, and see docs/security.md for why a plain hash chain does not stop someone who can rewrite the
whole file.

A failed write (disk full) is cut back off the file before the error is raised, so the chain stays verifiable
and the next line follows the last good one. A crash inside a rotation is finished by the next writer: a live
file that already ends with `audit.close` is moved aside then, and a new file whose predecessor was moved aside
before its `audit.open` was written links to that predecessor's `audit.close`. `verify_files` accepts the one
state a crash leaves that no writer has repaired yet: an empty live file after a closed one.

One writer per file: `AuditLog` holds an exclusive lock on ``<file>.writer.lock`` while open, and refuses to open a
log another process (or another `AuditLog`) is writing, since two writers would fork the chain. With `archive`,
rotated files are compressed and envelope-encrypted by a background thread (writers never wait for the KMS);
if the KMS fails then, the error is logged and the plaintext rotated file is encrypted at the next rotation or
open. `keep_files` deletes the oldest rotated files past a count, after an `audit.pruned` line names them; with a
`shipper` (audit_shipping), only those already copied off the machine.

Before anything is written, `scrub` refuses fields whose name or value looks like a credential (API keys,
Vault tokens, JWTs, private keys), so a caller's mistake fails loudly instead of leaking. Writing blocks
(a write and, per the fsync policy, an fsync): call `record` from a worker thread in async code.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

from service.security.background import WakeableThread
from service.security.envelope import MAGIC, EnvelopeCipher, TamperedEnvelope

if TYPE_CHECKING:
    from service.security.audit_shipping import AuditShipper

log = logging.getLogger(__name__)

GENESIS = "0" * 64
ARCHIVE_AAD = b"foresight-audit-archive"
_GZIP_MAGIC = b"\x1f\x8b"  # an archive's plaintext: gzip (6x smaller), or JSON lines (archives written before)
FsyncPolicy = Literal["always", "interval", "never"]

_SECRET_NAMES = re.compile(r"secret|passw|token|api_?key|private_?key|authorization|credential|cookie", re.I)
_SECRET_VALUES = re.compile(
    r"fsk_[a-z2-7]{12}_[A-Za-z0-9_-]{16,}"  # Foresight API keys
    r"|fsadm_[A-Za-z0-9_-]{20,}"  # Foresight admin tokens
    r"|\bhv[sbr]\.[A-Za-z0-9_-]{20,}|\b[sbr]\.[A-Za-z0-9_-]{24,}"  # Vault / OpenBao tokens (batch ones are long)
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\."  # JWTs
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
_REQUIRED = ("seq", "time", "action", "outcome", "actor", "prev", "hash")
_SHIP_RETRY_S = 60.0  # while files wait to be shipped, the shipper retries this often (else at each rotation)
# close() waits this long for the shipper's last pass. A destination that hangs (a partition: botocore alone waits
# 60 s per try) must not hold the shutdown past the grace systemd and Kubernetes give it (stacks/shutdown.py), and
# lose the final fsync to their SIGKILL; what it did not ship stays on disk, and the next start ships it.
SHIP_ON_CLOSE_S = 10.0
# An `audit.pruned` line names at most this many files (about 9 KiB), so a prune of thousands (keep_files lowered)
# writes several ordinary lines rather than one of hundreds of KiB.
PRUNED_NAMES_PER_LINE = 256


class AuditSecretError(ValueError):
    """A field looked like a secret; the message names the field, never the value."""


class AuditLogError(RuntimeError):
    """The audit log cannot be opened or appended to safely."""


class EncryptedArchive(AuditLogError):
    """An envelope-encrypted rotated file was given to verify without the cipher that can decrypt it."""


def canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def line_hash(record: Mapping[str, Any]) -> str:
    """The hash of a record: sha256 over its canonical JSON without the `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def scrub(fields: Mapping[str, Any], path: str = "") -> None:
    """Raise AuditSecretError if any field name or string value (at any depth) looks like a credential."""
    for name, value in fields.items():
        where = f"{path}.{name}" if path else str(name)
        if _SECRET_NAMES.search(str(name)):
            raise AuditSecretError(f"audit field {where!r} is named like a secret; audit lines never carry secrets")
        _scrub_value(value, where)


def _scrub_value(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        scrub(value, where)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _scrub_value(item, f"{where}[{i}]")
    elif isinstance(value, str) and _SECRET_VALUES.search(value):
        raise AuditSecretError(f"audit field {where!r} holds a value shaped like a credential; refusing to log it")
    elif not isinstance(value, str | int | float | bool | type(None) | Mapping | list | tuple):
        raise AuditSecretError(f"audit field {where!r} has type {type(value).__name__}; use JSON types")


class AuditLog:
    """Appends hash-chained lines to `path` (mode 0600). Thread-safe.

    fsync: "always" syncs every line (strongest, a disk flush per event); "interval" syncs at most every
    `fsync_interval` seconds and on close (a crash of the machine may lose the last interval; a crash of
    the process loses nothing, the kernel has the lines); "never" leaves it to the OS.
    `rotate_bytes`: rotate when the file grows past this size; `archive`: compress and envelope-encrypt rotated
    files (in a background thread);
    `keep_files`: delete the oldest rotated files past this many, at each rotation and open (None keeps them all);
    `shipper`: copy finished files off the machine (in the background), and prune only copied ones.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        rotate_bytes: int | None = None,
        archive: EnvelopeCipher | None = None,
        keep_files: int | None = None,
        shipper: AuditShipper | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.fsync, self.fsync_interval = fsync, fsync_interval
        if keep_files is not None and keep_files < 1:
            raise ValueError(f"keep_files must be at least 1 (None keeps every rotated file), not {keep_files}")
        self.rotate_bytes, self.archive, self.keep_files, self.clock = rotate_bytes, archive, keep_files, clock
        self.shipper = shipper
        self.unshipped = 0  # finished files the last shipping pass left behind (foresight_audit_unshipped_files)
        self._lock = threading.Lock()
        self._archiving = threading.Lock()  # one archive or prune pass at a time: the archiver's, rotate()'s, close()'s
        self._shipping = threading.Lock()  # apart from _archiving: a hung copy must not hold up an archive
        # Compressing and encrypting 64 MiB (and the KMS's round trip) under the lock that every login waits for
        # held them all for about 300 ms: rotated files are archived, shipped and pruned in the background.
        self._archiver = WakeableThread("audit-archiver", self._archive_in_background)
        self._ship_worker = None if shipper is None else WakeableThread(
            "audit-shipper", self._ship_and_prune, lambda: _SHIP_RETRY_S if self.unshipped else None)
        self._last_sync = time.monotonic()
        self._fd = -1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_exclusively(self.path)
        try:
            last, recovered = _tail_state(self.path)
            previous = None
            if last is not None and last["action"] == "audit.close":  # died after closing it, before moving it
                previous = self._rotated_name()
                os.replace(self.path, previous)
            elif last is None:  # new, or died after moving the closed file aside, before this one's audit.open
                previous, last = _closed_predecessor(self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
            self._seq, self._head = (int(last["seq"]), str(last["hash"])) if last is not None else (-1, GENESIS)
            if last is None or previous is not None:
                details: dict[str, Any] = {"previous_file": previous.name if previous else None}
                if previous is not None:
                    details["completed_interrupted_rotation"] = True
                self._append("audit.open", "success", "system", details=details)
            elif recovered:
                self._append("audit.recovered", "success", "system", details={"discarded_bytes": recovered})
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
            os.close(self._lock_fd)
            raise
        self._archive()  # a KMS failure's leftovers and a lowered keep_files, at a start too
        self._prune()
        if self._ship_worker is not None:
            self._ship_worker.wake()  # what an earlier run left unshipped, without holding up the start on the bucket

    @property
    def head(self) -> str:
        """The hash of the last line written: record it elsewhere to detect truncation later."""
        return self._head

    def record(
        self,
        action: str,
        *,
        actor: str,
        outcome: Literal["success", "failure"] = "success",
        tenant: str | None = None,
        key_id: str | None = None,
        source: str | None = None,
        **details: Any,
    ) -> str:
        """Append one event (who: `actor`, what: `action`/`outcome`, from: `source`); returns its hash."""
        fields = {"action": action, "actor": actor, "tenant": tenant, "key_id": key_id, "source": source}
        scrub(fields)
        scrub(details, "details")
        with self._lock:
            digest = self._append(action, outcome, actor, tenant=tenant, key_id=key_id, source=source, details=details)
            if self.rotate_bytes is not None and self._size >= self.rotate_bytes:
                self._rotate_locked()
                self._archiver.wake()
            return digest

    def auth_success(self, *, tenant: str, key_id: str, source: str | None, listener: str) -> str:
        return self.record(
            "auth", actor=f"key:{key_id}", tenant=tenant, key_id=key_id, source=source, listener=listener
        )

    def auth_failure(self, *, key_id: str | None, source: str | None, listener: str, reason: str) -> str:
        """A refused credential: name its public key id when it has one, never the presented string."""
        return self.record(
            "auth",
            actor=f"key:{key_id}" if key_id else "anonymous",
            outcome="failure",
            key_id=key_id,
            source=source,
            listener=listener,
            reason=reason,
        )

    def rotate(self) -> Path:
        """Close this file with `audit.close`, move it aside (compressed and encrypted if `archive`, before this
        returns), start a new one."""
        with self._lock:
            rotated = self._rotate_locked()
        archived = self._archive()
        self._ship_and_prune()
        return archived.get(rotated, rotated)

    def close(self) -> None:
        """Finish archiving what was rotated, and shipping it for up to SHIP_ON_CLOSE_S: the workers' last passes.
        Then close the file and its lock, and archive a rotation that came in meanwhile (the next start ships it)."""
        self._archiver.close()  # first: its last pass wakes the shipper for the last archive
        if self._ship_worker is not None and not self._ship_worker.close(SHIP_ON_CLOSE_S):
            assert self.shipper is not None
            log.warning("audit log %s: shipping to %s did not finish within %.0f s of the shutdown; the files not "
                        "shipped stay here and the next start ships them", self.path, self.shipper.destination,
                        SHIP_ON_CLOSE_S)
        with self._lock:
            if self._fd >= 0:
                log.info("audit log %s closed at seq %d, head %s (`audit verify --head` catches lines dropped "
                         "after it)", self.path, self._seq, self._head)
                fd, self._fd = self._fd, -1
                try:
                    if self.fsync != "never":
                        os.fsync(fd)
                finally:
                    os.close(fd)
        with self._archiving:
            self._archive_leftovers()
        with self._lock:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the writer's lock
                self._lock_fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _append(self, action: str, outcome: str, actor: str, **fields: Any) -> str:
        if self._fd < 0:
            raise AuditLogError(f"audit log {self.path} is closed")
        when = dt.datetime.fromtimestamp(self.clock(), dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        record: dict[str, Any] = {
            "seq": self._seq + 1,
            "time": when,
            "action": action,
            "outcome": outcome,
            "actor": actor,
            "tenant": None,
            "key_id": None,
            "source": None,
            "details": {},
            **fields,
            "prev": self._head,
        }
        record["hash"] = line_hash(record)
        data = canonical(record) + b"\n"
        self._write_line(data)
        self._seq, self._head, self._size = record["seq"], record["hash"], self._size + len(data)
        now = time.monotonic()
        if self.fsync == "always" or (self.fsync == "interval" and now - self._last_sync >= self.fsync_interval):
            os.fsync(self._fd)
            self._last_sync = now
        return str(record["hash"])

    def _write_line(self, data: bytes) -> None:
        """Write all of `data`, or none of it: a partial line (disk full) would break the chain for good."""
        done = 0
        try:
            while done < len(data):
                written = os.write(self._fd, data[done:])
                if written == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += written
        except OSError as err:
            if done:
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError as cut:  # the next writer's open trims the torn line; until then, append nothing
                    fd, self._fd = self._fd, -1
                    os.close(fd)
                    raise AuditLogError(
                        f"audit log {self.path}: a line was only partly written ({err.strerror}) and could not be "
                        f"cut off ({cut.strerror}); the log is closed, and reopening it removes the partial line"
                    ) from err
            raise AuditLogError(
                f"audit log {self.path}: the event was not recorded: {err.strerror or err}"
            ) from err

    def _rotated_name(self) -> Path:
        stamp = dt.datetime.fromtimestamp(self.clock(), dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")

    def _rotate_locked(self) -> Path:
        rotated = self._rotated_name()
        self._append("audit.close", "success", "system", details={"next_file": self.path.name})
        fd, self._fd = self._fd, -1  # never closed twice, whatever fails below (the number may be reused)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.path, rotated)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._size = 0
        self._append("audit.open", "success", "system", details={"previous_file": rotated.name})
        log.info("audit log %s rotated to %s at head %s", self.path, rotated.name, self._head)
        return rotated

    def _archive_in_background(self) -> None:
        self._archive()
        if self._ship_worker is not None:
            self._ship_worker.wake()  # it prunes once the new archive is shipped
        else:
            self._prune()

    def _archive(self) -> dict[Path, Path]:
        with self._archiving:
            return self._archive_leftovers()

    def _ship_and_prune(self) -> None:
        if self.shipper is not None:
            with self._shipping:
                self.unshipped = len(self.shipper.ship(_rotated_files(self.path, archived=self.archive is not None)))
        self._prune()

    def _prune(self) -> None:
        with self._archiving, self._lock:
            if self._fd >= 0:  # a pass that outlived close() (a hung copy) prunes nothing: the file is closed
                self._prune_locked()

    def _prune_locked(self) -> None:
        """Delete the oldest rotated files past `keep_files`, named first in `audit.pruned` lines (at most
        PRUNED_NAMES_PER_LINE each), so that the chain itself says which files went on purpose. What remains still
        verifies: `verify_files` starts from its first file's own link to the file before."""
        if self.keep_files is None:
            return
        rotated = sorted(_rotated_files(self.path) + _rotated_files(self.path, archived=True), key=lambda p: p.name)
        excess = rotated[:-self.keep_files]
        details: dict[str, Any] = {"keep_files": self.keep_files}
        if self.shipper is not None:
            held = [p for p in excess if not self.shipper.has(p)]
            if held:
                log.warning("audit log %s: %d rotated files past keep_files=%d are kept until they are shipped to %s",
                            self.path, len(held), self.keep_files, self.shipper.destination)
            excess = [p for p in excess if self.shipper.has(p)]
            details["shipped_to"] = self.shipper.destination
        if not excess:
            return
        names = [p.name for p in excess]
        for first in range(0, len(names), PRUNED_NAMES_PER_LINE):  # a line each so many: lines stay short
            self._append("audit.pruned", "success", "system",
                         details={"files": names[first:first + PRUNED_NAMES_PER_LINE], **details})
        for path in excess:
            try:
                path.unlink()
            except OSError as err:  # the next rotation tries again (and records it again)
                log.error("audit file %s not deleted (%s); retried at the next rotation", path, err.strerror or err)

    def _archive_leftovers(self) -> dict[Path, Path]:
        """Compress and encrypt every plaintext rotated file of this log (this rotation's, and any an earlier KMS
        failure left).

        A KMS failure is logged, not raised: the event that triggered the rotation is already written, and the
        file stays plaintext only until the next rotation or open retries it. Returns plaintext -> archive.
        """
        if self.archive is None:
            return {}
        done: dict[Path, Path] = {}
        for rotated in _rotated_files(self.path):
            encrypted = rotated.with_name(rotated.name + ".fse")
            compressed = rotated.with_name(rotated.name + ".gz.tmp")
            try:
                with rotated.open("rb") as src, gzip.GzipFile(compressed, "wb", compresslevel=6, mtime=0) as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
                self.archive.encrypt_file(compressed, encrypted, ARCHIVE_AAD)
            except Exception as err:  # the KMS or the disk failing must not fail the caller's event
                log.error("audit archive %s not encrypted (%s: %s); retried at the next rotation or open",
                          rotated, type(err).__name__, err)
                continue
            finally:
                compressed.unlink(missing_ok=True)
            rotated.unlink()
            done[rotated] = encrypted
        return done


def lock_exclusively(path: Path) -> int:
    """Hold ``<path>.writer.lock`` exclusively (released on close or exit), or refuse: two writers fork the chain.

    Not ``<path>.lock``: callers that serialize whole open-append-close cycles (onboarding's CLI) hold that one.
    """
    lock_path = path.with_name(path.name + ".writer.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AuditLogError(
            f"audit log {path} is already open for writing (lock {lock_path} is held by another process or "
            "AuditLog); two writers would fork its hash chain"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _rotated_files(path: Path, archived: bool = False) -> list[Path]:
    """The plaintext (or `archived`) rotated files of the log at `path`, oldest first (names sort by time)."""
    ending = re.escape(path.suffix + (".fse" if archived else ""))
    pattern = re.compile(re.escape(path.stem) + r"\.\d{8}T\d{12}Z" + ending)
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def _closed_predecessor(path: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """For an empty or missing live file: the newest rotated file and its `audit.close` line, when a rotation
    moved it aside and died before the live file's `audit.open` (an archived one is a finished rotation's)."""
    rotated = _rotated_files(path)
    if not rotated:
        return None, None
    archives = _rotated_files(path, archived=True)
    if archives and archives[-1].name.removesuffix(".fse") > rotated[-1].name:
        return None, None
    last = _last_record(rotated[-1])
    details = last.get("details") if last is not None else None
    if last is None or last.get("action") != "audit.close" or not isinstance(details, dict) \
            or details.get("next_file") != path.name:
        return None, None
    return rotated[-1], last


_TAIL_BYTES = 65536  # read from the end this many bytes at a time, until the last line's start is in them


def _tail(file: BinaryIO, size: int) -> bytes:
    """The end of a file of `size` bytes, from the start of its last complete line (the one before a torn one)
    or further: a line has no length limit (an `audit.pruned` line written before they were split named every
    pruned file), so this reads backwards past as many blocks as it takes, up to the whole file."""
    start, tail = size, b""
    while start > 0:
        step = min(start, max(_TAIL_BYTES, len(tail)))  # doubling: a long line costs a few reads, not one a block
        start -= step
        file.seek(start)
        tail = file.read(step) + tail
        ends = tail.rfind(b"\n")  # the last complete line's newline (a torn line has none)
        if ends >= 0 and tail.rfind(b"\n", 0, ends) >= 0:
            break
    return tail


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last line of a rotated file, if it is a verified record."""
    with path.open("rb") as file:
        return _verified_last(_tail(file, path.stat().st_size))


def _verified_last(tail: bytes) -> dict[str, Any] | None:
    """The last line of `tail` as a record, if it is one whose hash matches its content."""
    lines = tail.splitlines()
    try:
        last = json.loads(lines[-1])
    except (IndexError, ValueError):
        return None
    if isinstance(last, dict) and last.get("hash") == line_hash(last) and isinstance(last.get("action"), str) \
            and isinstance(last.get("seq"), int):
        return last
    return None


def _tail_state(path: Path) -> tuple[dict[str, Any] | None, int]:
    """(last record, torn bytes removed) of an existing log; (None, torn) for a new or empty one."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None, 0
    if size == 0:
        return None, 0
    with path.open("rb+") as file:
        tail = _tail(file, size)
        torn = 0
        if not tail.endswith(b"\n"):  # the process died mid-write: that line was never acknowledged
            torn = len(tail) - (tail.rfind(b"\n") + 1)
            file.truncate(size - torn)
            tail = tail[: len(tail) - torn]
            log.warning("audit log %s ended in a torn line; removed %d bytes", path, torn)
    if torn == size:  # died writing the file's first line: as good as new
        return None, torn
    last = _verified_last(tail)
    if last is None:
        raise AuditLogError(
            f"audit log {path} ends in a line that does not verify; run `foresight audit verify {path}` "
            "and move the file aside before restarting"
        )
    return last, torn


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    lines: int  # lines checked
    head: str  # hash of the last good line
    closed: bool  # ended with audit.close (a complete rotated file)
    bad_line: int | None = None  # 1-based
    reason: str | None = None


def verify_lines(lines: Iterable[bytes], *, expect_prev: str = GENESIS, expect_head: str | None = None) -> Verdict:
    """Check a file's lines: each hash, each link, the open line, the close line, and optionally the head.

    `expect_head` is a head recorded elsewhere earlier: the log has grown since, so it passes when any verified
    line has that hash and fails only when none does (lines dropped from the end, back past it).
    """
    verdict, seen = _verify_lines(lines, expect_prev, expect_head)
    if verdict.ok and expect_head is not None and not seen:
        return _no_head(verdict)
    return verdict


def _no_head(verdict: Verdict) -> Verdict:
    reason = "chain never reaches the expected head (lines dropped from the end)"
    return Verdict(False, verdict.lines, verdict.head, verdict.closed, verdict.lines + 1, reason)


def _verify_lines(lines: Iterable[bytes], expect_prev: str, watch: str | None) -> tuple[Verdict, bool]:
    """The verdict without a head check, and whether a verified line's hash was `watch`."""
    head, prev_seq, closed, count, seen = expect_prev, None, False, 0, False

    def bad(number: int, reason: str) -> tuple[Verdict, bool]:
        return Verdict(False, number - 1, head, closed, number, reason), seen

    for number, raw in enumerate(lines, start=1):
        count = number
        if not raw.endswith(b"\n"):
            return bad(number, "line is incomplete (no newline): a torn or truncated write")
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or any(k not in record for k in _REQUIRED):
                raise ValueError
        except ValueError:
            return bad(number, "not an audit record (invalid JSON or missing fields)")
        if closed:
            return bad(number, "line after audit.close (appended to a closed file)")
        if record["hash"] != line_hash(record):
            return bad(number, "contents do not match the line's hash (line edited)")
        if number == 1 and record["action"] != "audit.open":
            return bad(number, "file does not start with audit.open (lines dropped from the start)")
        if number > 1 and record["action"] == "audit.open":
            return bad(number, "audit.open in the middle of a file (files spliced)")
        if record["prev"] != head:
            what = "the previous file's last line" if number == 1 else f"line {number - 1}"
            return bad(number, f"does not follow {what} (a line was dropped, inserted or reordered)")
        if prev_seq is not None and record["seq"] != prev_seq + 1:
            return bad(number, f"sequence jumps from {prev_seq} to {record['seq']} (dropped or reordered)")
        head, prev_seq, closed = record["hash"], record["seq"], record["action"] == "audit.close"
        seen = seen or head == watch
    if count == 0:
        return Verdict(False, 0, head, False, 1, "empty file"), seen
    return Verdict(True, count, head, closed), seen


def verify_files(
    paths: Iterable[Path], *, expect_head: str | None = None, cipher: EnvelopeCipher | None = None
) -> tuple[Path | None, Verdict]:
    """Verify files in chain order (oldest first): the first failing file (or None) and the verdict.

    Every file but the last must end with audit.close; each file must link to the one before it. The last may
    be empty after a closed file (a rotation that died before the new file's first line: its next writer adds
    that line). A good
    verdict counts the lines of all files; a bad one numbers lines within the failing file. Archived (encrypted)
    rotated files are decrypted with `cipher`: EncryptedArchive without one; the KMS's own errors (unreachable,
    another provider) are raised as they are, since they say nothing about the file.
    """
    files = list(paths)
    prev, total, seen = GENESIS, 0, False
    verdict = Verdict(False, 0, GENESIS, False, 1, "no files")
    for index, path in enumerate(files):
        last = index == len(files) - 1
        try:
            with _plaintext(path, cipher) as file:
                first = file.readline()
                if not first and last and index:  # after a closed file: a rotation died before its audit.open
                    verdict, seen_here = Verdict(True, 0, prev, False), False
                else:
                    start = prev if index else _claimed_prev(first)
                    verdict, seen_here = _verify_lines(itertools.chain([first], file) if first else (), start,
                                                       expect_head)
        except TamperedEnvelope as err:
            reason = f"encrypted archive fails authentication: altered, or not encrypted with the key given ({err})"
            verdict, seen_here = Verdict(False, 0, prev, False, 1, reason), False
        seen = seen or seen_here
        if verdict.ok and not last and not verdict.closed:
            reason = "file does not end with audit.close but another file follows it"
            verdict = Verdict(False, verdict.lines, verdict.head, False, verdict.lines + 1, reason)
        if verdict.ok and last and expect_head is not None and not seen:
            verdict = _no_head(verdict)
        if not verdict.ok:
            return path, verdict
        prev, total = verdict.head, total + verdict.lines
    return None, replace(verdict, lines=total)


def write_plaintext(path: Path, out: BinaryIO, cipher: EnvelopeCipher | None) -> None:
    """Copy a file's lines to `out`: a live or rotated file as it is, an archive decrypted and decompressed (what
    `foresight audit show` prints). TamperedEnvelope if an archive fails authentication."""
    with _plaintext(path, cipher) as lines:
        shutil.copyfileobj(lines, out, 1 << 20)


def is_archive(path: Path) -> bool:
    """Whether `path` is an envelope-encrypted rotated file (what `archive=` leaves), by its first bytes."""
    with path.open("rb") as file:
        return file.read(len(MAGIC)) == MAGIC


@contextmanager
def _plaintext(path: Path, cipher: EnvelopeCipher | None) -> Iterator[BinaryIO]:
    """The file's lines: the file itself, or an archive decrypted in memory (a rotated file is about rotate_bytes)."""
    if not is_archive(path):
        with path.open("rb") as file:
            yield file
        return
    if cipher is None:
        raise EncryptedArchive(f"{path} is an encrypted audit archive: verifying it needs the KMS that encrypted it")
    plain = io.BytesIO()
    with path.open("rb") as file:
        cipher.decrypt_stream(file, plain, ARCHIVE_AAD)
    plain.seek(0)
    if plain.getbuffer()[:2] == _GZIP_MAGIC:
        with gzip.GzipFile(fileobj=plain) as lines:
            yield cast(BinaryIO, lines)
        return
    yield plain


def _claimed_prev(first_line: bytes) -> str:
    """The first file of a run links to whatever came before (not given): accept its own `prev` claim."""
    try:
        return str(json.loads(first_line).get("prev", GENESIS))
    except (ValueError, AttributeError):
        return GENESIS
