"""Warm restart: tenants' entries written on shutdown and read back on start, always envelope-encrypted.

The snapshot is one envelope (a fresh AES-256-GCM data key wrapped by the KMS) bound to its purpose by
associated data, written atomically with mode 0600. Restoring moves it to `snapshot.fse.restoring`; the service
deletes that once it serves (`forget_restored`), so a later crash can never resurrect stale data, and puts it back
if the start fails (`put_back`), so a port in use loses nothing. A snapshot that fails authentication is moved
aside and the service starts cold: it never serves bytes it cannot prove it wrote. One the KMS cannot open now
(unreachable, access denied) stays where it is for a later start, and this one starts cold; if this run then
cannot write its own snapshot at stop, the kept one is older than what the run served and is moved aside
(`set_aside_stale`), so no later start brings back values the run replaced or deleted.

The entries are encoded on the event loop (`encode`, one consistent moment: nothing else touches the stores
meanwhile), and only the encryption and the write go to a thread (`write`).

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
from pathlib import Path
from typing import NamedTuple

from service.cache import TenantRegistry
from service.security.envelope import EnvelopeCipher, EnvelopeFormatError, TamperedEnvelope
from service.store import MemoryStore, now_ms

log = logging.getLogger(__name__)

AAD = b"foresight-snapshot-v1"
FILENAME = "snapshot.fse"
RESTORING = FILENAME + ".restoring"  # restored into memory, kept until the service serves
STALE = FILENAME + ".stale"  # kept for a later start, then outdated by a run that served and could not save
_MAGIC = b"FSNP2"
_MAGIC_V1 = b"FSNP1"  # before incarnations: read, never written
_TENANT = struct.Struct(">HBI")  # name length, incarnation length (0: none), entry count
_TENANT_V1 = struct.Struct(">HI")  # name length, entry count
_ENTRY = struct.Struct(">IIq")  # key length, value length, deadline (ms, 0 = none)

SavedEntry = tuple[bytes, bytes, int]  # key, value, deadline


class SavedTenant(NamedTuple):
    incarnation: str | None
    entries: list[SavedEntry]  # coldest first


def encode(tenants: TenantRegistry) -> bytes:
    """Each live entry is read exactly once: a key that expires mid-encode is simply left out, never half-counted.
    A tenant's entries go coldest first."""
    parts = [_MAGIC]
    for tenant in tenants:
        store = tenant.store
        live = []
        for key in store.coldest_first():  # a copy: reading an expired entry removes it from the store
            entry = store.entry(key)
            if entry is not None and isinstance(key, bytes):
                live.append((key, entry.value, entry.expires_at))
        name, incarnation = tenant.name.encode(), (tenant.incarnation or "").encode()
        parts.append(_TENANT.pack(len(name), len(incarnation), len(live)) + name + incarnation)
        for key, value, deadline in live:
            parts.append(_ENTRY.pack(len(key), len(value), deadline) + key + value)
    return b"".join(parts)


def decode(data: bytes) -> dict[str, SavedTenant]:
    """Each tenant's section by name; a snapshot of before incarnations (`FSNP1`) reads with none."""
    if data.startswith(_MAGIC):
        header = _TENANT
    elif data.startswith(_MAGIC_V1):
        header = _TENANT_V1
    else:
        raise ValueError("not a Foresight snapshot")
    result: dict[str, SavedTenant] = {}
    pos = len(_MAGIC)
    while pos < len(data):
        if header is _TENANT:
            name_len, incarnation_len, count = _TENANT.unpack_from(data, pos)
        else:
            (name_len, count), incarnation_len = _TENANT_V1.unpack_from(data, pos), 0
        pos += header.size
        name = data[pos:pos + name_len].decode()
        pos += name_len
        incarnation = data[pos:pos + incarnation_len].decode() or None
        pos += incarnation_len
        entries: list[SavedEntry] = []
        result[name] = SavedTenant(incarnation, entries)
        for _ in range(count):
            key_len, value_len, deadline = _ENTRY.unpack_from(data, pos)
            pos += _ENTRY.size
            key = data[pos:pos + key_len]
            pos += key_len
            entries.append((key, data[pos:pos + value_len], deadline))
            pos += value_len
    return result


def save(tenants: TenantRegistry, data_dir: Path, cipher: EnvelopeCipher) -> Path:
    """Encode, encrypt and write every tenant's live entries in one call, for callers with no event loop that
    could write meanwhile. Blocks (KMS call, disk)."""
    return write(encode(tenants), data_dir, cipher)


def write(data: bytes, data_dir: Path, cipher: EnvelopeCipher) -> Path:
    """Encrypt an encoded snapshot and write it atomically, mode 0600. Blocks (KMS call, disk)."""
    path = data_dir / FILENAME
    data_dir.mkdir(parents=True, exist_ok=True)
    envelope = cipher.encrypt(data, AAD)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(envelope)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
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
    there by a start that was killed is restored again). Blocks."""
    path, restoring = data_dir / FILENAME, data_dir / RESTORING
    if path.exists():
        os.replace(path, restoring)
    elif not restoring.exists():
        return 0
    try:
        opened = cipher.decrypt(restoring.read_bytes(), AAD)
    except (TamperedEnvelope, EnvelopeFormatError) as err:
        return _reject(data_dir, err)
    except Exception as err:  # the KMS (or the disk, or a KMS setting that names another provider) cannot open it
        # now: not the file's fault, so it waits for a later start
        put_back(data_dir)
        log.error("snapshot %s not restored, kept for a later start; starting cold: %s: %s", path,
                  type(err).__name__, err)
        return 0
    try:
        snapshot = decode(opened)
    except (ValueError, struct.error) as err:
        return _reject(data_dir, err)
    restored = 0
    now = now_ms()
    for name, (incarnation, entries) in snapshot.items():
        tenant = tenants.get(name)
        if tenant is None:
            continue  # the tenant was deleted while we were down
        if tenant.incarnation != incarnation:
            log.warning("snapshot: skipped %d entries of tenant %s: they were an earlier tenant's of that name",
                        len(entries), name)
            continue
        kept, skipped = _fitting(tenant.store, [entry for entry in entries if not entry[2] or entry[2] > now])
        for key, value, deadline in kept:
            tenant.store.set(key, value, deadline)
        restored += sum(1 for key, _value, _deadline in kept if key in tenant.store)
        if skipped:
            # The budget was lowered while we were down: the coldest entries stay out, and the service still starts.
            log.warning("snapshot: skipped %d entries of tenant %s that no longer fit its budget", skipped, name)
    return restored


def _reject(data_dir: Path, err: Exception) -> int:
    path = data_dir / FILENAME
    rejected = path.with_suffix(".rejected")
    os.replace(data_dir / RESTORING, rejected)
    log.error("snapshot %s failed verification (%s); moved to %s, starting cold", path, err, rejected)
    return 0


def forget_restored(data_dir: Path) -> None:
    """The service that restored the snapshot serves: its entries live in memory now, and the file must never come
    back after them."""
    (data_dir / RESTORING).unlink(missing_ok=True)


def put_back(data_dir: Path) -> None:
    """The start failed after the restore: the snapshot is the next start's again (unless a newer one was written)."""
    restoring = data_dir / RESTORING
    if restoring.exists() and not (data_dir / FILENAME).exists():
        os.replace(restoring, data_dir / FILENAME)


def set_aside_stale(data_dir: Path) -> None:
    """The run served but wrote no snapshot: one still here was kept from before it, when the KMS could not open
    it, and restoring it would bring back values this run replaced or deleted. Moved aside, never restored."""
    path = data_dir / FILENAME
    if not path.exists():
        return
    try:
        os.replace(path, data_dir / STALE)
    except OSError as err:  # the disk that refused the new snapshot may refuse this too
        log.error("snapshot %s is older than what this run served and could not be moved aside (%s): delete it "
                  "before the next start, or that start restores outdated values", path, err)
    else:
        log.error("snapshot %s is older than what this run served; moved to %s so that no start restores it",
                  path, data_dir / STALE)
