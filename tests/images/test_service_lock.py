"""images/service/requirements.lock, the service image's hash-locked dependencies, is in step with pyproject.toml.

Offline: the lock is read as a file, and pyproject's ranges come from images/service/requirements.py, the list
the lock is made from. When one of these fails, regenerate the lock: `python3 images/service/lock.py compile`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.images.tools import IMAGES, REPO

SERVICE = IMAGES / "service"
LINUX_CPYTHON = {"os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
                 "platform_machine": "x86_64", "implementation_name": "cpython",
                 "platform_python_implementation": "CPython"}
# The interpreters the Dockerfile installs the lock with: its CUDA base's, and the local test build's base's.
TARGETS = {
    "ubuntu-24.04-python3.12": {**LINUX_CPYTHON, "python_version": "3.12", "python_full_version": "3.12.3",
                                "implementation_version": "3.12.3"},
    "debian-bookworm-python3.11": {**LINUX_CPYTHON, "python_version": "3.11", "python_full_version": "3.11.2",
                                   "implementation_version": "3.11.2"},
}
# They come with torch, in the Dockerfile's torch layer, from the PyTorch wheel index.
TORCHS_OWN = re.compile(r"torch.*|triton|nvidia-.*|cuda-.*")


def load_lock_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("service_lock", SERVICE / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock_tool = load_lock_tool()


def image_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and the image's extras, torch left out, as requirements.py prints them."""
    listed = subprocess.run([sys.executable, str(SERVICE / "requirements.py"), str(REPO / "pyproject.toml"),
                             "--no-torch"], check=True, capture_output=True, text=True).stdout
    return [Requirement(line) for line in listed.splitlines() if line.strip()]


def locked() -> list[tuple[Requirement, tuple[str, ...]]]:
    return [(Requirement(entry.requirement), entry.hashes) for entry in lock_tool.entries(lock_tool.LOCK.read_text())]


def pins_for(environment: dict[str, str]) -> dict[str, list[Version]]:
    """Every version the lock pins for one interpreter, by package name."""
    pins: dict[str, list[Version]] = {}
    for requirement, _ in locked():
        if requirement.marker is None or requirement.marker.evaluate(environment):
            versions = [Version(spec.version) for spec in requirement.specifier if spec.operator == "=="]
            pins.setdefault(canonicalize_name(requirement.name), []).extend(versions)
    return pins


@pytest.mark.parametrize("target", TARGETS)
def test_every_image_requirement_is_pinned_within_pyprojects_range(target: str) -> None:
    environment = TARGETS[target]
    pins = pins_for(environment)
    wrong = []
    for requirement in image_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        versions = pins.get(canonicalize_name(requirement.name), [])
        if not any(requirement.specifier.contains(version, prereleases=True) for version in versions):
            wrong.append(f"{requirement}: the lock pins {[str(v) for v in versions] or 'nothing'}")
    assert not wrong, "out of step with pyproject.toml, run `python3 images/service/lock.py compile`:\n" + "\n".join(
        wrong)


@pytest.mark.parametrize("target", TARGETS)
def test_each_interpreter_gets_one_exact_pin_of_each_package(target: str) -> None:
    for requirement, _ in locked():
        assert not requirement.url and not requirement.extras, requirement
        assert [(s.operator, "*" in s.version) for s in requirement.specifier] == [("==", False)], requirement
    duplicated = {name: versions for name, versions in pins_for(TARGETS[target]).items() if len(versions) != 1}
    assert not duplicated


def test_every_entry_has_sha256_hashes() -> None:
    entries = locked()
    assert len(entries) >= len({canonicalize_name(r.name) for r in image_requirements()})
    for requirement, hashes in entries:
        assert hashes, f"{requirement} has no --hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), (requirement, hashes)


def test_nothing_pins_torch_or_its_cuda_libraries() -> None:
    names = [canonicalize_name(requirement.name) for requirement, _ in locked()]
    assert not [name for name in names if TORCHS_OWN.fullmatch(name)]


def test_the_lock_names_the_command_that_regenerates_it() -> None:
    assert lock_tool.COMPILE_COMMAND in lock_tool.LOCK.read_text().split("\n", 3)[1]


def test_environment_is_packagings_default_environment() -> None:
    """`lock.py environment` runs in a bare base image, so it copies packaging's function with the stdlib."""
    assert lock_tool.environment() == default_environment()


def test_select_prints_the_entries_one_interpreter_installs_with_their_hashes(tmp_path: Path) -> None:
    environment = tmp_path / "environment.json"
    environment.write_text(json.dumps(TARGETS["debian-bookworm-python3.11"]))
    selected = subprocess.run([sys.executable, str(SERVICE / "lock.py"), "select", str(environment)],
                              check=True, capture_output=True, text=True).stdout.splitlines()
    expected = {name: versions[0] for name, versions in pins_for(TARGETS["debian-bookworm-python3.11"]).items()}
    chosen = {}
    for line in selected:
        requirement, *hashes = line.split()
        assert hashes and all(h.startswith("--hash=sha256:") for h in hashes), line
        name, _, version = requirement.partition("==")
        chosen[canonicalize_name(name)] = Version(version)
    assert chosen == expected
