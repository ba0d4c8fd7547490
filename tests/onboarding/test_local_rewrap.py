"""`foresight local rewrap`'s child process: bounded in time (the service is down while it runs), its progress
passed on, its other output kept for the error. The whole procedure on a real deployment is in test_local.py."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from onboarding.errors import LocalFailure
from onboarding.local import rewrap


def _service(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(process_env=lambda: {"PATH": "/usr/bin:/bin"}, paths=SimpleNamespace(root=tmp_path))


def test_a_hung_rewrap_is_stopped_at_its_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that never ends (and holds stderr open) used to hang `local rewrap`, the service down meanwhile."""
    monkeypatch.setattr(rewrap, "KMS_REWRAP", ("-c", "import time, sys; print('x', file=sys.stderr); time.sleep(60)"))
    monkeypatch.setattr(rewrap, "REWRAP_TIMEOUT_S", 1.0)
    started = time.monotonic()
    with pytest.raises(LocalFailure, match="did not finish in 1s; it was stopped"):
        rewrap._run_kms_rewrap(_service(tmp_path), dry_run=False)  # type: ignore[arg-type]
    assert time.monotonic() - started < 10


def test_progress_is_passed_on_and_the_rest_explains_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = "import sys; print('rewrap: [1/1] f', file=sys.stderr); print('Traceback: boom', file=sys.stderr)"
    monkeypatch.setattr(rewrap, "KMS_REWRAP", ("-c", script))
    with pytest.raises(LocalFailure, match="exited 0: Traceback: boom"):
        rewrap._run_kms_rewrap(_service(tmp_path), dry_run=False)  # type: ignore[arg-type]
    assert capsys.readouterr().err == "rewrap: [1/1] f\n"
