"""Every cloud-config file under images/ passes `cloud-init schema`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.images.tools import IMAGES, require_tool

CLOUD_CONFIGS = sorted(
    path
    for path in IMAGES.rglob("*")
    if path.is_file() and path.suffix in {".yaml", ".yml", ".cfg"} and path.read_text().startswith("#cloud-config")
)


def schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("cloud-init"), "schema", "--config-file", str(path)], capture_output=True, text=True
    )


def test_the_vm_image_ships_cloud_configs() -> None:
    names = {path.name for path in CLOUD_CONFIGS}
    assert {"99-foresight-hardening.cfg", "user-data.example.yaml"} <= names, names


@pytest.mark.parametrize("path", CLOUD_CONFIGS, ids=lambda p: str(p.relative_to(IMAGES)))
def test_cloud_config_passes_cloud_init_schema(path: Path) -> None:
    result = schema(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_schema_check_rejects_an_invalid_cloud_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cfg"
    bad.write_text("#cloud-config\nssh_pwauth: sometimes\nwrite_files: not-a-list\n")
    assert schema(bad).returncode != 0
