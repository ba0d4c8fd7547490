"""The snapshot streams: saving and restoring hold a small, fixed amount beyond the store, in the unchanged format."""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import pytest

from service import snapshot
from service.cache import TenantRegistry
from service.config import Settings
from service.security.envelope import EnvelopeCipher
from service.security.kms.local import LocalKms
from service.tenancy import TenantQuota, TenantSpec

MiB = 1 << 20
ENTRIES, VALUE = 8192, 4096  # 32 MiB of values: the old encoding allocated about twice that while saving


def registry(incarnation: str | None = None) -> TenantRegistry:
    tenants = TenantRegistry(Settings())
    tenants.upsert(TenantSpec(name="acme", quota=TenantQuota(memory_bytes=256 * MiB), incarnation=incarnation))
    return tenants


def filled(count: int = ENTRIES, size: int = VALUE) -> TenantRegistry:
    tenants = registry()
    store = tenants.get("acme").store  # type: ignore[union-attr]
    for i in range(count):
        store.set(b"k%06d" % i, os.urandom(size), 0)
    return tenants


@pytest.fixture
def cipher() -> EnvelopeCipher:
    return EnvelopeCipher(LocalKms.generate())


def test_saving_32_mib_of_entries_allocates_under_4_mib(tmp_path: Path, cipher: EnvelopeCipher) -> None:
    tenants = filled()
    tracemalloc.start()
    try:
        snapshot.save(tenants, tmp_path, cipher)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / snapshot.FILENAME).stat().st_size > ENTRIES * VALUE
    assert peak < 4 * MiB, f"saving allocated {peak / MiB:.1f} MiB at peak: the snapshot no longer streams"


def test_restoring_32_mib_of_entries_holds_under_4_mib_beyond_what_it_restores(
        tmp_path: Path, cipher: EnvelopeCipher) -> None:
    snapshot.save(filled(), tmp_path, cipher)
    tenants = registry()
    tracemalloc.start()
    try:
        assert snapshot.restore(tenants, tmp_path, cipher) == ENTRIES
        resident, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resident > ENTRIES * VALUE
    assert peak - resident < 4 * MiB, f"restoring held {(peak - resident) / MiB:.1f} MiB beyond its entries"


def test_the_plaintext_layout_is_the_one_earlier_versions_read_and_write(tmp_path: Path,
                                                                        cipher: EnvelopeCipher) -> None:
    tenants = registry(incarnation="a1")
    tenants.get("acme").store.set(b"k", b"value", 0)  # type: ignore[union-attr]
    snapshot.save(tenants, tmp_path, cipher)
    expected = (b"FSNP2" + struct.pack(">HBI", 4, 2, 1) + b"acme" + b"a1" + struct.pack(">IIq", 1, 5, 0) + b"k"
                + b"value")
    assert cipher.decrypt((tmp_path / snapshot.FILENAME).read_bytes(), snapshot.AAD) == expected


def test_values_larger_than_a_batch_and_a_segment_round_trip(tmp_path: Path) -> None:
    cipher = EnvelopeCipher(LocalKms.generate(), segment_size=4096)
    tenants = registry()
    store = tenants.get("acme").store  # type: ignore[union-attr]
    values = {b"big": os.urandom(3 * MiB + 1), b"small": b"s", b"empty": b"", b"segment": os.urandom(4096)}
    for key, value in values.items():
        store.set(key, value, 0)
    snapshot.save(tenants, tmp_path, cipher)
    restored = registry()
    assert snapshot.restore(restored, tmp_path, cipher) == len(values)
    assert {key: restored.get("acme").store.get(key) for key in values} == values  # type: ignore[union-attr]


@pytest.mark.parametrize("damage", ["last segment dropped", "last segment altered", "trailing bytes"])
def test_a_damaged_snapshot_applies_none_of_the_entries_before_the_damage(tmp_path: Path, damage: str) -> None:
    cipher = EnvelopeCipher(LocalKms.generate(), segment_size=4096)
    snapshot.save(filled(count=64, size=1000), tmp_path, cipher)  # about 16 segments
    path = tmp_path / snapshot.FILENAME
    envelope = bytearray(path.read_bytes())
    last = (len(envelope) - 17 - int.from_bytes(envelope[15:17], "big")) % (4096 + 16) or 4096 + 16
    if damage == "last segment dropped":
        del envelope[-last:]
    elif damage == "last segment altered":
        envelope[-1] ^= 1
    else:
        envelope += b"\0" * 16
    path.write_bytes(bytes(envelope))
    tenants = registry()
    assert snapshot.restore(tenants, tmp_path, cipher) == 0
    assert len(tenants.get("acme").store) == 0  # type: ignore[union-attr]
    assert (tmp_path / "snapshot.rejected").exists() and not path.exists()
