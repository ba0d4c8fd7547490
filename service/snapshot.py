"""Warm restart: tenants' entries written on shutdown and read back on start, always envelope-encrypted.

The snapshot is one envelope (a fresh AES-256-GCM data key wrapped by the KMS) bound to its purpose by
associated data, written atomically with mode 0600. It is deleted once restored, so a later crash can never
resurrect stale data. A snapshot that fails authentication is moved aside and the service starts cold:
it never serves bytes it cannot prove it wrote.

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
from service.security.envelope import EnvelopeCipher, EnvelopeError
from service.store import MemoryStore, now_ms

log = logging.getLogger(__name__)

AAD = b"foresight-snapshot-v1"
FILENAME = "snapshot.fse"
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
    """Encrypt and write every tenant's live entries. Blocks (KMS call, disk)."""
    path = data_dir / FILENAME
    data_dir.mkdir(parents=True, exist_ok=True)
    envelope = cipher.encrypt(encode(tenants), AAD)
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
    """Load a snapshot into the tenants that still exist; returns the entries resident afterwards. Blocks."""
    path = data_dir / FILENAME
    if not path.exists():
        return 0
    try:
        snapshot = decode(cipher.decrypt(path.read_bytes(), AAD))
    except (EnvelopeError, ValueError, struct.error) as err:
        rejected = path.with_suffix(".rejected")
        os.replace(path, rejected)
        log.error("snapshot %s failed verification (%s); moved to %s, starting cold", path, err, rejected)
        return 0
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
    path.unlink()
    return restored
