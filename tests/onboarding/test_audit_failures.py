"""An onboarding audit log that cannot be written: refused before anything changes, and once something has
changed, a warning that never costs the action's output (a new key's secret is shown once)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from onboarding.auditing import OnboardingAudit
from onboarding.errors import EXIT_LOCAL, EXIT_NOT_FOUND
from tests.onboarding.conftest import invoke
from tests.security.helpers import unique


def test_an_unwritable_audit_log_is_refused_before_vault_changes(
        vault_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to be `unexpected IsADirectoryError` (exit 1) after the tenant and its key were made: a key
    nobody saw. Rotation was worse: the old key set to expire, its successor's secret never shown."""
    name = unique("auditdir")
    existing = json.loads(invoke("tenants", "create", name, "--json").stdout)
    monkeypatch.setenv("FORESIGHT_AUDIT_LOG", str(tmp_path))  # a directory
    refused_name = unique("auditdir")
    for command in (["tenants", "create", refused_name], ["keys", "rotate", existing["key_id"]],
                    ["keys", "issue", name]):
        refused = invoke(*command, "--json")
        assert refused.exit_code == EXIT_LOCAL, refused.output
        assert json.loads(refused.stdout)["error"] == (
            f"audit log {tmp_path}: cannot be written (Is a directory); nothing was changed: fix the path "
            "(FORESIGHT_AUDIT_LOG) or its permissions")
    monkeypatch.delenv("FORESIGHT_AUDIT_LOG")
    keys = json.loads(invoke("tenants", "show", name, "--json").stdout)["keys"]
    assert [(k["key_id"], k["state"], k["expires"]) for k in keys] == [(existing["key_id"], "active", None)]
    assert invoke("tenants", "show", refused_name).exit_code == EXIT_NOT_FOUND  # the refused create made nothing


def test_a_line_that_cannot_be_written_after_the_check_is_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    audit = OnboardingAudit(tmp_path / "audit" / "onboarding.jsonl")
    audit.check()
    audit.path.unlink()
    audit.path.mkdir()  # something takes the log's place between the check and the record
    with caplog.at_level(logging.WARNING, logger="onboarding.auditing"):
        audit.record("key.issue", tenant="acme", key_id="abcdefghijkl")
    assert [r.getMessage() for r in caplog.records] == [
        f"audit log {audit.path}: key.issue not recorded (Is a directory)"]
