"""The hash-chained audit log and `foresight audit verify`."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import service.security.audit as audit_module
from service.security.apikeys import new_key
from service.security.audit import (
    ARCHIVE_AAD,
    GENESIS,
    AuditLog,
    AuditLogError,
    AuditSecretError,
    line_hash,
    verify_files,
    verify_lines,
    write_plaintext,
)
from service.security.audit_cli import app as audit_app
from service.security.envelope import EnvelopeCipher
from service.security.kms.base import KmsUnavailable, WrappedKey
from service.security.kms.local import LocalKms


def write_events(path: Path, count: int = 5) -> AuditLog:
    log = AuditLog(path, fsync="always")
    for i in range(count):
        log.auth_success(tenant="acme", key_id=f"key{i:09d}", source=f"10.0.0.{i}:5000", listener="resp")
    return log


def decrypt_archive(archive: Path, out: Path, cipher: EnvelopeCipher) -> None:
    """An archive's lines, decrypted and decompressed, as a plaintext file `out` (for verify_files and reading)."""
    with out.open("wb") as file:
        write_plaintext(archive, file, cipher)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def verdict_of(lines: list[bytes]):  # type: ignore[no-untyped-def]
    return verify_lines(lines)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_events(path).close()
    return path


def test_lines_carry_who_what_where_when_and_chain(log_file: Path) -> None:
    records = [json.loads(line) for line in lines_of(log_file)]
    assert records[0]["action"] == "audit.open"
    assert records[0]["prev"] == GENESIS
    first = records[1]
    assert {k: first[k] for k in ("action", "outcome", "actor", "tenant", "key_id", "source")} == {
        "action": "auth",
        "outcome": "success",
        "actor": "key:key000000000",
        "tenant": "acme",
        "key_id": "key000000000",
        "source": "10.0.0.0:5000",
    }
    assert first["time"].endswith("Z")
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"] == line_hash(before)
    assert log_file.stat().st_mode & 0o777 == 0o600


def test_intact_log_verifies(log_file: Path) -> None:
    verdict = verdict_of(lines_of(log_file))
    assert verdict.ok
    assert verdict.lines == 6
    assert not verdict.closed


def test_edited_line_is_detected(log_file: Path) -> None:
    lines = lines_of(log_file)
    lines[3] = lines[3].replace(b'"tenant":"acme"', b'"tenant":"evil"')
    verdict = verdict_of(lines)
    assert (verdict.ok, verdict.bad_line) == (False, 4)
    assert "edited" in (verdict.reason or "")


def test_edited_line_with_recomputed_hash_breaks_the_next_link(log_file: Path) -> None:
    lines = lines_of(log_file)
    record = json.loads(lines[2])
    record["outcome"] = "failure"
    record["hash"] = line_hash(record)
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    verdict = verdict_of(lines)
    assert (verdict.ok, verdict.bad_line) == (False, 4)


@pytest.mark.parametrize(
    ("mutate", "bad_line", "reason"),
    [
        (lambda ls: ls[:2] + ls[3:], 3, "dropped"),
        (lambda ls: [*ls[:2], ls[3], ls[2], *ls[4:]], 3, "reordered"),
        (lambda ls: [*ls[:3], ls[1], *ls[3:]], 4, "inserted"),
        (lambda ls: ls[1:], 1, "dropped from the start"),
        (lambda ls: [*ls[:-1], ls[-1][:-10]], 6, "incomplete"),
        (lambda ls: [*ls[:3], b"not json\n", *ls[3:]], 4, "invalid JSON"),
    ],
)
def test_dropped_reordered_inserted_and_torn_lines_are_detected(log_file: Path, mutate, bad_line, reason) -> None:  # type: ignore[no-untyped-def]
    verdict = verdict_of(mutate(lines_of(log_file)))
    assert (verdict.ok, verdict.bad_line) == (False, bad_line)
    assert reason in (verdict.reason or "")


def test_lines_dropped_from_the_end_are_caught_with_the_recorded_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = write_events(path)
    head = log.head
    log.close()
    path.write_bytes(b"".join(lines_of(path)[:-2]))
    assert verify_lines(lines_of(path)).ok  # a shorter chain is still a chain...
    verdict = verify_lines(lines_of(path), expect_head=head)  # ...unless the head was recorded elsewhere
    assert not verdict.ok
    assert "dropped from the end" in (verdict.reason or "")


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(path, 2).close()
    with AuditLog(path) as log:
        log.record("tenant.create", actor="admin:ops", tenant="beta", source="10.1.1.1:443")
    records = [json.loads(line) for line in lines_of(path)]
    assert [r["seq"] for r in records] == [0, 1, 2, 3]
    assert verify_lines(lines_of(path)).ok


def test_torn_last_line_is_trimmed_and_recorded_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(path, 2).close()
    with path.open("ab") as file:
        file.write(b'{"seq":3,"action":"au')  # the process died mid-write
    with AuditLog(path) as log:
        log.record("key.revoke", actor="admin:ops", tenant="acme", key_id="abcdefghijkl")
    records = [json.loads(line) for line in lines_of(path)]
    assert records[-2]["action"] == "audit.recovered"
    assert records[-2]["details"] == {"discarded_bytes": 21}
    assert verify_lines(lines_of(path)).ok


def test_refuses_to_append_to_a_log_that_ends_badly(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(path, 2).close()
    lines = lines_of(path)
    path.write_bytes(b"".join([*lines[:-1], lines[-1].replace(b"acme", b"evil")]))
    with pytest.raises(AuditLogError, match="does not verify"):
        AuditLog(path)


def test_rotation_chains_files_and_encrypts_the_archive(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    cipher = EnvelopeCipher(LocalKms.generate())
    log = AuditLog(path, rotate_bytes=1200, archive=cipher)
    for i in range(12):
        log.record("auth", actor="key:k", tenant="acme", key_id=f"k{i:011d}", source="127.0.0.1:1")
    log.close()
    archives = sorted(tmp_path.glob("audit.*.jsonl.fse"))
    assert len(archives) >= 2
    assert not list(tmp_path.glob("audit.*.jsonl"))  # no plaintext left behind
    plain = []
    for archive in archives:
        out = archive.with_suffix("")
        decrypt_archive(archive, out, cipher)
        plain.append(out)
    bad, verdict = verify_files([*plain, path])
    assert bad is None, verdict
    assert verdict.ok
    dropped_middle = [plain[0], path] if len(plain) > 1 else [path]
    bad, verdict = verify_files(dropped_middle)
    assert bad is not None


def test_keep_files_deletes_the_oldest_rotated_files_after_naming_them_and_the_rest_still_verifies(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    cipher = EnvelopeCipher(LocalKms.generate())
    log = AuditLog(path, rotate_bytes=1200, archive=cipher, keep_files=2)
    for i in range(30):
        log.record("auth", actor="key:k", tenant="acme", key_id=f"k{i:011d}", source="127.0.0.1:1")
    log.close()
    archives = sorted(tmp_path.glob("audit.*.jsonl.fse"))
    assert len(archives) == 2
    plain = []
    (tmp_path / "plain").mkdir()
    for archive in archives:
        out = tmp_path / "plain" / archive.with_suffix("").name  # not beside the log: it would count as rotated
        decrypt_archive(archive, out, cipher)
        plain.append(out)
    records = [json.loads(line) for file in [*plain, path] for line in lines_of(file)]
    deleted = {name for r in records if r["action"] == "audit.pruned" for name in r["details"]["files"]}
    assert len(deleted | {a.name for a in archives}) >= 5  # ~200-byte lines, 1200-byte files: 5 rotations at least
    assert all(name < archives[0].name for name in deleted)  # the oldest went
    assert not any((tmp_path / name).exists() for name in deleted)
    bad, verdict = verify_files([*plain, path])  # the files kept: the chain from the oldest one left
    assert bad is None, verdict
    assert verdict.lines == sum(len(lines_of(p)) for p in [*plain, path])

    # A lowered limit takes effect when the log is next opened.
    AuditLog(path, keep_files=1).close()
    assert [p.name for p in sorted(tmp_path.glob("audit.*.jsonl.fse"))] == [archives[1].name]
    last = json.loads(lines_of(path)[-1])
    assert last["action"] == "audit.pruned" and last["details"]["files"] == [archives[0].name]


def test_without_keep_files_every_rotated_file_stays(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, rotate_bytes=1200)
    for i in range(30):
        log.record("auth", actor="key:k", tenant="acme", key_id=f"k{i:011d}", source="127.0.0.1:1")
    log.close()
    assert len(list(tmp_path.glob("audit.*.jsonl"))) >= 5
    assert b"audit.pruned" not in b"".join(p.read_bytes() for p in tmp_path.glob("audit*.jsonl"))
    with pytest.raises(ValueError, match="at least 1"):
        AuditLog(tmp_path / "other.jsonl", keep_files=0)


@pytest.mark.parametrize(
    "fields",
    [
        {"details_token": "x"},
        {"api_key": "x"},
        {"password": "hunter2"},
        {"note": "client sent fsk_abcdefghijkl_" + "A" * 43},
        {"note": "hvs.CAESIJ" + "a" * 30},
        {"nested": {"list": ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig"]}},
        {"pem": "-----BEGIN EC PRIVATE KEY-----\nMHc..."},
        {"blob": b"bytes"},
    ],
)
def test_scrub_refuses_anything_that_looks_like_a_secret(tmp_path: Path, fields: dict) -> None:
    with AuditLog(tmp_path / "audit.jsonl") as log:
        with pytest.raises(AuditSecretError) as info:
            log.record("admin.action", actor="admin:ops", **fields)
        assert "hunter2" not in str(info.value)
        assert "AAAA" not in str(info.value)


def test_an_issued_key_can_never_reach_the_file(tmp_path: Path) -> None:
    key = new_key()
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        for attempt in ({"source": key.secret}, {"actor": key.secret}, {"tenant": key.secret}):
            with pytest.raises(AuditSecretError):
                log.record("auth", **{"actor": "x", **attempt})
        log.auth_failure(key_id=key.key_id, source="1.2.3.4:5", listener="http", reason="revoked")
    text = path.read_text()
    assert key.key_id in text
    assert key.secret not in text
    assert key.secret.split("_", 2)[2] not in text


def cli() -> typer.Typer:
    """The root CLI mounts the audit group like this (service/cli.py)."""
    root = typer.Typer()
    root.add_typer(audit_app, name="audit")
    return root


def test_cli_verify_exit_codes_and_messages(log_file: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli(), ["audit", "verify", str(log_file)])
    assert ok.exit_code == 0, ok.output
    assert "ok: 6 lines verified" in ok.output
    lines = lines_of(log_file)
    log_file.write_bytes(b"".join([lines[0], lines[1], lines[3], lines[2], *lines[4:]]))
    bad = runner.invoke(cli(), ["audit", "verify", str(log_file)])
    assert bad.exit_code == 1
    assert f"{log_file}:3:" in bad.output


def test_cli_verify_json(log_file: Path) -> None:
    result = CliRunner().invoke(cli(), ["audit", "verify", "--json", str(log_file)])
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["ok"] is True
    assert report["lines_verified"] == 6
    assert len(report["head"]) == 64
    lines = lines_of(log_file)
    log_file.write_bytes(b"".join(lines[:2] + lines[3:]))
    result = CliRunner().invoke(cli(), ["audit", "verify", "--json", "--head", report["head"], str(log_file)])
    assert result.exit_code == 1
    assert json.loads(result.output)["line"] == 3


def test_cli_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["audit", "verify", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2


def test_foresight_audit_verify_through_the_real_cli(log_file: Path) -> None:
    run = [sys.executable, "-c", "from service.cli import main; main()", "audit", "verify", str(log_file)]
    ok = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "ok: 6 lines verified" in ok.stdout
    lines = lines_of(log_file)
    log_file.write_bytes(b"".join(lines[:4] + lines[5:]))
    bad = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert f"{log_file}:5:" in bad.stderr


def test_a_shipped_head_still_verifies_after_the_log_grew(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = write_events(path, 3)
    shipped = log.head  # recorded off the box; the log carries on
    log.record("tenant.create", actor="admin:ops", tenant="beta")
    log.close()
    assert verify_lines(lines_of(path), expect_head=shipped).ok
    assert verify_files([path], expect_head=shipped)[0] is None
    path.write_bytes(b"".join(lines_of(path)[:3]))  # dropped from the end back past the shipped head
    verdict = verify_lines(lines_of(path), expect_head=shipped)
    assert not verdict.ok and "dropped from the end" in (verdict.reason or "")
    assert verify_files([path], expect_head=shipped)[0] == path
    assert not verify_lines(lines_of(path), expect_head="f" * 64).ok  # a head the log never had


def test_a_head_shipped_before_a_rotation_verifies_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = write_events(path, 2)
    shipped = log.head
    rotated = log.rotate()
    log.record("tenant.create", actor="admin:ops", tenant="beta")
    log.close()
    bad, verdict = verify_files([rotated, path], expect_head=shipped)
    assert bad is None, verdict
    bad, verdict = verify_files([path], expect_head=shipped)  # not in the files given
    assert bad == path and "dropped from the end" in (verdict.reason or "")


def test_a_second_writer_on_the_same_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = write_events(path, 1)
    with pytest.raises(AuditLogError, match=f"{path}.*already open"):
        AuditLog(path)
    code = (
        "import sys\nfrom pathlib import Path\nfrom service.security.audit import AuditLog, AuditLogError\n"
        "try:\n    AuditLog(Path(sys.argv[1]))\nexcept AuditLogError as err:\n    print(err)\n    sys.exit(3)\n"
    )
    other = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert other.returncode == 3 and str(path) in other.stdout
    first.record("tenant.create", actor="admin:ops", tenant="beta")
    first.close()
    with AuditLog(path) as reopened:  # the lock goes with the writer
        reopened.record("tenant.delete", actor="admin:ops", tenant="beta")
    assert verify_lines(lines_of(path)).ok


class FlakyKms(LocalKms):
    down = False

    def wrap(self, dek: bytes) -> WrappedKey:
        if self.down:
            raise KmsUnavailable("KMS unreachable")
        return super().wrap(dek)


def test_kms_failure_during_rotation_fails_no_event_and_the_archive_is_encrypted_later(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    kms = FlakyKms({"v1": b"k" * 32}, "v1")
    cipher = EnvelopeCipher(kms)
    log = AuditLog(path, archive=cipher, rotate_bytes=600)
    kms.down = True
    for i in range(3):
        log.record("auth", actor=f"key:{i}")  # rotates, the KMS refuses: the event stands, no exception
    plaintext = sorted(tmp_path.glob("audit.*.jsonl"))
    assert plaintext and not list(tmp_path.glob("*.fse"))
    log.close()  # still down: close's own try fails too
    assert sorted(tmp_path.glob("audit.*.jsonl")) == plaintext
    kms.down = False
    reopened = AuditLog(path, archive=cipher, rotate_bytes=600)  # retried at open
    assert not list(tmp_path.glob("audit.*.jsonl")) and len(list(tmp_path.glob("*.fse"))) == len(plaintext)
    kms.down = True
    reopened.rotate()
    kms.down = False
    archive = reopened.rotate()  # ...and at the next rotation, with this rotation's own file
    assert archive.suffix == ".fse"
    kms.down = True
    reopened.rotate()
    kms.down = False
    reopened.close()  # ...and at close, which a rotation racing with it would otherwise leave in plaintext
    assert not list(tmp_path.glob("audit.*.jsonl")) and len(list(tmp_path.glob("*.fse"))) == len(plaintext) + 3
    plain = []
    for encrypted in sorted(tmp_path.glob("*.fse")):
        decrypt_archive(encrypted, encrypted.with_suffix(""), cipher)
        plain.append(encrypted.with_suffix(""))
    assert verify_files([*plain, path])[0] is None


class HeldKms(LocalKms):
    """A KMS whose wrap waits for `release`: a KMS slow to answer, held as long as the test needs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked = threading.Event()
        self.release = threading.Event()

    def wrap(self, dek: bytes) -> WrappedKey:
        self.asked.set()
        assert self.release.wait(30)
        return super().wrap(dek)


def test_logins_are_recorded_while_a_rotated_file_waits_for_the_kms(tmp_path: Path) -> None:
    """Archiving runs beside the writers: a login is not held up by the KMS (or the compression) of a rotation."""
    path = tmp_path / "audit.jsonl"
    kms = HeldKms({"v1": os.urandom(32)}, "v1")
    log = AuditLog(path, rotate_bytes=1200, archive=EnvelopeCipher(kms))
    for i in range(20):  # past 1200 bytes: the rotation's file goes to the archiver, which waits for the KMS
        log.record("auth", actor="key:k", tenant="acme", key_id=f"k{i:011d}", source="127.0.0.1:1")
        if list(tmp_path.glob("audit.*.jsonl")):
            break
    assert kms.asked.wait(10)
    log.record("auth", actor="key:late", tenant="acme", key_id="k00000000099", source="127.0.0.1:2")
    assert b"key:late" in path.read_bytes()  # written while the archive still waits
    assert not list(tmp_path.glob("*.fse"))
    kms.release.set()
    log.close()  # finishes the archive first
    [archive] = tmp_path.glob("*.fse")
    assert not list(tmp_path.glob("audit.*.jsonl"))
    bad, verdict = verify_files([archive, path], cipher=EnvelopeCipher(kms))
    assert bad is None and verdict.lines == i + 5, verdict  # open, i + 1 records, close | open, late


def test_archives_are_compressed_inside_the_envelope_and_older_uncompressed_ones_still_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    cipher = EnvelopeCipher(LocalKms.generate())
    log = AuditLog(path, archive=cipher)
    for i in range(2000):
        log.auth_success(tenant="acme", key_id=f"k{i % 50:011d}", source=f"10.0.0.{i % 250}:5000", listener="resp")
    plain_size = path.stat().st_size
    archive = log.rotate()
    log.close()
    inner = tmp_path / "inner"
    cipher.decrypt_file(archive, inner, ARCHIVE_AAD)
    assert inner.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert archive.stat().st_size < plain_size / 3
    out = tmp_path / "out.jsonl"
    decrypt_archive(archive, out, cipher)
    assert len(out.read_bytes()) > plain_size  # every line, and the audit.close
    assert verify_files([archive, path], cipher=cipher)[0] is None

    # An archive from before compression: the rotated file's JSON lines encrypted as they were.
    older = archive.with_name(archive.name.removesuffix(".fse"))
    older.write_bytes(out.read_bytes())
    archive.unlink()
    cipher.encrypt_file(older, archive, ARCHIVE_AAD)
    older.unlink()
    bad, verdict = verify_files([archive, path], cipher=cipher)
    assert bad is None and verdict.ok


def test_a_failed_rotation_never_closes_a_reused_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    log = write_events(path, 1)

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_module.os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        log.rotate()
    monkeypatch.undo()
    with (tmp_path / "other").open("wb") as other:  # likely takes the log's old descriptor number
        log.close()
        other.write(b"still open")
        other.flush()
        os.fstat(other.fileno())
    assert (tmp_path / "other").read_bytes() == b"still open"


def _foresight(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
    return subprocess.run([sys.executable, "-c", "from service.cli import main; main()", *args], capture_output=True,
                          text=True, timeout=60, env={**base, **(env or {})})


def _alter(archive: Path) -> None:
    """Flip one bit of the last segment's ciphertext."""
    altered = bytearray(archive.read_bytes())
    altered[-20] ^= 1
    archive.write_bytes(bytes(altered))


def _archived_log(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A log as the service leaves it (an archived rotation, then the live file), and the KMS settings to read it."""
    keyring = tmp_path / "keyring.json"
    path = tmp_path / "audit.log"
    log = AuditLog(path, archive=EnvelopeCipher(LocalKms.generate(keyring)))
    log.record("tenant.create", actor="admin:ops", tenant="acme")
    archive = log.rotate()
    log.record("tenant.delete", actor="admin:ops", tenant="acme")
    log.close()
    return archive, path, {"FORESIGHT_KMS_PROVIDER": "local", "FORESIGHT_KMS_KEY_ID": str(keyring)}


def test_cli_show_prints_archived_and_live_lines_for_jq_and_refuses_an_altered_archive(tmp_path: Path) -> None:
    archive, path, kms = _archived_log(tmp_path)

    shown = _foresight("audit", "show", str(archive), str(path), env=kms)
    assert shown.returncode == 0, shown.stderr
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["action"] for r in records] == [
        "audit.open", "tenant.create", "audit.close", "audit.open", "tenant.delete"
    ]
    assert [r["seq"] for r in records] == list(range(5))  # the whole chain, in order

    no_kms = _foresight("audit", "show", str(archive), env={})
    assert no_kms.returncode == 3 and no_kms.stdout == ""
    assert no_kms.stderr.startswith(f"error: {archive} is an encrypted audit archive")

    _alter(archive)
    bad = _foresight("audit", "show", str(path), str(archive), env=kms)
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"tampered: {archive}: encrypted archive fails authentication")
    assert [json.loads(line)["action"] for line in bad.stdout.splitlines()] == ["audit.open", "tenant.delete"]


def test_cli_show_into_a_reader_that_stops_early_is_no_error(tmp_path: Path) -> None:
    """`audit show ... | head`: with an archive among the files the broken pipe was taken for a KMS failure (exit 3,
    "verifying the archives could not finish")."""
    archive, path, kms = _archived_log(tmp_path)
    log = AuditLog(path, archive=EnvelopeCipher(LocalKms.generate(tmp_path / "unused.json")))
    for _ in range(5000):  # more than a pipe holds, so the writer is still writing when the reader leaves
        log.record("auth_success", actor="tenant:acme", tenant="acme")
    log.close()
    base = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
    show = subprocess.Popen([sys.executable, "-c", "from service.cli import main; main()", "audit", "show",
                             str(archive), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**base, **kms})
    assert show.stdout is not None and show.stderr is not None
    assert json.loads(show.stdout.readline())["action"] == "audit.open"
    show.stdout.close()
    assert show.wait(timeout=60) == 0
    assert show.stderr.read() == b""


def test_cli_verifies_an_archived_rotation_with_the_services_kms_and_never_calls_it_tampered(tmp_path: Path) -> None:
    """The service encrypts every rotated file (service/bootstrap.py); verify decrypts it with the same KMS
    settings, and without them says it cannot verify (exit 3), which is no verdict on the file."""
    archive, path, kms = _archived_log(tmp_path)
    assert archive.suffix == ".fse"

    no_kms = _foresight("audit", "verify", str(archive), str(path))
    assert no_kms.returncode == 3
    assert "tampered" not in no_kms.stderr
    assert no_kms.stderr.startswith(f"error: {archive} is an encrypted audit archive: verifying it needs the KMS")
    assert "FORESIGHT_KMS_PROVIDER" in no_kms.stderr
    as_json = _foresight("audit", "verify", "--json", str(archive), str(path))
    assert json.loads(as_json.stdout)["exit_code"] == 3

    ok = _foresight("audit", "verify", str(archive), str(path), env=kms)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: 5 lines verified, open (live file)")

    _alter(archive)
    bad = _foresight("audit", "verify", str(archive), str(path), env=kms)
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"tampered: {archive}:1: encrypted archive fails authentication")

    missing = _foresight("audit", "verify", str(archive), str(path), env={**kms, "FORESIGHT_KMS_KEY_ID": "/nope.json"})
    assert missing.returncode == 3
    assert missing.stderr == "error: local keyring /nope.json (FORESIGHT_KMS_KEY_ID) does not exist\n"
    assert not Path("/nope.json").exists()  # never a new keyring, which would decrypt nothing


@pytest.mark.parametrize("head", ["deadbeef", "g" * 64, "0" * 65])
def test_cli_refuses_a_malformed_head_as_bad_input_not_tampering(log_file: Path, head: str) -> None:
    result = _foresight("audit", "verify", "--head", head, str(log_file))
    assert result.returncode == 2
    assert result.stderr == (f"error: --head {head!r}: not a hash (expected 64 hex characters, the `head` that "
                             "`audit verify --json` prints)\n")
    assert result.stdout == ""
    as_json = _foresight("audit", "verify", "--json", "--head", head, str(log_file))
    assert json.loads(as_json.stdout)["exit_code"] == 2


def test_the_services_settings_set_rotation_size_and_files_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.bootstrap import build_audit
    from service.config import Settings

    monkeypatch.setenv("FORESIGHT_AUDIT_ROTATE_MB", "2")
    monkeypatch.setenv("FORESIGHT_AUDIT_KEEP_FILES", "3")
    log = build_audit(Settings(data_dir=tmp_path), None)
    assert log is not None
    with log:
        assert (log.rotate_bytes, log.keep_files) == (2 * 1024 * 1024, 3)
    monkeypatch.setenv("FORESIGHT_AUDIT_KEEP_FILES", "0")  # keep them all
    log = build_audit(Settings(data_dir=tmp_path), None)
    assert log is not None
    with log:
        assert (log.rotate_bytes, log.keep_files) == (2 * 1024 * 1024, None)
    monkeypatch.delenv("FORESIGHT_AUDIT_ROTATE_MB")
    monkeypatch.delenv("FORESIGHT_AUDIT_KEEP_FILES")
    default = Settings(data_dir=tmp_path)
    assert (default.audit_rotate_mb, default.audit_keep_files) == (64, 64)
