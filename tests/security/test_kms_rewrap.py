"""`foresight kms rewrap`: after a KMS key rotation, every envelope the service wrote (snapshot, model checkpoints,
encrypted audit archives) moves to the new key version, so the old one can be retired; only headers change."""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
import torch
import typer
from typer.testing import CliRunner

from service import snapshot
from service.cache import TenantRegistry
from service.config import Settings
from service.prefetch.mlops.checkpoints import CheckpointRegistry
from service.security.audit import AuditLog, verify_files
from service.security.envelope import EnvelopeCipher, wrapped_key_of
from service.security.kms.local import LocalKms
from service.security.kms.vault_transit import VaultTransitKms
from service.security.kms_cli import app as kms_app
from service.security.vault_keys import service_policy
from service.tenancy import TenantQuota, TenantSpec
from tests.security.helpers import replace_wrapped_blob, token_client, unique
from tests.servers import OpenBao

_FIXED = 17  # magic 4 + segment size 4 + nonce prefix 7 + key block length 2


def body(path: Path) -> bytes:
    """The encrypted data after the header: what a rewrap must never touch."""
    data = path.read_bytes()
    return data[_FIXED + struct.unpack_from(">H", data, 15)[0] :]


@dataclass
class ServiceFiles:
    """What a service with a data dir and a KMS leaves on disk."""

    data_dir: Path
    snapshot: Path
    checkpoint: Path
    archive: Path
    audit: Path

    @property
    def envelopes(self) -> list[Path]:
        return [self.snapshot, self.checkpoint, self.archive]

    def contents(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.data_dir)): p.read_bytes() for p in sorted(self.data_dir.rglob("*"))
                if p.is_file()}

    def assert_all_open(self, cipher: EnvelopeCipher) -> None:
        tenants = snapshot.decode(cipher.decrypt(self.snapshot.read_bytes(), snapshot.AAD))
        assert [key for key, _value, _deadline in tenants["acme"].entries] == [b"balance"]
        model = CheckpointRegistry(self.checkpoint.parent, "acme", cipher).load(1)
        assert torch.equal(model["weights"], torch.arange(4.0))
        bad_file, verdict = verify_files([self.archive, self.audit], cipher=cipher)
        assert verdict.ok, (bad_file, verdict.reason)


def write_service_files(data_dir: Path, cipher: EnvelopeCipher) -> ServiceFiles:
    tenants = TenantRegistry(Settings())
    tenants.upsert(TenantSpec(name="acme", quota=TenantQuota(memory_bytes=1 << 20)))
    tenant = tenants.get("acme")
    assert tenant is not None
    tenant.store.set(b"balance", b"100", 0)
    snapshot_path = snapshot.save(tenants, data_dir, cipher)
    registry = CheckpointRegistry(data_dir / "models" / "acme", "acme", cipher)
    version = registry.save({"weights": torch.arange(4.0)}, metric=0.5)
    audit = data_dir / "audit.log"
    log = AuditLog(audit, archive=cipher)
    log.record("tenant.create", actor="admin:ops", tenant="acme")
    archive = log.rotate()
    log.record("tenant.delete", actor="admin:ops", tenant="acme")
    log.close()
    return ServiceFiles(data_dir, snapshot_path, registry.directory / f"v{version:04d}.ckpt", archive, audit)


def cli() -> typer.Typer:
    """The root CLI mounts the kms group like this (service/cli.py)."""
    root = typer.Typer()
    root.add_typer(kms_app, name="kms")
    return root


def rewrap(*args: str, env: dict[str, str]) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    """Exit code, the --json report and stderr of `foresight kms rewrap --json ARGS`."""
    result = CliRunner().invoke(cli(), ["kms", "rewrap", "--json", *args], env=env)
    return result.exit_code, json.loads(result.stdout), result.stderr


@pytest.fixture(autouse=True)
def _no_foresight_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("FORESIGHT_")]:
        monkeypatch.delenv(name)


# -- EnvelopeCipher.rewrap_file ----------------------------------------------------------------------------------


def test_rewrap_file_writes_only_when_the_version_moved(tmp_path: Path) -> None:
    kms = LocalKms.generate()
    cipher = EnvelopeCipher(kms)
    path = tmp_path / "object.fse"
    path.write_bytes(cipher.encrypt(b"data" * 100, b"ctx"))
    inode, before = path.stat().st_ino, path.read_bytes()
    assert cipher.rewrap_file(path) is False  # already under the current version: not rewritten
    assert (path.stat().st_ino, path.read_bytes()) == (inode, before)
    kms.rotate()
    assert cipher.rewrap_file(path, dry_run=True) is True
    assert (path.stat().st_ino, path.read_bytes()) == (inode, before)
    assert cipher.rewrap_file(path) is True
    assert wrapped_key_of(path.read_bytes()).key_ref == "v2"
    assert body(path) == before[len(before) - len(body(path)) :]
    assert cipher.decrypt(path.read_bytes(), b"ctx") == b"data" * 100


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another owner needs root")
def test_rewrap_file_keeps_the_owner_and_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    kms = LocalKms.generate()
    cipher = EnvelopeCipher(kms)
    path = tmp_path / "snapshot.fse"
    path.write_bytes(cipher.encrypt(b"data"))
    os.chown(path, 4321, 4321)  # the service's user, while the rewrap runs as root
    os.chmod(path, 0o640)
    kms.rotate()
    assert cipher.rewrap_file(path) is True
    stat = path.stat()
    assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o777) == (4321, 4321, 0o640)


# -- local keyring ---------------------------------------------------------------------------------------------


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    LocalKms.generate(path)
    return path


@pytest.fixture
def local_env(tmp_path: Path, keyring: Path) -> dict[str, str]:
    return {"FORESIGHT_KMS_PROVIDER": "local", "FORESIGHT_KMS_KEY_ID": str(keyring),
            "FORESIGHT_DATA_DIR": str(tmp_path / "data")}


def retire(keyring: Path, version: str) -> None:
    """The local keyring's version of min_decryption_version: the old key is gone."""
    raw = json.loads(keyring.read_text())
    del raw["keys"][version]
    keyring.write_text(json.dumps(raw))


def test_rewrap_then_retire_the_old_version_and_everything_still_opens(
    tmp_path: Path, keyring: Path, local_env: dict[str, str]
) -> None:
    files = write_service_files(tmp_path / "data", EnvelopeCipher(LocalKms.from_file(keyring)))
    os.chmod(files.checkpoint, 0o640)
    bodies = {path: body(path) for path in files.envelopes}
    assert LocalKms.from_file(keyring).rotate() == "v2"

    code, report, stderr = rewrap(env=local_env)

    assert code == 0, stderr
    assert report["counts"] == {"rewrapped": 3, "would-rewrap": 0, "current": 0, "failed": 0}
    assert {r["path"] for r in report["files"]} == {str(p) for p in files.envelopes}
    assert "rewrap: [3/3]" in stderr
    for path in files.envelopes:
        assert wrapped_key_of(path.read_bytes()).key_ref == "v2"
        assert body(path) == bodies[path]
    assert files.checkpoint.stat().st_mode & 0o777 == 0o640
    retire(keyring, "v1")
    files.assert_all_open(EnvelopeCipher(LocalKms.from_file(keyring)))


def test_a_second_run_finds_everything_current_and_writes_nothing(
    tmp_path: Path, keyring: Path, local_env: dict[str, str]
) -> None:
    files = write_service_files(tmp_path / "data", EnvelopeCipher(LocalKms.from_file(keyring)))
    LocalKms.from_file(keyring).rotate()
    assert rewrap(env=local_env)[0] == 0
    before, inodes = files.contents(), {p: p.stat().st_ino for p in files.envelopes}

    code, report, _ = rewrap(env=local_env)

    assert code == 0
    assert [r["outcome"] for r in report["files"]] == ["current"] * 3
    assert files.contents() == before
    assert {p: p.stat().st_ino for p in files.envelopes} == inodes


def test_dry_run_reports_what_would_move_and_changes_nothing(
    tmp_path: Path, keyring: Path, local_env: dict[str, str]
) -> None:
    files = write_service_files(tmp_path / "data", EnvelopeCipher(LocalKms.from_file(keyring)))
    LocalKms.from_file(keyring).rotate()
    before = files.contents()

    code, report, _ = rewrap("--dry-run", env=local_env)

    assert code == 0
    assert report["dry_run"] is True
    assert report["counts"]["would-rewrap"] == 3
    assert files.contents() == before


def test_a_file_the_kms_refuses_is_left_byte_identical_and_the_others_move(
    tmp_path: Path, keyring: Path, local_env: dict[str, str]
) -> None:
    files = write_service_files(tmp_path / "data", EnvelopeCipher(LocalKms.from_file(keyring)))
    files.checkpoint.write_bytes(replace_wrapped_blob(files.checkpoint.read_bytes(), b"\0" * 60))
    LocalKms.from_file(keyring).rotate()
    broken = files.checkpoint.read_bytes()

    code, report, _ = rewrap(env=local_env)

    assert code == 1
    outcomes = {r["path"]: (r["outcome"], r["reason"]) for r in report["files"]}
    assert outcomes[str(files.checkpoint)][0] == "failed"
    assert "rejected" in outcomes[str(files.checkpoint)][1]
    assert outcomes[str(files.snapshot)] == ("rewrapped", None)
    assert files.checkpoint.read_bytes() == broken
    assert not [p for p in files.checkpoint.parent.iterdir() if p.name.endswith(".tmp")]


def test_refuses_while_the_service_holds_its_audit_log(
    tmp_path: Path, keyring: Path, local_env: dict[str, str]
) -> None:
    files = write_service_files(tmp_path / "data", EnvelopeCipher(LocalKms.from_file(keyring)))
    LocalKms.from_file(keyring).rotate()
    running = AuditLog(files.audit)  # what the running service holds
    try:
        before = files.contents()
        code, report, stderr = rewrap(env=local_env)
        assert files.contents() == before
    finally:
        running.close()
    assert code == 2
    assert "the service is running" in report["error"]
    assert stderr.startswith("error: the service is running")
    assert rewrap(env=local_env)[0] == 0  # stopped: now it runs


def test_paths_named_besides_the_data_dir_are_rewrapped_and_a_non_envelope_named_fails(
    tmp_path: Path, keyring: Path, local_env: dict[str, str]
) -> None:
    conf = tmp_path / "conf"  # a marketplace node's /etc/foresight/conf
    conf.mkdir()
    ca_key = conf / "ca.key.enc"
    ca_key.write_bytes(EnvelopeCipher(LocalKms.from_file(keyring)).encrypt(b"-----CA KEY-----", b"ca"))
    plain = conf / "ca.crt"
    plain.write_bytes(b"-----BEGIN CERTIFICATE-----")
    LocalKms.from_file(keyring).rotate()

    code, report, _ = rewrap(str(conf), env=local_env)
    assert code == 0
    assert [(r["path"], r["outcome"]) for r in report["files"]] == [(str(ca_key), "rewrapped")]  # ca.crt skipped

    code, report, _ = rewrap(str(plain), env=local_env)
    assert code == 1
    assert report["files"] == [{"path": str(plain), "outcome": "failed", "reason": "not a Foresight envelope"}]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no KMS configured"),
        ({"FORESIGHT_KMS_PROVIDER": "local", "FORESIGHT_KMS_KEY_ID": "/nope/keyring.json"}, "does not exist"),
        ({"FORESIGHT_KMS_PROVIDER": "local"}, "nothing to search"),
    ],
)
def test_without_a_kms_or_anything_to_search_nothing_is_attempted(
    keyring: Path, env: dict[str, str], message: str
) -> None:
    env = {"FORESIGHT_KMS_KEY_ID": str(keyring), **env}
    code, report, _ = rewrap(env=env)
    assert code == 2
    assert message in report["error"]
    assert not Path("/nope/keyring.json").exists()


def test_human_output_lists_each_file_and_a_summary(tmp_path: Path, keyring: Path, local_env: dict[str, str]) -> None:
    files = write_service_files(tmp_path / "data", EnvelopeCipher(LocalKms.from_file(keyring)))
    LocalKms.from_file(keyring).rotate()
    result = CliRunner().invoke(cli(), ["kms", "rewrap", "--dry-run"], env=local_env)
    assert result.exit_code == 0
    assert f"would-rewrap {files.snapshot}\n" in result.stdout
    assert result.stdout.endswith("3 would be rewrapped, 0 already current, 0 failed\n")


# -- OpenBao transit ----------------------------------------------------------------------------------------------


@dataclass
class Transit:
    key: str
    env: dict[str, str]
    cipher: EnvelopeCipher


@pytest.fixture
def transit(openbao: OpenBao, bao_root: hvac.Client, tmp_path: Path) -> Transit:
    """A transit key of this test's own and the service's settings for it: the service policy's grants."""
    key = unique("kek")
    bao_root.secrets.transit.create_key(key, mount_point="transit")
    policy = unique("rewrap-service")
    bao_root.sys.create_or_update_policy(policy, service_policy(transit=("transit", key)))
    token_file = tmp_path / "token"
    token_file.write_text(token_client(openbao.addr, bao_root, policy).token)
    env = {"FORESIGHT_KMS_PROVIDER": "vault-transit", "FORESIGHT_KMS_KEY_ID": key,
           "FORESIGHT_VAULT_ADDR": openbao.addr, "FORESIGHT_VAULT_AUTH_METHOD": "token",
           "FORESIGHT_VAULT_TOKEN_FILE": str(token_file), "FORESIGHT_DATA_DIR": str(tmp_path / "data")}
    return Transit(key, env, EnvelopeCipher(VaultTransitKms(bao_root, key)))


def test_transit_rotate_rewrap_retire_and_everything_still_opens(
    bao_root: hvac.Client, transit: Transit, tmp_path: Path
) -> None:
    files = write_service_files(tmp_path / "data", transit.cipher)
    bodies = {path: body(path) for path in files.envelopes}
    bao_root.secrets.transit.rotate_key(transit.key, mount_point="transit")

    code, report, _ = rewrap(env=transit.env)

    assert code == 0, report
    assert report["counts"]["rewrapped"] == 3
    for path in files.envelopes:
        assert wrapped_key_of(path.read_bytes()).blob.startswith(b"vault:v2:")
        assert body(path) == bodies[path]
    bao_root.secrets.transit.update_key_configuration(transit.key, min_decryption_version=2, mount_point="transit")
    files.assert_all_open(transit.cipher)
    code, report, _ = rewrap(env=transit.env)
    assert (code, report["counts"]["current"]) == (0, 3)


def test_transit_refusing_the_rewrap_leaves_every_file_byte_identical(
    openbao: OpenBao, bao_root: hvac.Client, transit: Transit, tmp_path: Path
) -> None:
    files = write_service_files(tmp_path / "data", transit.cipher)
    bao_root.secrets.transit.rotate_key(transit.key, mount_point="transit")
    before = files.contents()
    no_rewrap = unique("no-rewrap")
    bao_root.sys.create_or_update_policy(
        no_rewrap, f'path "transit/encrypt/{transit.key}" {{ capabilities = ["update"] }}'
    )
    Path(transit.env["FORESIGHT_VAULT_TOKEN_FILE"]).write_text(token_client(openbao.addr, bao_root, no_rewrap).token)

    code, report, _ = rewrap(env=transit.env)

    assert code == 1
    assert [r["outcome"] for r in report["files"]] == ["failed"] * 3
    assert all(r["reason"] for r in report["files"])
    assert files.contents() == before


def test_transit_dry_run_changes_nothing(bao_root: hvac.Client, transit: Transit, tmp_path: Path) -> None:
    files = write_service_files(tmp_path / "data", transit.cipher)
    bao_root.secrets.transit.rotate_key(transit.key, mount_point="transit")
    before = files.contents()
    code, report, _ = rewrap("--dry-run", env=transit.env)
    assert (code, report["counts"]["would-rewrap"]) == (0, 3)
    assert files.contents() == before


def test_version_of_reads_the_transit_version_without_a_call(bao_root: hvac.Client, transit: Transit) -> None:
    kms = VaultTransitKms(bao_root, transit.key)
    wrapped = kms.wrap(b"k" * 32)
    assert kms.version_of(wrapped) == f"{transit.key}:v1"
    forged = type(wrapped)(wrapped.provider, wrapped.key_ref, base64.b64encode(b"junk"))
    assert kms.version_of(forged) is None
