"""What every launch template shares: the first-boot script, and the options each template hands it are ones
that cloud's first_boot module accepts (so a renamed option cannot slip past the templates' own tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from marketplace.aws import first_boot as aws_first_boot
from marketplace.aws import template as aws_template
from marketplace.azure import first_boot as azure_first_boot
from marketplace.azure import template as azure_template
from marketplace.gcp import first_boot as gcp_first_boot
from marketplace.gcp import template as gcp_template
from marketplace.launch import FIRST_BOOT
from tests.images.tools import require_tool


def test_the_first_boot_script_passes_shellcheck() -> None:
    result = subprocess.run([require_tool("shellcheck"), str(FIRST_BOOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("user_data", "module"),
    [
        (aws_template.user_data_text, aws_first_boot),
        (azure_template.custom_data_text, azure_first_boot),
        (gcp_template.user_data_text, gcp_first_boot),
    ],
    ids=["aws", "azure", "gcp"],
)
def test_each_template_runs_its_clouds_first_boot_with_options_it_accepts(user_data, module, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    command = yaml.safe_load(user_data())["runcmd"][-1]
    cloud, options = command[1], command[3:]
    assert module.__name__ == f"marketplace.{cloud}.first_boot"
    parsed = vars(module.arguments().parse_args([*options, "--out", str(tmp_path)]))  # exits 2 on a bad option
    pairs = zip(options[::2], options[1::2], strict=True)
    given = {option.removeprefix("--").replace("-", "_"): value for option, value in pairs}
    assert {name: parsed[name] for name in given} == given
    required = {a.dest for a in module.arguments()._actions if a.required} - {"out"}
    assert required <= set(given)  # every option the module needs is passed
