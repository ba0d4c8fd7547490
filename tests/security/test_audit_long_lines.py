"""A log whose last line is longer than one read from the end still opens, and a prune of thousands of files
writes short lines: the start must never refuse a log that `foresight audit verify` calls intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import service.security.audit as audit_module
from service.security.audit import AuditLog, verify_files


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_a_last_line_longer_than_the_tail_read_reopens(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync="never") as log:
        log.record("auth", actor="key:k", tenant="acme")
        log.record("tenant.note", actor="admin:ops", note="n" * (3 * audit_module._TAIL_BYTES))
    assert len(lines_of(path)[-1]) > 3 * audit_module._TAIL_BYTES
    assert verify_files([path])[0] is None

    with AuditLog(path, fsync="never") as log:  # refused before: "ends in a line that does not verify"
        log.record("auth", actor="key:k", tenant="acme")
    bad, verdict = verify_files([path])
    assert bad is None and verdict.ok and verdict.lines == 4, verdict


def test_a_torn_line_after_a_long_line_is_cut_and_the_long_line_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync="never") as log:
        log.record("tenant.note", actor="admin:ops", note="n" * (2 * audit_module._TAIL_BYTES))
    intact = path.read_bytes()
    with path.open("ab") as file:
        file.write(b'{"action":"auth","act')  # the process died mid-write
    with AuditLog(path, fsync="never"):
        pass
    written = path.read_bytes()
    assert written.startswith(intact) and json.loads(written.splitlines()[-1])["action"] == "audit.recovered"
    assert verify_files([path])[0] is None


def test_a_prune_of_many_files_is_split_into_short_lines_and_still_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "PRUNED_NAMES_PER_LINE", 4)
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync="never") as log:
        for _ in range(11):
            log.record("auth", actor="key:k", tenant="acme")
            log.rotate()
    rotated = sorted(tmp_path.glob("audit.*.jsonl"))
    with AuditLog(path, fsync="never", keep_files=1):  # the operator lowered the limit: the start prunes ten
        pass
    pruned = [json.loads(line) for line in lines_of(path) if b'"audit.pruned"' in line]
    assert [len(r["details"]["files"]) for r in pruned] == [4, 4, 2]
    assert [name for r in pruned for name in r["details"]["files"]] == [p.name for p in rotated[:-1]]
    assert sorted(tmp_path.glob("audit.*.jsonl")) == rotated[-1:]
    bad, verdict = verify_files([rotated[-1], path])
    assert bad is None and verdict.ok, verdict
