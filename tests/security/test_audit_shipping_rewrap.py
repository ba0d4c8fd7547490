"""A rewrapped archive is shipped again: `foresight kms rewrap` rewrites an archive's wrapped data key in place,
same length, so a shipper that compared sizes kept the copy wrapped under the old key version, and once the node
pruned its archive and that version was retired, no readable copy was left anywhere."""

from __future__ import annotations

import hashlib
import json
import posixpath
import secrets
from pathlib import Path

from service.security.audit import AuditLog, verify_files, write_plaintext
from service.security.audit_shipping import REWRAPPED, AuditShipper
from service.security.envelope import EnvelopeCipher
from service.security.kms.local import LocalKms
from tests.object_stores import ObjectStore


def retire_all_but_the_primary(keyring: Path) -> EnvelopeCipher:
    raw = json.loads(keyring.read_text())
    raw["keys"] = {raw["primary"]: raw["keys"][raw["primary"]]}
    keyring.write_text(json.dumps(raw))
    return EnvelopeCipher(LocalKms.from_file(keyring))


def rewrap_the_node(archives: list[Path], keyring: Path) -> None:
    """What `foresight kms rewrap` does to the node's archives after a rotation (the service stopped)."""
    kms = LocalKms.from_file(keyring)
    kms.rotate()
    cipher = EnvelopeCipher(kms)
    for archive in archives:
        assert cipher.rewrap_file(archive)


def plaintext(archive: Path, cipher: EnvelopeCipher, out: Path) -> Path:
    with out.open("wb") as file:
        write_plaintext(archive, file, cipher)
    return out


def test_a_rewrapped_archive_is_shipped_again_beside_its_first_copy_and_pruned_only_then(tmp_path: Path) -> None:
    keyring, path, bucket = tmp_path / "keyring.json", tmp_path / "node" / "audit.log", tmp_path / "bucket"
    cipher = EnvelopeCipher(LocalKms.generate(keyring))
    with AuditLog(path, archive=cipher, shipper=AuditShipper(str(bucket), "n1")) as log:
        log.record("tenant.create", actor="admin:ops", tenant="acme")
        first = log.rotate()
    first_copy = bucket / "n1" / first.name
    shipped_under_v1 = first_copy.read_bytes()
    assert shipped_under_v1 == first.read_bytes()

    rewrap_the_node([first], keyring)
    assert first.stat().st_size == len(shipped_under_v1) and first.read_bytes() != shipped_under_v1
    rewrapped = first.read_bytes()

    shipper = AuditShipper(str(bucket), "n1")  # the service starts again, and prunes down to one archive
    cipher = EnvelopeCipher(LocalKms.from_file(keyring))
    with AuditLog(path, archive=cipher, keep_files=1, shipper=shipper) as log:
        log.record("tenant.delete", actor="admin:ops", tenant="acme")
        second = log.rotate()
    again = bucket / "n1" / REWRAPPED / f"{first.name}.{hashlib.sha256(rewrapped).hexdigest()[:16]}"
    assert again.read_bytes() == rewrapped  # shipped again, under the key version the node now uses
    assert first_copy.read_bytes() == shipped_under_v1  # the first copy is the trail: never replaced
    assert not first.exists() and shipper.shipped_files == 2  # pruned, once its bytes were there
    assert sorted(p.name for p in (bucket / "n1").iterdir() if p.is_file()) == [first.name, second.name]
    assert again.stat().st_mode & 0o777 == 0o600 and again.parent.stat().st_mode & 0o777 == 0o700

    # v1 retired: the copies the node's own files became still tell the whole story, from genesis.
    live = retire_all_but_the_primary(keyring)
    (tmp_path / "plain").mkdir()
    plain = [plaintext(again, live, tmp_path / "plain" / first.name),
             plaintext(bucket / "n1" / second.name, live, tmp_path / "plain" / second.name)]
    bad, verdict = verify_files([*plain, path])
    assert bad is None and verdict.ok, verdict


def test_a_copy_already_shipped_again_is_not_shipped_a_third_time(tmp_path: Path) -> None:
    keyring, path, bucket = tmp_path / "keyring.json", tmp_path / "node" / "audit.log", tmp_path / "bucket"
    with AuditLog(path, archive=EnvelopeCipher(LocalKms.generate(keyring)),
                  shipper=AuditShipper(str(bucket), "n1")) as log:
        log.rotate()
    rewrap_the_node(sorted(path.parent.glob("audit.*.log.fse")), keyring)
    counts = []
    for _ in range(2):
        shipper = AuditShipper(str(bucket), "n1")
        with AuditLog(path, archive=EnvelopeCipher(LocalKms.from_file(keyring)), shipper=shipper):
            pass  # the start's background pass, finished by close()
        counts.append(shipper.shipped_files)
    assert counts == [1, 0]
    assert len(list((bucket / "n1" / REWRAPPED).iterdir())) == 1


def test_a_rewrapped_archive_is_shipped_again_to_each_clouds_store(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    keyring, path, bucket = tmp_path / "keyring.json", tmp_path / "audit.log", f"rewrap-{secrets.token_hex(4)}"
    object_store.create_bucket(bucket)
    url = object_store.url(bucket, "prod")
    with AuditLog(path, archive=EnvelopeCipher(LocalKms.generate(keyring)), shipper=AuditShipper(url, "n1")) as log:
        first = log.rotate()
    shipped_under_v1 = first.read_bytes()
    rewrap_the_node([first], keyring)
    rewrapped = first.read_bytes()

    shipper = AuditShipper(url, "n1")
    with AuditLog(path, archive=EnvelopeCipher(LocalKms.from_file(keyring)), keep_files=1, shipper=shipper) as log:
        log.rotate()
    first_key = f"prod/n1/{first.name}"
    again_key = posixpath.join("prod/n1", REWRAPPED, f"{first.name}.{hashlib.sha256(rewrapped).hexdigest()[:16]}")
    assert object_store.get(bucket, first_key) == shipped_under_v1
    assert object_store.get(bucket, again_key) == rewrapped
    assert not first.exists() and shipper.shipped_files == 2
