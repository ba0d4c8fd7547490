"""The marketplace VM image templates: `packer validate` (Debian's Packer 1.6.6) passes for each cloud,
and every build ends with hardening and its verify gate."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.images.tools import IMAGES, require_tool

PACKER = IMAGES / "packer"
# Values for the variables without defaults; validate checks them, it does not reach any cloud.
REQUIRED_VARS = {
    "aws": {"build_ssh_cidr": "203.0.113.7/32"},
    "gcp": {"project_id": "foresight-test"},
    "azure": {
        "subscription_id": "00000000-0000-0000-0000-000000000000",
        "resource_group": "foresight-images",
        "gallery_name": "foresight",
        "build_ssh_cidr": "203.0.113.7/32",
    },
}


def packer(*args: str, template: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHECKPOINT_DISABLE": "1"}
    return subprocess.run([require_tool("packer"), *args, str(template)], capture_output=True, text=True, env=env)


def validate(template: Path, cloud: str) -> subprocess.CompletedProcess[str]:
    variables = {**REQUIRED_VARS[cloud], "service_image_archive": "/nonexistent/foresight-image.tar"}
    return packer("validate", *(f"-var={k}={v}" for k, v in variables.items()), template=template)


@pytest.mark.parametrize("cloud", sorted(REQUIRED_VARS))
def test_template_passes_packer_validate(cloud: str) -> None:
    result = validate(PACKER / cloud, cloud)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("cloud", sorted(REQUIRED_VARS))
def test_template_is_packer_fmt_clean(cloud: str) -> None:
    result = packer("fmt", "-check", "-diff", template=PACKER / cloud)
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_rejects_a_template_whose_provisioning_script_is_missing(tmp_path: Path) -> None:
    copy = tmp_path / "packer"
    shutil.copytree(PACKER, copy)
    (copy / "provision" / "80-harden.sh").unlink()
    result = validate(copy / "aws", "aws")
    assert result.returncode != 0
    assert "80-harden.sh" in result.stdout + result.stderr


@pytest.mark.parametrize("cloud", sorted(REQUIRED_VARS))
def test_every_build_hardens_then_verifies_after_everything_else(cloud: str) -> None:
    text = (PACKER / cloud / "foresight.pkr.hcl").read_text()
    scripts = re.findall(r'"\$\{path\.root\}/\.\./provision/([^"]+)"', text)
    assert scripts == [
        "05-apt-https.sh",
        "10-container-runtime.sh",
        "20-service.sh",
        "80-harden.sh",
        "90-verify-hardening.sh",
    ]


def test_azure_build_deprovisions_last() -> None:
    text = (PACKER / "azure" / "foresight.pkr.hcl").read_text()
    assert text.rindex("waagent -force -deprovision+user") > text.rindex("90-verify-hardening.sh")
