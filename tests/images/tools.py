"""Locating the image tooling: Debian packages on PATH, linters in the project's virtualenv or
images/install-tools.sh's.

Outside CI a missing tool skips its tests with the command that installs it; in CI (CI=true) it fails them,
so a machine without the tools can never pass the image checks by skipping them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
TOOLS_BIN = Path(os.environ.get("FORESIGHT_TOOLS_DIR", Path.home() / ".cache/foresight/tools")) / "bin"

HOW_TO_INSTALL = {
    "hadolint": "images/install-tools.sh",
    "checkov": "images/install-tools.sh",
    "azurite-blob": "images/install-tools.sh",
    "cfn-lint": "scripts/setup.sh test (pyproject's test extra)",
    "packer": "apt-get install packer",
    "cloud-init": "apt-get install cloud-init",
    "shellcheck": "apt-get install shellcheck",
    "systemd-analyze": "apt-get install systemd",
    "podman": "apt-get install podman buildah runc netavark iptables",
    "debootstrap": "apt-get install debootstrap",
    "redis-cli": "apt-get install redis-tools",
}


# Tools no registry this project may use (PyPI, Debian, npm) ships: their tests skip, in CI too, and say so.
NOT_INSTALLABLE = {"terraform": "HashiCorp's release binary (no PyPI, Debian or npm package)"}


def run_checkov(target: Path, framework: str, cwd: Path | None = None, timeout: float = 300) -> dict[str, Any]:
    """checkov's JSON report on one file or directory for one framework (offline: --skip-download)."""
    where = "--directory" if target.is_dir() else "--file"
    command = [require_tool("checkov"), where, str(target), "--framework", framework, "--skip-download", "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def require_tool(name: str) -> str:
    """The tool's path; skips (or, in CI, fails) the calling test when it is not installed."""
    beside_python = Path(sys.executable).parent  # the project's virtualenv, not on PATH under .venv/bin/python
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join([str(beside_python), str(TOOLS_BIN)]))
    if found:
        return found
    if name in NOT_INSTALLABLE:
        pytest.skip(f"{name} is not installed; it comes only as {NOT_INSTALLABLE[name]}")
    message = f"{name} is not installed; run: {HOW_TO_INSTALL.get(name, name)}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
