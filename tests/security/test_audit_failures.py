"""The audit chain survives a full disk and a crash at any point of a rotation: no false "tampered" verdict."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import service.bootstrap
import service.security.audit as audit_module
from service.security.audit import AuditLog, AuditLogError, AuditSecretError, verify_files
from service.security.audit_cli import app
from service.security.envelope import EnvelopeCipher
from service.security.kms.local import LocalKms
from tests.security.test_audit import decrypt_archive


class Died(BaseException):
    """The process dies here: nothing below this point runs, no `except Exception` sees it."""


def _die(log: AuditLog) -> None:
    """What the kernel does for a dead process: its descriptors (and so the writer's lock) are closed."""
    for fd in (log._fd, log._lock_fd):
        if fd >= 0:
            os.close(fd)


def _chain(directory: Path, live: str = "audit.log") -> list[Path]:
    """The files `audit verify` is given: rotated ones oldest first, then the live one if it exists."""
    rotated = sorted(p for p in directory.iterdir() if p.name.startswith("audit.2") and p.suffix == ".log")
    return rotated + [p for p in [directory / live] if p.exists()]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_a_partial_write_on_a_full_disk_is_cut_off_and_the_chain_stays_verifiable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write() returns a short count once the disk fills, then ENOSPC: the partial line must not stay."""
    path = tmp_path / "audit.log"
    log = AuditLog(path, fsync="never")
    log.record("auth", actor="key:aaaaaaaaaaaa", tenant="acme")
    good_size = path.stat().st_size
    real_write = os.write
    calls = []

    def fill_disk(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(audit_module.os, "write", fill_disk)
    with pytest.raises(AuditLogError, match="the event was not recorded: No space left on device"):
        log.record("auth", actor="key:bbbbbbbbbbbb", tenant="acme")
    monkeypatch.undo()
    assert len(calls) == 2  # the rest of the line was tried before giving up
    assert path.stat().st_size == good_size
    log.record("auth", actor="key:cccccccccccc", tenant="acme")  # space freed
    log.close()
    bad, verdict = verify_files([path])
    assert bad is None and verdict.ok, verdict
    assert [r["actor"] for r in _records(path)] == ["system", "key:aaaaaaaaaaaa", "key:cccccccccccc"]


def test_a_partial_line_that_cannot_be_cut_off_closes_the_log_and_reopening_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, fsync="never")
    real_write = os.write

    def short(fd: int, data: bytes) -> int:
        if len(data) > 20:
            return real_write(fd, data[:20])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(audit_module.os, "write", short)
    monkeypatch.setattr(audit_module.os, "ftruncate", no_truncate)
    with pytest.raises(AuditLogError, match=r"could not be cut off .*reopening it removes the partial line"):
        log.record("auth", actor="key:aaaaaaaaaaaa")
    monkeypatch.undo()
    with pytest.raises(AuditLogError, match="is closed"):  # nothing is glued onto the partial line
        log.record("auth", actor="key:bbbbbbbbbbbb")
    log.close()
    with AuditLog(path) as reopened:
        reopened.record("auth", actor="key:cccccccccccc")
    assert verify_files([path])[1].ok


def _crash_on_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """After audit.close is appended, before the file is synced and moved aside."""
    monkeypatch.setattr(audit_module.os, "fsync", lambda fd: (_ for _ in ()).throw(Died()))


def _crash_on_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the closed file is synced, before it is moved aside."""
    monkeypatch.setattr(audit_module.os, "replace", lambda src, dst: (_ for _ in ()).throw(Died()))


def _crash_on_new_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the closed file is moved aside, before the new live file exists."""
    real_open = os.open

    def open_(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_EXCL:
            raise Died()
        return real_open(path, flags, *args)

    monkeypatch.setattr(audit_module.os, "open", open_)


def _crash_on_open_line(written: int) -> Callable[[pytest.MonkeyPatch], None]:
    """After the new live file is created, having written `written` bytes of its audit.open line."""

    def patch(monkeypatch: pytest.MonkeyPatch) -> None:
        real_write = os.write

        def write(fd: int, data: bytes) -> int:
            if b'"audit.open"' in data:
                real_write(fd, data[:written])
                raise Died()
            return real_write(fd, data)

        monkeypatch.setattr(audit_module.os, "write", write)

    return patch


CRASH_POINTS = {
    "after the close line": _crash_on_fsync,
    "before the rename": _crash_on_replace,
    "after the rename": _crash_on_new_file,
    "new file empty": _crash_on_open_line(0),
    "new file torn": _crash_on_open_line(30),
}


@pytest.mark.parametrize("crash", CRASH_POINTS.values(), ids=CRASH_POINTS.keys())
@pytest.mark.parametrize("archived", [False, True], ids=["plain", "archived"])
def test_a_crash_anywhere_in_a_rotation_leaves_a_chain_that_verifies_after_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: Callable[[pytest.MonkeyPatch], None], archived: bool
) -> None:
    path = tmp_path / "audit.log"
    cipher = EnvelopeCipher(LocalKms.generate()) if archived else None
    log = AuditLog(path, fsync="never", archive=cipher)
    log.rotate()  # an earlier, complete rotation: the crash is in the second
    log.record("auth", actor="key:aaaaaaaaaaaa")
    crash(monkeypatch)
    with pytest.raises(Died):
        log.rotate()
    monkeypatch.undo()
    _die(log)

    if crash is not CRASH_POINTS["new file torn"]:  # a torn last line is reported until a writer trims it
        assert verify_files(_chain(tmp_path), cipher=cipher)[1].ok  # the state the crash left, as it is

    restarted = AuditLog(path, fsync="never", archive=cipher)
    restarted.record("auth", actor="key:bbbbbbbbbbbb")
    restarted.close()
    plain = _chain(tmp_path)
    if archived:
        for archive in sorted(tmp_path.glob("audit.2*.log.fse")):
            decrypt_archive(archive, archive.with_suffix(""), cipher)
        plain = _chain(tmp_path)
    bad, verdict = verify_files(plain)
    assert bad is None and verdict.ok, (bad, verdict)
    assert verdict.lines == 7  # open, close | open, auth, close | open (finishing the rotation), auth
    actors = [r["actor"] for p in plain for r in _records(p)]
    assert actors.count("key:aaaaaaaaaaaa") == actors.count("key:bbbbbbbbbbbb") == 1
    opened = _records(plain[-1])[0]
    assert opened["action"] == "audit.open" and opened["details"]["completed_interrupted_rotation"] is True


def test_an_empty_live_file_after_an_unclosed_one_is_still_tampering(tmp_path: Path) -> None:
    """Only the state a crash leaves passes: an empty live file after a *closed* one."""
    path = tmp_path / "audit.log"
    AuditLog(path).close()
    empty = tmp_path / "audit.next.log"
    empty.write_bytes(b"")
    assert verify_files([empty])[1].reason == "empty file"
    bad, verdict = verify_files([path, empty])
    assert bad == path and "does not end with audit.close" in (verdict.reason or "")


@pytest.mark.parametrize(
    "value",
    [
        "b.AAAAAQ" + "Kx-_9" * 31,  # OpenBao batch token (162 characters from OpenBao 2)
        "s." + "B" * 24,  # old-style service token
        "hvb." + "C" * 130,  # batch token
        "hvs." + "D" * 90,  # service token
        "fsadm_" + "E" * 43,  # Foresight admin token
    ],
)
def test_scrub_refuses_vault_batch_and_admin_tokens(tmp_path: Path, value: str) -> None:
    with AuditLog(tmp_path / "audit.log") as log, pytest.raises(AuditSecretError, match="shaped like a credential"):
        log.record("admin.action", actor="admin:ops", note=f"got {value} from the client")


def test_cli_verify_never_calls_a_kms_sdk_failure_tampered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An SDK error no provider mapped (Azure's raw ValueError, say) says nothing about the archive: exit 3."""
    keyring = tmp_path / "keyring.json"
    kms = LocalKms.generate(keyring)
    log = AuditLog(tmp_path / "audit.log", archive=EnvelopeCipher(kms))
    archive = log.rotate()
    log.close()

    class BrokenSdk(LocalKms):
        def unwrap(self, wrapped: Any) -> bytes:
            raise ValueError("the SDK's own error")

    broken = EnvelopeCipher(BrokenSdk(kms._keys, kms._primary))
    monkeypatch.setattr(service.bootstrap, "build_cipher", lambda settings, vault: broken)
    monkeypatch.setenv("FORESIGHT_KMS_PROVIDER", "local")
    monkeypatch.setenv("FORESIGHT_KMS_KEY_ID", str(keyring))
    result = CliRunner().invoke(app, ["verify", str(archive), str(tmp_path / "audit.log")])
    assert result.exit_code == 3, result.output
    assert "could not finish (ValueError); this says nothing about tampering" in result.output
