"""Built and run for real with podman: the service image serves TLS traffic, and the VM hardening holds.

Slow (minutes) and root-only: they drive images/test-image.sh and images/packer/test-hardening.sh, which
build on a Debian base made by debootstrap, so no registry is needed.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.images.tools import IMAGES, require_tool

pytestmark = pytest.mark.slow


def run_script(script: str, timeout_s: int) -> str:
    if os.geteuid() != 0:
        pytest.skip("building images with podman and debootstrap needs root")
    for tool in ("podman", "debootstrap"):
        require_tool(tool)
    result = subprocess.run(
        ["bash", str(IMAGES / script)], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    print(result.stderr, result.stdout)  # progress and timings, shown with -rA or -s
    return result.stdout + result.stderr


@pytest.mark.timeout(1800)
def test_service_image_builds_and_serves_resp_and_https_over_tls() -> None:
    require_tool("redis-cli")
    output = run_script("test-image.sh", timeout_s=1700)
    assert "answers 200" in output
    assert "PING/SET/GET with the tenant key" in output
    assert "exited 0" in output


@pytest.mark.timeout(600)
def test_vm_image_hardening_passes_its_gate_on_a_real_system() -> None:
    output = run_script("packer/test-hardening.sh", timeout_s=540)
    assert "verify gate rejects the dirty machine" in output
    assert "hardening verified" in output
