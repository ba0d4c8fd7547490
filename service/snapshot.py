"""Warm restart: tenants' entries written on shutdown and read back on start, always envelope-encrypted.

The snapshot is one envelope (a fresh AES-256-GCM data key wrapped by the KMS) bound to its purpose by
associated data, written atomically with mode 0600 (`atomic_output`: random temporary name, fsync, rename, fsync of
the directory). Restoring moves it to `snapshot.fse.restoring`; the service deletes that once it serves
(`forget_restored`), so a later crash can never resurrect stale data, and puts it back if the start fails
(`put_back`), so a port in use loses nothing. Each of these renames and deletions is made durable (the directory is
fsynced). A snapshot that fails authentication is moved aside and the service starts cold: it never serves bytes it
cannot prove it wrote.

A KMS that is unavailable at start (unreachable, throttling, 5xx) is asked again a few times, within about ten
seconds. One that cannot open the snapshot after that (or at all: a retired key version, access denied, another
provider configured) leaves the file where it is and this run starts cold. The stop of this run then moves the kept
file aside (`snapshot.fse.unrestored-<UTC time>`) before writing its own, never over it: the operator fixes the cause
(`foresight kms rewrap` finds the moved file too) and, if its entries matter, merges them into the snapshot before
the next start (`foresight snapshot merge`: this run's values win). It is never restored by itself, since it is
older than what this run served.

A tenant missing from the tenant list at start (a damaged Vault record, a tenants file being edited) gets none of
its section back; the section is written, encrypted like the snapshot, to `snapshot.unclaimed-<UTC time>.fse` once
the service serves (until then it is pending, and a start that fails drops the pending copy: the snapshot put back
still holds it). Later snapshots never carry it, so a deleted tenant's entries do not live on in the cache;
`foresight snapshot merge` puts them back once the tenant is.

Saving and restoring stream: neither holds a copy of the entries' bytes. On the event loop `capture` only lists each
tenant's live entries, references to their keys and values (one consistent moment: nothing else touches the stores
meanwhile; about a second for a million entries). A thread (`write`) encodes them a batch at a time straight into
the envelope's segments and the temporary file. Restore decrypts segment by segment and decodes the entries as it
goes, but applies none until the last segment has authenticated: a tampered or truncated file changes nothing.

Each tenant's entries are written coldest first, in its eviction policy's order. Restore walks them from the
hottest end and keeps what its budget holds now, so a budget lowered while the service was down keeps the hot
entries, and restoring evicts nothing. (Older snapshots, in insertion order, read the same way.)

Each tenant's section names its incarnation (TenantSpec.incarnation), and restore skips a section whose tenant is
now another one of that name (deleted and created again while the service was down). Sections of snapshots
written before incarnations (`FSNP1`) have none, and restore only into tenants that have none either (those of a
tenants file); a Vault tenant starts cold once, after the upgrade.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from service.cache import TenantRegistry
from service.security.envelope import (
    EnvelopeCipher,
    EnvelopeFormatError,
    TamperedEnvelope,
    atomic_output,
    fsync_directory,
)
from service.security.kms.base import KmsUnavailable
from service.store import MemoryStore, now_ms

log = logging.getLogger(__name__)

AAD = b"foresight-snapshot-v1"
FILENAME = "snapshot.fse"
RESTORING = FILENAME + ".restoring"  # restored into memory, kept until the service serves
UNRESTORED = FILENAME + ".unrestored-{}"  # UTC time: one the KMS could not open at start, moved aside at the stop
UNCLAIMED = "snapshot.unclaimed-{}.fse"  # UTC time: the sections of tenants missing from the tenant list at start
UNCLAIMED_PENDING = "snapshot.unclaimed.pending"  # those sections until the service serves
KMS_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)  # between the attempts to open the snapshot while the KMS is unavailable
KMS_RETRY_WITHIN_S = 10.0  # no attempt starts later than this after the first: a KMS outage must not hold the start
_MAGIC = b"FSNP2"
_MAGIC_V1 = b"FSNP1"  # before incarnations: read, never written
_TENANT = struct.Struct(">HBI")  # name length, incarnation length (0: none), entry count
_TENANT_V1 = struct.Struct(">HI")  # name length, entry count
_ENTRY = struct.Struct(">IIq")  # key length, value length, deadline (ms, 0 = none)
_BATCH_BYTES = 1 << 20  # entries are encoded this much at a time into the envelope

SavedEntry = tuple[bytes, bytes, int]  # key, value, deadline


class SavedTenant(NamedTuple):
    incarnation: str | None
    entries: list[SavedEntry]  # coldest first


class SnapshotFormatError(ValueError):
    """The snapshot authenticated, but its plaintext is not a Foresight snapshot's layout."""


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def capture(tenants: TenantRegistry) -> dict[str, SavedTenant]:
    """Every tenant's live entries, coldest first, as references (no value is copied): the part of a snapshot that
    must run where nothing writes meanwhile. Each live entry is read exactly once: a key that expires meanwhile is
    simply left out, never half-counted."""
    sections = {}
    for tenant in tenants:
        store = tenant.store
        live = []
        for key in store.coldest_first():  # a copy: reading an expired entry removes it from the store
            entry = store.entry(key)
            if entry is not None and isinstance(key, bytes):
                live.append((key, entry.value, entry.expires_at))
        sections[tenant.name] = SavedTenant(tenant.incarnation, live)
    return sections


def _encode_to(out: _Writable, sections: Iterable[tuple[str, SavedTenant]]) -> None:
    """Write the snapshot's plaintext to `out` a batch at a time; a value of a batch's size or more goes alone, so
    nothing is copied whole."""
    parts, batched = [_MAGIC], 0
    for name, (incarnation, entries) in sections:
        encoded_name, encoded_incarnation = name.encode(), (incarnation or "").encode()
        parts += (_TENANT.pack(len(encoded_name), len(encoded_incarnation), len(entries)), encoded_name,
                  encoded_incarnation)
        for key, value, deadline in entries:
            parts += (_ENTRY.pack(len(key), len(value), deadline), key)
            if len(value) >= _BATCH_BYTES:
                out.write(b"".join(parts))
                out.write(value)
                parts, batched = [], 0
                continue
            parts.append(value)
            batched += len(key) + len(value)
            if batched >= _BATCH_BYTES:
                out.write(b"".join(parts))
                parts, batched = [], 0
    out.write(b"".join(parts))


class _Plaintext:
    """Exact reads across the chunks of a stream (the envelope's segments), holding about one chunk."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer, self._pos = b"", 0

    def has(self, size: int) -> bool:
        """Whether `size` more bytes follow (reading chunks as needed)."""
        held = len(self._buffer) - self._pos
        if held >= size:
            return True
        parts = [self._buffer[self._pos:]]
        for chunk in self._chunks:
            parts.append(chunk)
            held += len(chunk)
            if held >= size:
                break
        self._buffer, self._pos = b"".join(parts), 0
        return held >= size

    def take(self, size: int) -> tuple[bytes, int]:
        """The next `size` bytes, as a buffer and where in it they start (slicing once per entry is cheaper)."""
        pos = self._pos
        if len(self._buffer) - pos < size:
            if not self.has(size):
                raise SnapshotFormatError("snapshot is truncated")
            pos = 0
        self._pos = pos + size
        return self._buffer, pos

    def read(self, size: int) -> bytes:
        buffer, pos = self.take(size)
        return buffer[pos:pos + size]


def _decode_stream(chunks: Iterator[bytes]) -> dict[str, SavedTenant]:
    """Each tenant's section by name. Returns only once `chunks` is exhausted (for an envelope: its last segment
    authenticated)."""
    plaintext = _Plaintext(chunks)
    magic = plaintext.read(len(_MAGIC)) if plaintext.has(len(_MAGIC)) else b""
    if magic not in (_MAGIC, _MAGIC_V1):
        raise SnapshotFormatError("not a Foresight snapshot")
    header = _TENANT if magic == _MAGIC else _TENANT_V1
    result: dict[str, SavedTenant] = {}
    try:
        while plaintext.has(1):
            if header is _TENANT:
                name_len, incarnation_len, count = _TENANT.unpack(plaintext.read(_TENANT.size))
            else:
                (name_len, count), incarnation_len = _TENANT_V1.unpack(plaintext.read(_TENANT_V1.size)), 0
            name = plaintext.read(name_len).decode()
            incarnation = plaintext.read(incarnation_len).decode() or None
            entries: list[SavedEntry] = []
            result[name] = SavedTenant(incarnation, entries)
            for _ in range(count):
                buffer, pos = plaintext.take(_ENTRY.size)
                key_len, value_len, deadline = _ENTRY.unpack_from(buffer, pos)
                buffer, pos = plaintext.take(key_len + value_len)
                end = pos + key_len
                entries.append((buffer[pos:end], buffer[end:end + value_len], deadline))
    except UnicodeDecodeError as err:
        raise SnapshotFormatError(f"a tenant's name is not UTF-8 ({err})") from None
    return result


def decode(data: bytes) -> dict[str, SavedTenant]:
    """Each tenant's section by name; a snapshot of before incarnations (`FSNP1`) reads with none."""
    return _decode_stream(iter((data,)))


def save(tenants: TenantRegistry, data_dir: Path, cipher: EnvelopeCipher) -> Path:
    """Capture, encode, encrypt and write every tenant's live entries in one call, for callers with no event loop that
    could write meanwhile. Blocks (KMS call, disk)."""
    return write(capture(tenants), data_dir, cipher)


def write(sections: Mapping[str, SavedTenant], data_dir: Path, cipher: EnvelopeCipher) -> Path:
    """Encode and encrypt captured entries, streaming, and write them atomically and durably, mode 0600. A
    snapshot still there is one this run could not restore: it is moved aside first, never written over (nor left
    for a later start to restore values older than this run's, should this write fail). Blocks (KMS call, disk)."""
    path = data_dir / FILENAME
    data_dir.mkdir(parents=True, exist_ok=True)
    _set_aside_unrestored(data_dir)
    _write_envelope(path, sections, cipher)
    return path


def _write_envelope(path: Path, sections: Mapping[str, SavedTenant], cipher: EnvelopeCipher) -> None:
    with atomic_output(path) as out, cipher.encrypting(out, AAD) as plaintext:
        _encode_to(plaintext, sections.items())


def _set_aside_unrestored(data_dir: Path) -> None:
    path = data_dir / FILENAME
    if not path.exists():
        return
    aside = _timestamped(data_dir, UNRESTORED)
    try:
        os.replace(path, aside)
    except OSError as err:
        log.error("snapshot %s, which this run could not restore, could not be moved aside (%s): move it out of %s "
                  "before the next start, or that start restores values older than this run's", path, err, data_dir)
        raise
    fsync_directory(data_dir)
    log.warning("snapshot %s, which this run could not restore at start, moved to %s so that this stop does not "
                "write over it; its values are older than this run's. With the service stopped, fix what kept it "
                "from opening (a retired key version: allow it again and run `foresight kms rewrap`, which rewraps "
                "this file too); then, before the next start, `foresight snapshot merge %s` if its entries matter "
                "(keys this run holds keep its values; ones it deleted come back), or delete it", path, aside, aside)


def _timestamped(data_dir: Path, pattern: str) -> Path:
    """`pattern` with the UTC time, made unique in `data_dir` (two in one second: -2, -3, ...)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path, n = data_dir / pattern.format(stamp), 2
    while path.exists():
        path, n = data_dir / pattern.format(f"{stamp}-{n}"), n + 1
    return path


def _fitting(store: MemoryStore, entries: list[SavedEntry]) -> tuple[list[SavedEntry], int]:
    """The entries (coldest first) that fit the store's free budget, taken from the hottest end, coldest first
    again; and how many did not fit."""
    room = store.budget - store.used
    kept: list[SavedEntry] = []
    for key, value, deadline in reversed(entries):
        size = store.size_of(key, value)
        if size <= room:
            room -= size
            kept.append((key, value, deadline))
    kept.reverse()
    return kept, len(entries) - len(kept)


def restore(tenants: TenantRegistry, data_dir: Path, cipher: EnvelopeCipher) -> int:
    """Load a snapshot into the tenants that still exist; returns the entries resident afterwards. The file moves
    to RESTORING, for `forget_restored` or `put_back` to settle once the start has succeeded or failed (one left
    there by a start that was killed is restored again). The sections of tenants not in `tenants` are pending, for
    `forget_restored` to keep aside. Blocks (up to about ten seconds more while the KMS is unavailable)."""
    path, restoring = data_dir / FILENAME, data_dir / RESTORING
    if path.exists():
        os.replace(path, restoring)
        fsync_directory(data_dir)
    elif not restoring.exists():
        return 0
    try:
        with restoring.open("rb") as file:
            segments = _decrypting(file, cipher)
            snapshot = _decode_stream(segments)  # nothing is applied before the last segment authenticated
    except (TamperedEnvelope, EnvelopeFormatError, SnapshotFormatError) as err:
        return _reject(data_dir, err)
    except Exception as err:  # the KMS (or the disk, or a KMS setting that names another provider) cannot open it
        # now: not the file's fault, so it waits, and the stop of this run moves it aside rather than write over it
        put_back(data_dir)
        log.error("snapshot %s not restored; starting cold: %s: %s. The file stays for now and is moved aside at the "
                  "next stop (to %s), so the snapshot that stop writes does not replace it; the warning then says "
                  "how to restore it", path, type(err).__name__, err, UNRESTORED.format("<UTC time>"))
        return 0
    restored = 0
    now = now_ms()
    unclaimed: dict[str, SavedTenant] = {}
    for name in list(snapshot):
        incarnation, entries = snapshot.pop(name)  # each section's staging is let go once it is applied
        live = [entry for entry in entries if not entry[2] or entry[2] > now]
        tenant = tenants.get(name)
        if tenant is None:  # deleted while we were down, or its record could not be read at this start
            log.warning("snapshot: tenant %s is not in the tenant list; its %d entries are not restored, and are "
                        "written aside once the service serves", name, len(live))
            if live:
                unclaimed[name] = SavedTenant(incarnation, live)
            continue
        if tenant.incarnation != incarnation:
            log.warning("snapshot: skipped %d entries of tenant %s: they were an earlier tenant's of that name",
                        len(entries), name)
            continue
        kept, skipped = _fitting(tenant.store, live)
        for key, value, deadline in kept:
            tenant.store.set(key, value, deadline)
        restored += sum(1 for key, _value, _deadline in kept if key in tenant.store)
        if skipped:
            # The budget was lowered while we were down: the coldest entries stay out, and the service still starts.
            log.warning("snapshot: skipped %d entries of tenant %s that no longer fit its budget", skipped, name)
    _write_unclaimed(unclaimed, data_dir, cipher)
    return restored


def _decrypting(file: BinaryIO, cipher: EnvelopeCipher) -> Iterator[bytes]:
    """The snapshot's segments, asking a KMS that is unavailable (unreachable, throttling, 5xx) again after a short
    wait: a blip must not cost the warm start. Anything else (retired, denied, tampered) is final at once."""
    delays, deadline = iter(KMS_RETRY_DELAYS_S), time.monotonic() + KMS_RETRY_WITHIN_S
    while True:
        try:
            file.seek(0)
            return cipher.decrypting(file, AAD)
        except KmsUnavailable as err:
            delay = next(delays, None)
            if delay is None or time.monotonic() + delay > deadline:
                raise
            log.warning("snapshot: the KMS is unavailable (%s); trying again in %.1f s", err, delay)
            time.sleep(delay)


def read(path: Path, cipher: EnvelopeCipher) -> dict[str, SavedTenant]:
    """A snapshot file's sections (any of them: the snapshot, one moved aside, one of unclaimed tenants). Raises
    on a file that does not open (the KMS, tampering, another kind of envelope)."""
    with path.open("rb") as file:
        return _decode_stream(cipher.decrypting(file, AAD))


class MergeRefused(Exception):
    """Nothing was merged; the message says why (the arguments, or the data dir's state)."""


class Merged(NamedTuple):
    added: dict[str, int]  # tenant -> entries put into the snapshot
    kept: dict[str, int]  # tenant -> the source's entries whose key the snapshot already holds (its value stays)
    skipped: dict[str, str]  # tenant -> why none of its entries went in


def merge(data_dir: Path, source: Path, cipher: EnvelopeCipher, tenants: Iterable[str] | None = None) -> Merged:
    """Put the entries of `source` (a snapshot moved aside, or unclaimed tenants' entries) into the data dir's
    snapshot, for the next start to restore with everything else: a key the snapshot holds keeps its value there
    (it is the newer), the others go in as the coldest of their tenant; entries past their deadline are left out.
    A section of another incarnation than the snapshot's section of that name is skipped (another tenant's). The
    snapshot is replaced atomically, or not at all; `source` is left as it was. The service must be stopped."""
    path = data_dir / FILENAME
    if (data_dir / RESTORING).exists():
        raise MergeRefused(f"{data_dir / RESTORING} is there: a start was cut short and the next start restores it; "
                         "start and stop the service once first, so the snapshot is one file again")
    if path.exists() and source.resolve() == path.resolve():
        raise MergeRefused(f"{source} is the snapshot itself")
    wanted = None if tenants is None else set(tenants)
    adding = read(source, cipher)
    if wanted is not None and (missing := wanted - set(adding)):
        raise MergeRefused(f"{source} holds no entries of {', '.join(sorted(missing))} (it has: "
                         f"{', '.join(sorted(adding)) or 'none'})")
    current = read(path, cipher) if path.exists() else {}
    merged = Merged({}, {}, {})
    now = now_ms()
    for name, (incarnation, entries) in adding.items():
        if wanted is not None and name not in wanted:
            continue
        live = [entry for entry in entries if not entry[2] or entry[2] > now]
        existing = current.get(name)
        if existing is not None and existing.incarnation != incarnation:
            merged.skipped[name] = "the snapshot holds another tenant of that name (another incarnation)"
            continue
        held = {key for key, _value, _deadline in existing.entries} if existing is not None else set()
        older = [entry for entry in live if entry[0] not in held]
        current[name] = SavedTenant(incarnation, older + (existing.entries if existing is not None else []))
        merged.added[name], merged.kept[name] = len(older), len(live) - len(older)
    if any(merged.added.values()):
        data_dir.mkdir(parents=True, exist_ok=True)
        _write_envelope(path, current, cipher)
    return merged


def _write_unclaimed(sections: dict[str, SavedTenant], data_dir: Path, cipher: EnvelopeCipher) -> None:
    pending = data_dir / UNCLAIMED_PENDING
    if not sections:
        pending.unlink(missing_ok=True)  # one a killed start left, of tenants that are back by now
        return
    try:
        _write_envelope(pending, sections, cipher)
    except Exception as err:  # a KMS or disk failure here must not keep every other tenant from its warm start
        log.error("snapshot: the entries of %s, not in the tenant list, could not be written aside and are lost once "
                  "the service serves: %s: %s", ", ".join(sorted(sections)), type(err).__name__, err)


def _reject(data_dir: Path, err: Exception) -> int:
    path = data_dir / FILENAME
    rejected = path.with_suffix(".rejected")
    os.replace(data_dir / RESTORING, rejected)
    fsync_directory(data_dir)
    log.error("snapshot %s failed verification (%s); moved to %s, starting cold", path, err, rejected)
    return 0


def forget_restored(data_dir: Path) -> None:
    """The service that restored the snapshot serves: its entries live in memory now, and the file must never come
    back after them. The sections of tenants missing from the tenant list are kept aside, never restored by
    themselves."""
    pending, restoring = data_dir / UNCLAIMED_PENDING, data_dir / RESTORING
    changed = False
    if pending.exists():
        unclaimed = _timestamped(data_dir, UNCLAIMED)
        os.replace(pending, unclaimed)
        changed = True
        log.warning("snapshot: the entries of tenants that were not in the tenant list at this start are in %s, "
                    "encrypted like the snapshot; no start restores them by itself (docs/security.md, \"The "
                    "warm-restart snapshot\", says how)", unclaimed)
    if restoring.exists():
        restoring.unlink()
        changed = True
    if changed:
        fsync_directory(data_dir)


def put_back(data_dir: Path) -> None:
    """The start failed after the restore: the snapshot is the next start's again (unless a newer one was written),
    and it still holds the sections pending for tenants missing from the tenant list."""
    restoring = data_dir / RESTORING
    (data_dir / UNCLAIMED_PENDING).unlink(missing_ok=True)
    if restoring.exists() and not (data_dir / FILENAME).exists():
        os.replace(restoring, data_dir / FILENAME)
        fsync_directory(data_dir)
