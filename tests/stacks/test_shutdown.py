"""One stop budget for the VM unit, the image's unit and the pod, in step with the service's own waits."""

from __future__ import annotations

import re

from service.config import Settings
from service.security.audit import SHIP_ON_CLOSE_S
from stacks import shutdown
from stacks.cloudinit import VM_STOP_S, render_unit
from tests.images.tools import IMAGES


def _stop_times(unit: str) -> tuple[int, int]:
    docker = re.search(r"^ExecStop=/usr/bin/docker stop --time (\d+) ", unit, re.M)
    systemd = re.search(r"^TimeoutStopSec=(\d+)s?$", unit, re.M)
    assert docker and systemd, unit
    return int(docker[1]), int(systemd[1])


def test_the_budget_holds_the_services_own_waits() -> None:
    assert shutdown.AUDIT_CLOSE_ALLOWANCE_S >= SHIP_ON_CLOSE_S  # the repeated numbers kept in step with the service
    assert Settings().shutdown_grace_s == shutdown.SERVICE_DEFAULT_GRACE_S
    assert shutdown.service_stop_s(10) == 10 + 11 + shutdown.SNAPSHOT_ALLOWANCE_S + SHIP_ON_CLOSE_S


def test_the_vm_units_give_the_service_its_whole_stop_before_any_kill() -> None:
    stacks_unit = _stop_times(render_unit("registry.example/foresight:1"))
    image_unit = _stop_times((IMAGES / "packer" / "files" / "foresight.service").read_text())
    assert stacks_unit == image_unit == (VM_STOP_S, VM_STOP_S + shutdown.UNIT_STOP_MARGIN_S)
    assert shutdown.service_stop_s(Settings().shutdown_grace_s) == VM_STOP_S  # docker's SIGKILL only past it all
