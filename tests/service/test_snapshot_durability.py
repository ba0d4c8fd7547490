"""What the warm snapshot survives: a KMS that cannot open it at start (the stop after moves it aside, never over
it), a KMS blip (retried), a tenant missing from the tenant list (its entries written aside), a disk that fills up
mid-write (no temporary file left) and a power loss after a rename or a delete (the directory is fsynced)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import hvac
import pytest
import redis
import typer
from typer.testing import CliRunner

from service import snapshot
from service.cache import TenantRegistry
from service.config import Settings
from service.security.envelope import EnvelopeCipher
from service.security.kms.base import KmsUnavailable, WrappedKey
from service.security.kms.local import LocalKms
from service.security.kms.vault_transit import VaultTransitKms
from service.security.kms_cli import app as kms_app
from service.state import DEV_TENANT
from service.tenancy import TenantQuota, TenantSpec
from tests.security.helpers import unique
from tests.servers import OpenBao
from tests.service.harness import running_service


def registry(*names: str) -> TenantRegistry:
    tenants = TenantRegistry(Settings())
    for name in names:
        tenants.upsert(TenantSpec(name=name, quota=TenantQuota(memory_bytes=1 << 24)))
    return tenants


def fill(tenants: TenantRegistry, name: str, count: int) -> None:
    tenant = tenants.get(name)
    assert tenant is not None
    for i in range(count):
        tenant.store.set(b"%s-%d" % (name.encode(), i), b"v", 0)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, names(directory)
    return found[0]


def kms_rewrap(env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    """The --json report of `foresight kms rewrap` with the service's settings in `env`; asserts it exits 0."""
    root = typer.Typer()
    root.add_typer(kms_app, name="kms")
    result = CliRunner().invoke(root, ["kms", "rewrap", "--json"], env=env)
    assert result.exit_code == 0, result.stdout
    report: dict = json.loads(result.stdout)  # type: ignore[type-arg]
    return report


@pytest.fixture
def no_foresight_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("FORESIGHT_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def bao(openbao: OpenBao) -> hvac.Client:
    root = openbao.client()
    if "transit/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("transit", path="transit")
    return root


@pytest.fixture
def transit_key(bao: hvac.Client) -> str:
    name = unique("snapshot")
    bao.secrets.transit.create_key(name, mount_point="transit")
    return name


@pytest.fixture
def local(tmp_path: Path) -> EnvelopeCipher:
    return EnvelopeCipher(LocalKms.generate(tmp_path / "keyring.json"))


# -- a snapshot the KMS cannot open at start -----------------------------------------------------------------------


def test_a_snapshot_under_a_retired_version_survives_the_stop_and_restores_after_rewrap_once_put_back(
        tmp_path: Path, openbao: OpenBao, bao: hvac.Client, transit_key: str, caplog: pytest.LogCaptureFixture,
        no_foresight_environment: None) -> None:
    data, cipher = tmp_path / "data", EnvelopeCipher(VaultTransitKms(bao, transit_key))
    before = registry("acme")
    fill(before, "acme", 1000)
    snapshot.save(before, data, cipher)  # the last stop: under v1
    bao.secrets.transit.rotate_key(transit_key, mount_point="transit")
    bao.secrets.transit.update_key_configuration(transit_key, min_decryption_version=2, mount_point="transit")

    run = registry("acme")  # the start: v1 is retired too early, so the service starts cold
    with caplog.at_level(logging.WARNING, logger="service.snapshot"):
        assert snapshot.restore(run, data, cipher) == 0
    assert "KmsKeyRetired" in caplog.text and "moved aside at the next stop" in caplog.text
    snapshot.forget_restored(data)  # it serves
    run.get("acme").store.set(b"new", b"1", 0)  # type: ignore[union-attr]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.snapshot"):
        snapshot.write(snapshot.capture(run), data, cipher)  # the stop that `kms rewrap` needs
    kept = only(data, snapshot.FILENAME + ".unrestored-*")
    assert names(data) == sorted([snapshot.FILENAME, kept.name])
    assert str(kept) in caplog.text and "foresight kms rewrap" in caplog.text

    bao.secrets.transit.update_key_configuration(transit_key, min_decryption_version=1, mount_point="transit")
    token = tmp_path / "token"
    token.write_text(bao.token)
    report = kms_rewrap({"FORESIGHT_KMS_PROVIDER": "vault-transit", "FORESIGHT_KMS_KEY_ID": transit_key,
                         "FORESIGHT_VAULT_ADDR": openbao.addr, "FORESIGHT_VAULT_AUTH_METHOD": "token",
                         "FORESIGHT_VAULT_TOKEN_FILE": str(token), "FORESIGHT_DATA_DIR": str(data)})
    assert {Path(f["path"]).name: f["outcome"] for f in report["files"]}[kept.name] == "rewrapped"
    bao.secrets.transit.update_key_configuration(transit_key, min_decryption_version=2, mount_point="transit")

    os.replace(kept, data / snapshot.FILENAME)  # its entries matter more than the cold run's one
    assert snapshot.restore(registry("acme"), data, cipher) == 1000


def test_the_stop_of_a_run_that_started_cold_moves_the_kept_snapshot_aside_and_writes_its_own(
        tmp_path: Path, bao: hvac.Client, transit_key: str, caplog: pytest.LogCaptureFixture) -> None:
    transit = EnvelopeCipher(VaultTransitKms(bao, transit_key))
    before = registry(DEV_TENANT)
    before.get(DEV_TENANT).store.set(b"balance", b"100", 0)  # type: ignore[union-attr]
    snapshot.save(before, tmp_path / "data", transit)
    settings = dict(dev=True, prefetcher="none", data_dir=tmp_path / "data", kms_provider="local",
                    kms_key_id=str(tmp_path / "keyring.json"), audit_log=tmp_path / "audit.log")
    with running_service(**settings) as svc:  # a local keyring now: the transit snapshot cannot open, start cold
        redis.Redis(port=svc.resp_port).set("fresh", "1")
        with caplog.at_level(logging.WARNING, logger="service"):
            svc.call(svc.service.stop())
    kept = only(tmp_path / "data", snapshot.FILENAME + ".unrestored-*")
    assert names(tmp_path / "data") == sorted([snapshot.FILENAME, kept.name])
    assert f"moved to {kept}" in caplog.text
    with running_service(**settings) as svc:  # the new snapshot is this run's
        assert redis.Redis(port=svc.resp_port).get("fresh") == b"1"
    os.replace(kept, tmp_path / "data" / snapshot.FILENAME)
    warm = registry(DEV_TENANT)
    assert snapshot.restore(warm, tmp_path / "data", transit) == 1
    assert warm.get(DEV_TENANT).store.get(b"balance") == b"100"  # type: ignore[union-attr]


class _FlakyTransit(VaultTransitKms):
    """Real transit behind a KMS that answers `unavailable` (a 503, a throttle) to the first `failures` unwraps."""

    def __init__(self, client: hvac.Client, key: str, failures: int) -> None:
        super().__init__(client, key)
        self.failures, self.unwraps = failures, 0

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        self.unwraps += 1
        if self.unwraps <= self.failures:
            raise KmsUnavailable("Vault transit unavailable: VaultDown")
        return super().unwrap(wrapped)


def test_a_kms_blip_at_start_is_retried_and_the_snapshot_restores(
        tmp_path: Path, bao: hvac.Client, transit_key: str, caplog: pytest.LogCaptureFixture) -> None:
    before = registry("acme")
    fill(before, "acme", 10)
    snapshot.save(before, tmp_path, EnvelopeCipher(VaultTransitKms(bao, transit_key)))
    flaky = _FlakyTransit(bao, transit_key, failures=2)
    with caplog.at_level(logging.WARNING, logger="service.snapshot"):
        assert snapshot.restore(registry("acme"), tmp_path, EnvelopeCipher(flaky)) == 10
    assert flaky.unwraps == 3 and "trying again" in caplog.text


def test_a_kms_that_stays_unreachable_is_retried_for_at_most_about_ten_seconds(
        tmp_path: Path, bao: hvac.Client, transit_key: str) -> None:
    before = registry("acme")
    fill(before, "acme", 10)
    snapshot.save(before, tmp_path, EnvelopeCipher(VaultTransitKms(bao, transit_key)))
    down = _FlakyTransit(hvac.Client(url="http://127.0.0.1:9", timeout=1), transit_key, failures=0)
    started = time.monotonic()
    assert snapshot.restore(registry("acme"), tmp_path, EnvelopeCipher(down)) == 0
    assert down.unwraps > 1 and time.monotonic() - started < 12
    assert names(tmp_path) == [snapshot.FILENAME]  # kept for a later start


# -- a tenant missing from the tenant list at start ----------------------------------------------------------------


def test_a_tenant_missing_at_start_has_its_entries_written_aside_logged_and_not_carried_on(
        tmp_path: Path, local: EnvelopeCipher, caplog: pytest.LogCaptureFixture,
        no_foresight_environment: None) -> None:
    data = tmp_path / "data"
    before = registry("acme", "globex")
    fill(before, "acme", 5)
    fill(before, "globex", 1000)
    snapshot.save(before, data, local)
    after = registry("acme")  # globex's record could not be read at this start
    with caplog.at_level(logging.WARNING, logger="service.snapshot"):
        assert snapshot.restore(after, data, local) == 5
        snapshot.forget_restored(data)  # it serves
    aside = only(data, "snapshot.unclaimed-*.fse")
    assert "globex" in caplog.text and "1000 entries" in caplog.text and str(aside) in caplog.text
    assert names(data) == [aside.name]
    assert set(snapshot.decode(local.decrypt(aside.read_bytes(), snapshot.AAD))) == {"globex"}
    snapshot.save(after, data, local)  # the next stop
    assert set(snapshot.decode(local.decrypt((data / snapshot.FILENAME).read_bytes(), snapshot.AAD))) == {"acme"}

    LocalKms.from_file(tmp_path / "keyring.json").rotate()
    report = kms_rewrap({"FORESIGHT_KMS_PROVIDER": "local", "FORESIGHT_KMS_KEY_ID": str(tmp_path / "keyring.json"),
                         "FORESIGHT_DATA_DIR": str(data)})
    assert {Path(f["path"]).name: f["outcome"] for f in report["files"]}[aside.name] == "rewrapped"

    os.replace(aside, data / snapshot.FILENAME)  # globex is back, and its entries matter more than the others'
    cipher = EnvelopeCipher(LocalKms.from_file(tmp_path / "keyring.json"))
    assert snapshot.restore(registry("acme", "globex"), data, cipher) == 1000


def test_a_start_that_fails_after_the_restore_leaves_no_unclaimed_file_behind(
        tmp_path: Path, local: EnvelopeCipher) -> None:
    before = registry("acme", "globex")
    fill(before, "globex", 3)
    snapshot.save(before, tmp_path, local)
    for _attempt in range(2):  # a port in use, twice: the snapshot still holds globex, no copy piles up
        snapshot.restore(registry("acme"), tmp_path, local)
        snapshot.put_back(tmp_path)
        assert names(tmp_path) == sorted([snapshot.FILENAME, "keyring.json"])


# -- atomic, durable writes ----------------------------------------------------------------------------------------


def test_a_write_that_fails_midway_leaves_no_temporary_file(tmp_path: Path, local: EnvelopeCipher,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    tenants = registry("acme")
    fill(tenants, "acme", 10)
    real_fdopen = os.fdopen

    def disk_full(fd: int, *args: object, **kwargs: object) -> object:
        file = real_fdopen(fd, *args, **kwargs)  # type: ignore[call-overload]
        write = file.write

        def half_then_enospc(data: bytes) -> int:
            write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        file.write = half_then_enospc
        return file

    monkeypatch.setattr(os, "fdopen", disk_full)
    with pytest.raises(OSError, match="No space left"):
        snapshot.save(tenants, tmp_path / "data", local)
    assert names(tmp_path / "data") == []


def test_the_data_dir_is_fsynced_after_each_rename_and_delete(tmp_path: Path, local: EnvelopeCipher,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    synced: list[list[str]] = []  # what the data dir held at each of its fsyncs
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == str(data.resolve()):
            synced.append(names(data))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    tenants = registry("acme")
    fill(tenants, "acme", 10)
    snapshot.save(tenants, data, local)
    assert synced[-1] == [snapshot.FILENAME]  # after the rename into place
    snapshot.restore(registry("acme"), data, local)
    assert synced[-1] == [snapshot.RESTORING]
    snapshot.forget_restored(data)
    assert synced[-1] == []
