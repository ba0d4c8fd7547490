"""`foresight local rewrap --retire` with audit shipping configured: the copies already in the bucket stay wrapped
under the old key versions (a rewrap moves only the machine's files), so retiring those versions is refused, with
nothing stopped or changed, unless the operator accepts losing that trail."""

from __future__ import annotations

import json

import pytest

from onboarding.local.openbao import OpenBao
from onboarding.local.processes import STOP_TIMEOUT_S, ManagedProcess
from onboarding.state import StatePaths
from tests.onboarding.conftest import invoke


def ship_audit_to(paths: StatePaths, url: str) -> None:
    record = json.loads(paths.deployment.read_text())
    record["service_settings"] = {"audit_ship_url": url}
    paths.deployment.write_text(json.dumps(record))


@pytest.fixture
def stops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The processes a command stopped; OpenBao answers as a sealed one (exit 5 once a command gets that far)."""
    stopped: list[str] = []
    monkeypatch.setattr(OpenBao, "health", lambda self: 503)

    def stop(process: ManagedProcess, timeout: float = STOP_TIMEOUT_S) -> bool:
        stopped.append(process.name)
        return True

    monkeypatch.setattr(ManagedProcess, "stop", stop)
    return stopped


def test_retiring_is_refused_while_the_audit_trail_is_shipped(recorded: StatePaths, stops: list[str]) -> None:
    ship_audit_to(recorded, "s3://trail/prod")
    before = recorded.deployment.read_bytes()
    refused = invoke("local", "rewrap", "--rotate", "--retire", "--json")
    assert refused.exit_code == 2, refused.output
    error = json.loads(refused.stdout)["error"]
    assert "s3://trail/prod" in error and "retention" in error and "--retire-despite-shipped-audit" in error
    assert stops == [] and recorded.deployment.read_bytes() == before  # nothing stopped, nothing written
    assert not recorded.onboarding_audit.exists()


def test_the_acknowledgement_lets_the_retirement_go_on(recorded: StatePaths, stops: list[str]) -> None:
    ship_audit_to(recorded, "s3://trail/prod")
    acknowledged = invoke("local", "rewrap", "--rotate", "--retire", "--retire-despite-shipped-audit", "--json")
    assert acknowledged.exit_code == 5, acknowledged.output  # past the check: on to OpenBao, which is not running
    assert "OpenBao is not active" in json.loads(acknowledged.stdout)["error"]


def test_without_shipping_or_without_retiring_nothing_is_refused(recorded: StatePaths, stops: list[str]) -> None:
    assert invoke("local", "rewrap", "--rotate", "--retire").exit_code == 5  # no audit_ship_url
    ship_audit_to(recorded, "s3://trail/prod")
    assert invoke("local", "rewrap", "--rotate").exit_code == 5  # shipped archives keep their (live) version
    alone = invoke("local", "rewrap", "--retire-despite-shipped-audit")
    assert alone.exit_code == 2 and "only goes with --retire" in alone.output
