"""`foresight bench prefetch-load`: real servers, real redis-benchmark, small runs."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from service.bench.cli import app

runner = CliRunner()


def test_prefetch_load_rejects_an_unknown_prefetcher_before_starting_anything() -> None:
    out = runner.invoke(app, ["prefetch-load", "--prefetchers", "stride,oracle"])
    assert out.exit_code == 2
    assert "unknown prefetcher(s): oracle" in out.output
    assert "Traceback" not in out.output


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="needs redis-tools")
def test_prefetch_load_reports_each_prefetcher_against_none_per_pipeline() -> None:
    out = runner.invoke(app, ["prefetch-load", "--prefetchers", "stride", "--requests", "2000", "--rounds", "1",
                              "--cpu-share", "0.2", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["cpu_share"] == 0.2
    rows = {(f["prefetcher"], f["pipeline"]): f for f in report["figures"]}
    assert set(rows) == {("none", 1), ("stride", 1), ("none", 16), ("stride", 16)}
    for pipeline in (1, 16):
        assert rows[("none", pipeline)]["rps_ratio"] == 1.0
        stride = rows[("stride", pipeline)]
        assert stride["rps"] > 0 and stride["p99_ms"] > 0
        assert stride["rps_ratio"] == pytest.approx(stride["rps"] / rows[("none", pipeline)]["rps"])
