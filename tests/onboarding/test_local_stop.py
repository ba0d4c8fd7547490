"""How long `local down` waits for each process before SIGKILL: the service gets its whole stop budget (drains,
snapshot, audit close), which a fixed 10 s cut short under load, and so lost the warm restart's snapshot."""

from __future__ import annotations

import pytest

from onboarding.local.processes import STOP_TIMEOUT_S, ManagedProcess
from onboarding.local.serve import service_stop_timeout
from onboarding.local.stack import LocalStack
from onboarding.state import StatePaths
from stacks.shutdown import service_stop_s


def test_the_service_gets_its_stop_budget_from_its_grace() -> None:
    assert service_stop_timeout(None) == service_stop_s(10) == 91  # as docker stop --time and TimeoutStopSec
    assert service_stop_timeout(None) > STOP_TIMEOUT_S


def test_down_waits_the_services_budget_and_openbaos_usual_time(
        recorded: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: dict[str, float] = {}

    def stop(process: ManagedProcess, timeout: float = STOP_TIMEOUT_S) -> bool:
        waits[process.name] = timeout
        return True

    monkeypatch.setattr(ManagedProcess, "stop", stop)
    stack = LocalStack(recorded.root)
    assert stack.down() == ["service", "openbao"]
    assert waits == {"service": 91, "openbao": STOP_TIMEOUT_S}
    record = recorded.deployment.read_text().replace('"service_settings": {}', '"service_settings": '
                                                  '{"shutdown_grace_s": "2.5"}')
    recorded.deployment.write_text(record)
    stack.down()
    assert waits["service"] == service_stop_s(3) == 77
    recorded.deployment.write_text("{ damaged")
    stack.down()  # still stops everything, with the default's budget
    assert waits["service"] == 91
