"""Shipping rotated audit files off the machine: to a directory and to S3 (a real moto server), pruning only what
was shipped, and the whole chain recoverable from the copies."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.security.audit import AuditLog, verify_files, write_plaintext
from service.security.audit_shipping import AuditShipper
from service.security.envelope import EnvelopeCipher
from service.security.kms.local import LocalKms
from tests.object_stores import ObjectStore, S3Store, uncached


def login_lines(log: AuditLog, count: int) -> None:
    for i in range(count):
        log.record("auth", actor="key:k", tenant="acme", key_id=f"k{i:011d}", source="127.0.0.1:1")


def decrypted(archives: list[Path], cipher: EnvelopeCipher, into: Path) -> list[Path]:
    into.mkdir(exist_ok=True)
    plain = []
    for archive in archives:
        out = into / archive.with_suffix("").name
        with out.open("wb") as file:
            write_plaintext(archive, file, cipher)
        plain.append(out)
    return plain


def records(*files: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for file in files for line in file.read_bytes().splitlines()]


def test_every_rotated_file_reaches_the_destination_and_the_whole_chain_verifies_from_it(tmp_path: Path) -> None:
    path, bucket = tmp_path / "node" / "audit.jsonl", tmp_path / "bucket"
    cipher = EnvelopeCipher(LocalKms.generate())
    log = AuditLog(path, rotate_bytes=1200, archive=cipher, keep_files=2, shipper=AuditShipper(str(bucket), "n1"))
    login_lines(log, 40)
    log.close()
    kept = sorted(path.parent.glob("audit.*.jsonl.fse"))
    shipped = sorted((bucket / "n1").iterdir())
    assert len(kept) == 2 and len(shipped) >= 6  # ~200-byte lines, 1200-byte files: 6 rotations at least
    assert [p.name for p in shipped[-2:]] == [p.name for p in kept]
    assert all((bucket / "n1" / p.name).read_bytes() == p.read_bytes() for p in kept)  # the very same bytes
    assert (bucket / "n1").stat().st_mode & 0o777 == 0o700 and {p.stat().st_mode & 0o777 for p in shipped} == {0o600}
    # From genesis: every line ever written is in the copies and the live file, pruned files included.
    plain = decrypted(shipped, cipher, tmp_path / "plain")
    bad, verdict = verify_files([*plain, path])
    assert bad is None and verdict.ok, verdict
    pruned = [r for r in records(*plain, path) if r["action"] == "audit.pruned"]
    assert pruned and all(r["details"]["shipped_to"] == f"{bucket}/n1" for r in pruned)
    assert len({n for r in pruned for n in r["details"]["files"]}) == len(shipped) - 2


def test_nothing_unshipped_is_pruned_and_it_all_goes_once_the_destination_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, blocked = tmp_path / "node" / "audit.jsonl", tmp_path / "bucket"
    blocked.write_text("a file where the destination directory should be")
    shipper = AuditShipper(str(blocked), "n1")
    log = AuditLog(path, rotate_bytes=1200, keep_files=1, shipper=shipper)  # no KMS: plaintext files are shipped
    with caplog.at_level(logging.WARNING, "service.security"):
        login_lines(log, 30)
        log.rotate()  # one synchronous pass, so the count below is this pass's
    rotated = sorted(path.parent.glob("audit.*.jsonl"))
    assert len(rotated) >= 5 and log.unshipped == len(rotated)  # nothing deleted: no copy exists anywhere
    assert b"audit.pruned" not in b"".join(p.read_bytes() for p in path.parent.glob("audit*.jsonl"))
    assert any("not shipped" in r.message and "kept" in r.message for r in caplog.records)
    assert any("kept until they are shipped" in r.message for r in caplog.records)

    blocked.unlink()  # the destination comes back: the next pass ships them all, then prunes
    log.rotate()
    log.close()
    assert log.unshipped == 0 and shipper.shipped_files == len(rotated) + 1
    left = sorted(path.parent.glob("audit.*.jsonl"))
    assert len(left) == 1
    bad, verdict = verify_files([*sorted((blocked / "n1").iterdir()), path])
    assert bad is None and verdict.ok, verdict


def test_a_partial_copy_is_shipped_again(tmp_path: Path) -> None:
    """A copy cut short (the machine died mid-upload) has the wrong size: the next start's pass replaces it."""
    path, bucket = tmp_path / "node" / "audit.jsonl", tmp_path / "bucket"
    with AuditLog(path, rotate_bytes=1200, shipper=AuditShipper(str(bucket), "n1")) as log:
        login_lines(log, 10)
    first = sorted(path.parent.glob("audit.*.jsonl"))[0]
    copy = bucket / "n1" / first.name
    copy.write_bytes(first.read_bytes()[:100])
    shipper = AuditShipper(str(bucket), "n1")
    with AuditLog(path, shipper=shipper):
        pass  # the start's background pass, finished by close()
    assert copy.read_bytes() == first.read_bytes() and shipper.shipped_files == 1


def test_shipping_to_each_clouds_store_waits_for_the_bucket_and_the_service_settings_wire_it(
    object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.bootstrap import build_audit
    from service.config import Settings

    bucket = f"trail-{secrets.token_hex(4)}"
    monkeypatch.setenv("FORESIGHT_AUDIT_SHIP_URL", object_store.url(bucket, "prod"))
    monkeypatch.setenv("FORESIGHT_AUDIT_KEEP_FILES", "1")
    cipher = EnvelopeCipher(LocalKms.generate())
    log = build_audit(Settings(data_dir=tmp_path), cipher)
    assert log is not None and log.shipper is not None
    log.rotate_bytes = 1200
    login_lines(log, 20)
    log.rotate()
    assert log.unshipped >= 3  # no such bucket yet: every archive kept
    assert len(list(tmp_path.glob("audit.*.log.fse"))) == log.unshipped
    assert bucket not in object_store.buckets()  # not the shipper's to make

    object_store.create_bucket(bucket)
    log.rotate()
    log.close()
    assert log.unshipped == 0 and len(list(tmp_path.glob("audit.*.log.fse"))) == 1
    listed = object_store.keys(bucket, f"prod/{log.shipper.node}/")
    assert len(listed) == log.shipper.shipped_files >= 4
    assert object_store.get(bucket, listed[-1]) == sorted(tmp_path.glob("audit.*.log.fse"))[-1].read_bytes()


@contextlib.contextmanager
def unanswering_endpoint() -> Iterator[tuple[str, threading.Event]]:
    """An S3 endpoint on the far side of a partition: it takes the connection and the request, and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    reached, held = threading.Event(), []

    def hold() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])
                reached.set()

    threading.Thread(target=hold, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", reached
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_a_destination_that_hangs_does_not_hold_the_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy that never ends holds up neither the archiving of later rotations nor, past SHIP_ON_CLOSE_S, the
    shutdown; nothing unshipped is pruned."""
    from service.security import audit

    monkeypatch.setattr(audit, "SHIP_ON_CLOSE_S", 1.0)
    path = tmp_path / "audit.jsonl"
    with unanswering_endpoint() as (endpoint, reached), uncached("s3"):
        for name, value in S3Store(endpoint).environment.items():
            monkeypatch.setenv(name, value)
        log = AuditLog(path, rotate_bytes=1200, archive=EnvelopeCipher(LocalKms.generate()), keep_files=1,
                       shipper=AuditShipper("s3://audit-trail/prod", "n1"))
        login_lines(log, 10)
        assert reached.wait(10)  # the shipper's copy is under way, and stuck
        login_lines(log, 10)  # later rotations are still archived meanwhile, not left plaintext behind the copy
        deadline = time.monotonic() + 10
        while list(tmp_path.glob("audit.*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not list(tmp_path.glob("audit.*.jsonl")), "archiving waited on the hung copy"
        closing = threading.Thread(target=log.close)
        with caplog.at_level(logging.WARNING, "service.security"):
            closing.start()
            closing.join(8)
            assert not closing.is_alive(), "close() waited on a copy that never ends"
    archives = list(tmp_path.glob("audit.*.jsonl.fse"))
    assert len(archives) >= 3 and b"audit.pruned" not in path.read_bytes()  # none shipped, so none pruned
    assert any("did not finish within 1 s" in r.message and "s3://audit-trail/prod/n1" in r.message
               for r in caplog.records)


@pytest.mark.parametrize(("url", "why"), [("nope://x/y", "Protocol not known"), ("oci://b/p", "Install ocifs")])
def test_a_destination_that_cannot_work_stops_the_start(
    url: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.bootstrap import build_audit
    from service.config import ConfigError, Settings

    monkeypatch.setenv("FORESIGHT_AUDIT_SHIP_URL", url)
    with pytest.raises(ConfigError, match=f"FORESIGHT_AUDIT_SHIP_URL='{url}': .*{why}"):
        build_audit(Settings(data_dir=tmp_path), None)
    assert not (tmp_path / "audit.log").exists()


def test_the_running_service_ships_and_reports_it_in_its_metrics(tmp_path: Path) -> None:
    from service.metrics import render
    from tests.service.harness import running_service

    bucket = tmp_path / "bucket"
    with running_service(dev=True, prefetcher="none", data_dir=tmp_path / "data", audit_ship_url=str(bucket)) as svc:
        audit = svc.state.audit
        assert audit is not None
        audit.rotate()
        audit.rotate()
        exposed = render(svc.state).decode()
    assert "foresight_audit_shipped_files_total 2.0" in exposed and "foresight_audit_unshipped_files 0.0" in exposed
    assert len(list(bucket.glob("*/audit.*.log*"))) == 2


def test_the_image_carries_the_filesystems_of_every_clouds_buckets() -> None:
    """gs:// and az:// origins and audit destinations need gcsfs and adlfs, from the extras the image installs."""
    import fsspec

    listed = subprocess.run([sys.executable, "images/service/requirements.py", "pyproject.toml"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).parents[2]).stdout.split()
    assert {"gcsfs", "adlfs", "s3fs"} <= {re.split(r"[<>=\[]", line)[0] for line in listed}
    packages = {fsspec.get_filesystem_class(p).__module__.split(".")[0] for p in ("s3", "gs", "az")}
    assert packages == {"s3fs", "gcsfs", "adlfs"}


def _cli(*args: str) -> Any:
    """`foresight audit ...` as service/cli.py mounts it."""
    import typer
    from typer.testing import CliRunner

    from service.security.audit_cli import app as audit_app

    root = typer.Typer()
    root.add_typer(audit_app, name="audit")
    return CliRunner().invoke(root, list(args))


def test_audit_verify_and_show_read_a_shipped_folder_by_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring, path, bucket = tmp_path / "keyring.json", tmp_path / "node" / "audit.jsonl", tmp_path / "bucket"
    monkeypatch.setenv("FORESIGHT_KMS_PROVIDER", "local")
    monkeypatch.setenv("FORESIGHT_KMS_KEY_ID", str(keyring))
    log = AuditLog(path, rotate_bytes=1200, archive=EnvelopeCipher(LocalKms.generate(keyring)), keep_files=1,
                   shipper=AuditShipper(str(bucket), "n1"))
    login_lines(log, 30)
    log.close()
    folder = f"file://{bucket}/n1/"
    verified = _cli("audit", "verify", "--json", folder, str(path))
    assert verified.exit_code == 0, verified.output
    lines = json.loads(verified.output)["lines_verified"]
    copies = decrypted(sorted((bucket / "n1").iterdir()), EnvelopeCipher(LocalKms.from_file(keyring)), tmp_path / "p")
    assert lines == len(records(*copies, path)) and len(copies) >= 5  # every line, the pruned files' included
    shown = _cli("audit", "show", folder)
    assert [json.loads(line)["seq"] for line in shown.stdout.splitlines()][:3] == [0, 1, 2]  # from genesis

    second = sorted((bucket / "n1").iterdir())[1]
    altered = bytearray(second.read_bytes())
    altered[-20] ^= 1
    second.write_bytes(bytes(altered))
    tampered = _cli("audit", "verify", "--json", folder, str(path))
    assert tampered.exit_code == 1 and json.loads(tampered.output)["file"] == f"file://{second}"  # named as given
    for missing in (f"file://{bucket}/n2/", str(tmp_path / "nope.jsonl")):
        refused = _cli("audit", "verify", missing)
        assert refused.exit_code == 2 and "no such file" in refused.output
    as_folder = _cli("audit", "verify", str(bucket / "n1"))  # a path, not a URL: the way to give a folder is named
    assert as_folder.exit_code == 2 and f"file://{(bucket / 'n1').resolve()}/" in as_folder.output
    named = _cli("audit", "verify", f"file://{(bucket / 'n1').resolve()}/", str(path))
    assert named.exit_code == 1 and str(second.name) in named.output  # read, and the copy altered above found
    assert not list(Path(tempfile.gettempdir()).glob("foresight-audit-*"))  # the copies went with the command


def test_audit_verify_reads_a_folder_shipped_to_each_clouds_store(
    object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring, path, bucket = tmp_path / "keyring.json", tmp_path / "audit.log", f"verified-{secrets.token_hex(4)}"
    monkeypatch.setenv("FORESIGHT_KMS_PROVIDER", "local")
    monkeypatch.setenv("FORESIGHT_KMS_KEY_ID", str(keyring))
    object_store.create_bucket(bucket)
    log = AuditLog(path, rotate_bytes=1200, archive=EnvelopeCipher(LocalKms.generate(keyring)), keep_files=1,
                   shipper=AuditShipper(object_store.url(bucket, "prod"), "n1"))
    login_lines(log, 20)
    log.close()
    verified = _cli("audit", "verify", "--json", object_store.url(bucket, "prod/n1"), str(path))
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["lines_verified"] >= 20
    empty = _cli("audit", "verify", object_store.url(bucket, "prod/nobody"))
    assert empty.exit_code == 2 and "no such file or folder" in empty.output
