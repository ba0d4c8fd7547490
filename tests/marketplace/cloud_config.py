"""A rendered first-boot cloud-config read the way the node reads it: the files it writes, and the command lines
the image's foresight-first-boot.service makes of FIRST_BOOT_ENV (systemd gives `${X}` as one argument and
splits `$X` on whitespace)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from marketplace.launch import FIRST_BOOT_ENV

REPO = Path(__file__).resolve().parents[2]
FIRST_BOOT_UNIT = REPO / "images/packer/files/foresight-first-boot.service"


def written_files(document: dict[str, Any]) -> dict[str, str]:
    """Each `write_files` path and its content, in the order cloud-init writes them."""
    return {entry["path"]: entry["content"] for entry in document["write_files"]}


def first_boot_env(document: dict[str, Any]) -> dict[str, str]:
    """FIRST_BOOT_ENV's `KEY="value"` lines."""
    lines = written_files(document)[FIRST_BOOT_ENV].splitlines()
    return {key: value.removeprefix('"').removesuffix('"') for key, value in (line.split("=", 1) for line in lines)}


def unit_commands(document: dict[str, Any]) -> dict[str, list[str]]:
    """The unit's ExecStartPre= and ExecStart= command lines with this cloud-config's FIRST_BOOT_ENV."""
    environment = first_boot_env(document)

    def expand(word: str) -> list[str]:
        if whole := re.fullmatch(r"\$\{(\w+)\}", word):
            return [environment[whole[1]]]
        if split := re.fullmatch(r"\$(\w+)", word):
            return environment[split[1]].split()
        assert "$" not in word, word
        return [word]

    commands = {}
    for line in FIRST_BOOT_UNIT.read_text().splitlines():
        if match := re.fullmatch(r"(ExecStartPre|ExecStart)=(.*)", line):
            commands[match[1]] = [part for word in match[2].split() for part in expand(word)]
    return commands
