"""Locating the image tooling: Debian packages on PATH, linters in images/install-tools.sh's virtualenv.

Outside CI a missing tool skips its tests with the command that installs it; in CI (CI=true) it fails them,
so a machine without the tools can never pass the image checks by skipping them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
TOOLS_BIN = Path(os.environ.get("FORESIGHT_TOOLS_DIR", Path.home() / ".cache/foresight/tools")) / "bin"

HOW_TO_INSTALL = {
    "hadolint": "images/install-tools.sh",
    "checkov": "images/install-tools.sh",
    "packer": "apt-get install packer",
    "cloud-init": "apt-get install cloud-init",
    "shellcheck": "apt-get install shellcheck",
    "systemd-analyze": "apt-get install systemd",
    "podman": "apt-get install podman buildah runc netavark iptables",
    "debootstrap": "apt-get install debootstrap",
    "redis-cli": "apt-get install redis-tools",
}


def require_tool(name: str) -> str:
    """The tool's path; skips (or, in CI, fails) the calling test when it is not installed."""
    found = shutil.which(name) or shutil.which(name, path=str(TOOLS_BIN))
    if found:
        return found
    message = f"{name} is not installed; run: {HOW_TO_INSTALL.get(name, name)}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
