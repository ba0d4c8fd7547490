"""images/service/requirements.lock: the service image's dependencies, every version pinned and every file hashed.

The lock is requirements.py's list without torch, resolved with every transitive dependency for all platforms
and every Python from 3.11 on (a universal lock, wheels only), so the one file installs on the CUDA image's
Ubuntu 24.04 python3.12 and on the local test build's Debian bookworm python3.11 alike. torch, and what torch
itself depends on, come in a layer of their own from the PyTorch wheel index (see the Dockerfile).

    python3 images/service/lock.py compile [UV_OPTION ...]   regenerate the lock (uv and PyPI)
    python3 images/service/lock.py environment                this interpreter's PEP 508 marker values, as JSON
    python3 images/service/lock.py select ENVIRONMENT.json    the lock's entries that install there, one a line

`compile` keeps every pin that still satisfies pyproject.toml; `--upgrade` or `--upgrade-package NAME` moves
them. It runs uv from $UV or PATH. `environment` needs the standard library only, so it runs in a bare base
image; images/test-image.sh fills its wheelhouse with `select`'s output for its base image, because pip download
evaluates a requirement file's markers with the Python that downloads, not the image's.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
LOCK = HERE / "requirements.lock"
REQUIREMENTS = HERE / "requirements.py"
# .parent twice, not .parents[1]: read from stdin in a base image, HERE is "/".
PYPROJECT = HERE.parent.parent / "pyproject.toml"
# pyproject's requires-python: a universal lock from this version on also covers every newer one.
OLDEST_PYTHON = "3.11"
COMPILE_COMMAND = "python3 images/service/lock.py compile"


class Entry(NamedTuple):
    """One package in the lock: `name==version`, with `; marker` where it applies to some interpreters only."""

    requirement: str
    hashes: tuple[str, ...]


def entries(text: str) -> list[Entry]:
    """The entries of a pip requirements file as uv writes it: continuation lines joined, comments dropped."""
    found: list[Entry] = []
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += " " + line.rstrip().removesuffix("\\")
        if line.rstrip().endswith("\\"):
            continue
        words = logical.split()
        logical = ""
        if not words:
            continue
        hashes = tuple(word.removeprefix("--hash=") for word in words if word.startswith("--hash="))
        found.append(Entry(" ".join(word for word in words if not word.startswith("--hash=")), hashes))
    return found


def environment() -> dict[str, str]:
    """PEP 508's marker variables for the running interpreter (packaging's default_environment, stdlib only)."""
    implementation = sys.implementation.version
    implementation_version = f"{implementation.major}.{implementation.minor}.{implementation.micro}"
    if implementation.releaselevel != "final":
        implementation_version += f"{implementation.releaselevel[0]}{implementation.serial}"
    return {
        "implementation_name": sys.implementation.name,
        "implementation_version": implementation_version,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def compile_lock(uv_options: list[str]) -> int:
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        print("lock.py: uv not found: `python3 -m venv /tmp/uv && /tmp/uv/bin/pip install uv`, then "
              "UV=/tmp/uv/bin/uv python3 images/service/lock.py compile", file=sys.stderr)
        return 1
    listed = subprocess.run([sys.executable, str(REQUIREMENTS), str(PYPROJECT), "--no-torch"],
                            check=True, capture_output=True, text=True).stdout
    subprocess.run([uv, "pip", "compile", "-", "--output-file", str(LOCK), "--quiet",
                    "--universal", "--python-version", OLDEST_PYTHON, "--only-binary", ":all:",
                    "--generate-hashes", "--custom-compile-command", COMPILE_COMMAND, *uv_options],
                   input=listed, text=True, check=True)
    print(f"{LOCK.relative_to(PYPROJECT.parent)}: {len(entries(LOCK.read_text()))} entries")
    return 0


def print_environment(arguments: list[str]) -> int:
    if arguments:
        return usage()
    print(json.dumps(environment(), indent=1))
    return 0


def select(arguments: list[str]) -> int:
    if len(arguments) != 1:
        return usage()
    # Imported here: `environment` runs where only the standard library is.
    from packaging.requirements import Requirement

    target = json.loads(Path(arguments[0]).read_text())
    for entry in entries(LOCK.read_text()):
        requirement = Requirement(entry.requirement)
        if requirement.marker is None or requirement.marker.evaluate(target):
            print(" ".join([f"{requirement.name}{requirement.specifier}", *(f"--hash={h}" for h in entry.hashes)]))
    return 0


def usage() -> int:
    print(__doc__, file=sys.stderr)
    return 2


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "compile": compile_lock,
    "environment": print_environment,
    "select": select,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        return usage()
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
