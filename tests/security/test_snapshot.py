"""The encrypted warm-restart snapshot: written whole while keys expire under it, restored whatever budgets are now."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from service import snapshot
from service.cache import TenantRegistry
from service.config import Settings
from service.security.envelope import EnvelopeCipher
from service.security.kms.local import LocalKms
from service.store import MemoryStore, now_ms
from service.store.policies import POLICIES
from service.tenancy import TenantQuota, TenantSpec


def registry(memory_bytes: int = 1 << 20, policy: str = "s3fifo", incarnation: str | None = None) -> TenantRegistry:
    tenants = TenantRegistry(Settings(eviction_policy=policy))
    tenants.upsert(TenantSpec(name="acme", quota=TenantQuota(memory_bytes=memory_bytes), incarnation=incarnation))
    return tenants


@pytest.fixture
def cipher(tmp_path: Path) -> EnvelopeCipher:
    return EnvelopeCipher(LocalKms.generate(tmp_path / "keyring.json"))


def test_a_key_expiring_during_encode_does_not_lose_the_snapshot(tmp_path: Path, cipher: EnvelopeCipher) -> None:
    clock, step = [1000], [0]

    def tick() -> int:  # every read of the clock is a little later: time passes while the snapshot is encoded
        clock[0] += step[0]
        return clock[0]

    tenants = registry()
    tenant = tenants.get("acme")
    assert tenant is not None
    tenant.store = store = MemoryStore(1 << 20, clock=tick)
    far = now_ms() + 3_600_000
    for i in range(10):
        store.set(b"k%d" % i, b"v", far)
    store.set(b"expiring", b"v", 1015)  # live on a first look at it, expired on any second one
    step[0] = 1
    snapshot.save(tenants, tmp_path, cipher)
    written = snapshot.decode(cipher.decrypt((tmp_path / snapshot.FILENAME).read_bytes(), snapshot.AAD))
    assert {key for key, _value, _deadline in written["acme"].entries} >= {b"k%d" % i for i in range(10)}
    assert snapshot.restore(registry(), tmp_path, cipher) == 10  # `expiring` is long past on the real clock


def test_entries_over_a_lowered_budget_are_skipped_and_the_rest_restore(tmp_path: Path, cipher: EnvelopeCipher,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    before = registry(1 << 20)
    tenant = before.get("acme")
    assert tenant is not None
    tenant.store.set(b"big", b"x" * 100_000, 0)
    tenant.store.set(b"small", b"y", 0)
    snapshot.save(before, tmp_path, cipher)
    after = registry(64 * 1024)  # the tenant's budget was lowered while the service was down
    with caplog.at_level(logging.WARNING, logger="service.snapshot"):
        assert snapshot.restore(after, tmp_path, cipher) == 1
    restored = after.get("acme")
    assert restored is not None
    assert restored.store.get(b"small") == b"y" and restored.store.get(b"big") is None
    assert "skipped 1 entries of tenant acme" in caplog.text
    assert not (tmp_path / snapshot.FILENAME).exists()  # restored once: the next start is cold, not a crash loop


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_lowered_budget_restores_the_hot_entries_and_counts_only_those_resident(
        tmp_path: Path, cipher: EnvelopeCipher, caplog: pytest.LogCaptureFixture, policy: str) -> None:
    before = registry(1_000_000, policy)
    tenant = before.get("acme")
    assert tenant is not None
    keys = [b"k%04d" % i for i in range(1000)]
    for key in keys:
        tenant.store.set(key, b"v" * 500)
    hot = keys[::10]
    for _ in range(3):
        for key in hot:
            tenant.store.get(key)
    snapshot.save(before, tmp_path, cipher)
    after = registry(200_000, policy)  # a fifth of the budget: about a quarter of the entries fit
    with caplog.at_level(logging.WARNING, logger="service.snapshot"):
        restored = snapshot.restore(after, tmp_path, cipher)
    store = after.get("acme").store  # type: ignore[union-attr]
    assert restored == len(store) and 200 < restored < 300
    assert all(key in store for key in hot)  # the ones read before the shutdown, not the last ones written
    assert store.stats.evictions == 0 and store.used <= store.budget
    assert f"skipped {1000 - restored} entries of tenant acme" in caplog.text


def test_a_tenant_created_again_under_the_name_while_down_gets_none_of_the_old_ones_entries(
        tmp_path: Path, cipher: EnvelopeCipher, caplog: pytest.LogCaptureFixture) -> None:
    before = registry(incarnation="a1")
    before.get("acme").store.set(b"payroll", b"the old tenant's", 0)  # type: ignore[union-attr]
    snapshot.save(before, tmp_path, cipher)
    after = registry(incarnation="b2")  # deleted and created again while the service was down
    with caplog.at_level(logging.WARNING, logger="service.snapshot"):
        assert snapshot.restore(after, tmp_path, cipher) == 0
    assert after.get("acme").store.get(b"payroll") is None  # type: ignore[union-attr]
    assert "earlier tenant's" in caplog.text
    snapshot.save(before, tmp_path, cipher)
    same = registry(incarnation="a1")  # the same tenant, restarted: its entries come back
    assert snapshot.restore(same, tmp_path, cipher) == 1


def test_a_snapshot_from_before_incarnations_restores_only_into_tenants_without_one(
        tmp_path: Path, cipher: EnvelopeCipher) -> None:
    v1 = b"FSNP1" + struct.pack(">HI", 4, 1) + b"acme" + struct.pack(">IIq", 1, 1, 0) + b"kv"

    def restore_into(tenants: TenantRegistry) -> int:
        (tmp_path / snapshot.FILENAME).write_bytes(cipher.encrypt(v1, snapshot.AAD))
        return snapshot.restore(tenants, tmp_path, cipher)

    assert snapshot.decode(v1) == {"acme": snapshot.SavedTenant(None, [(b"k", b"v", 0)])}
    assert restore_into(registry(incarnation="c18a0b")) == 0  # a Vault tenant: it may be another one by now
    assert restore_into(registry()) == 1  # a tenants file's tenant: its name is all it ever had


class _OtherLocalKms(LocalKms):
    """A real local keyring under another provider name: what a deployment sees after its KMS setting changed."""

    name = "other-local"


def test_a_snapshot_of_another_configured_kms_is_kept_for_later_not_rejected(tmp_path: Path,
                                                                           cipher: EnvelopeCipher) -> None:
    tenants = registry()
    tenants.get("acme").store.set(b"k", b"v")  # type: ignore[union-attr]
    snapshot.save(tenants, tmp_path, cipher)
    elsewhere = EnvelopeCipher(_OtherLocalKms.generate(tmp_path / "other.json"))
    assert snapshot.restore(registry(), tmp_path, elsewhere) == 0
    assert (tmp_path / snapshot.FILENAME).exists() and not (tmp_path / "snapshot.rejected").exists()
    restored = registry()
    assert snapshot.restore(restored, tmp_path, cipher) == 1  # the setting put back: the entries come back
    assert restored.get("acme").store.get(b"k") == b"v"  # type: ignore[union-attr]
