"""The VM image's systemd unit and shell scripts: systemd-analyze and shellcheck find nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.images.tools import IMAGES, require_tool

UNIT = IMAGES / "packer" / "files" / "foresight.service"
SCRIPTS = sorted(IMAGES.rglob("*.sh"))


def stub_root(root: Path) -> None:
    """A root with what the unit refers to outside itself: a docker binary and the units it orders after."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/docker").write_text("#!/bin/sh\n")
    (root / "usr/bin/docker").chmod(0o755)
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "docker.service").write_text("[Service]\nExecStart=/usr/bin/docker\n")
    for name in (
        "network-online.target",
        "multi-user.target",
        "basic.target",
        "sysinit.target",
        "shutdown.target",
        "sockets.target",
        "timers.target",
        "paths.target",
        "slices.target",
        "local-fs.target",
        "swap.target",
        "network.target",
        "system.slice",
        "-.slice",
    ):
        host_unit = Path("/usr/lib/systemd/system", name)
        if host_unit.exists():
            shutil.copy(host_unit, units / name)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    stub_root(tmp_path)
    result = subprocess.run([analyze, "verify", f"--root={tmp_path}", UNIT.name], capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_systemd_unit_waits_for_instance_configuration() -> None:
    text = UNIT.read_text()
    assert "ConditionPathExists=/etc/foresight/foresight.env" in text
    assert "--gpus all" in text and "--cap-drop ALL" in text and "--read-only" in text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(IMAGES)))
def test_shell_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run(
        [require_tool("shellcheck"), "--severity=info", str(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
