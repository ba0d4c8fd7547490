"""A stack for one cloud never imports another cloud's SDK: each program runs in a fresh interpreter with an
import hook that records any attempt."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.stacks.mockrun import ROOT

SDKS = {
    "aws": ("pulumi_aws", "boto3", "botocore"),
    "gcp": ("pulumi_gcp", "google.cloud", "googleapiclient"),
    "azure": ("pulumi_azure", "azure"),
}
CONFIGS = {"aws": "REQUIRED_CONFIG", "gcp": "GCP_REQUIRED_CONFIG", "azure": "AZURE_REQUIRED_CONFIG"}


@pytest.mark.parametrize("cloud", sorted(SDKS))
def test_a_clouds_program_never_imports_another_clouds_sdk(cloud: str) -> None:
    others = tuple(prefix for other, prefixes in SDKS.items() if other != cloud for prefix in prefixes)
    script = textwrap.dedent(
        f"""
        import json, sys
        attempts = []

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.startswith({others!r}):
                    attempts.append(name)
                return None

        sys.meta_path.insert(0, Blocker())
        from tests.stacks.mockrun import {CONFIGS[cloud]} as config, run_program
        run = run_program(config)
        loaded = sorted(m for m in sys.modules if m.startswith({others!r}))
        print(json.dumps({{"attempts": attempts, "loaded": loaded, "types": sorted({{r.type for r in run}})}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert f"foresight:{cloud}:GpuNode" in report["types"]
    assert report["attempts"] == [] and report["loaded"] == []
