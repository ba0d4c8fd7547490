"""`foresight bench prefetch-load`: real servers, real redis-benchmark, small runs."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from service.bench.cli import app

runner = CliRunner()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--prefetchers", "stride,oracle", "unknown prefetcher(s): oracle"),
    ("--isolation", "process,fork", "--isolation takes process and/or thread, got 'process,fork'"),
])
def test_prefetch_load_rejects_bad_input_before_starting_anything(option: str, value: str, message: str) -> None:
    out = runner.invoke(app, ["prefetch-load", option, value])
    assert out.exit_code == 2
    assert message in out.output
    assert "Traceback" not in out.output


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="needs redis-tools")
def test_prefetch_load_reports_each_prefetcher_and_isolation_against_none_per_pipeline() -> None:
    out = runner.invoke(app, ["prefetch-load", "--prefetchers", "stride", "--requests", "2000", "--rounds", "1",
                              "--cpu-share", "0.2", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["cpu_share"] == 0.2
    rows = {(f["prefetcher"], f["isolation"], f["pipeline"]): f for f in report["figures"]}
    arms = {("none", ""), ("stride", "process"), ("stride", "thread")}
    assert set(rows) == {(*arm, pipeline) for arm in arms for pipeline in (1, 16)}
    for pipeline in (1, 16):
        none = rows[("none", "", pipeline)]
        assert none["rps_ratio"] == 1.0 and none["predicted"] is None
        for isolation in ("process", "thread"):
            stride = rows[("stride", isolation, pipeline)]
            assert stride["rps"] > 0 and stride["p99_ms"] > 0
            assert stride["rps_ratio"] == pytest.approx(stride["rps"] / none["rps"])
            assert 0 < stride["predicted"] <= 1  # read from the server's own metrics


def test_learned_cost_reports_both_schedules_with_parts_that_add_up() -> None:
    out = runner.invoke(app, ["learned-cost", "--warmup", "3072", "--reads", "512", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    baseline, settled = report["costs"]
    assert (baseline["schedule"], settled["schedule"]) == ("every-1024", "settled")
    for cost in (baseline, settled):
        assert cost["device"] == "cpu" and cost["us_per_read"] > 0
        assert {"features", "shadows", "inference"} <= set(cost["parts_us"])
        assert sum(cost["parts_us"].values()) <= cost["us_per_read"]  # parts are timed inside the whole
    assert report["ratio"] == pytest.approx(settled["us_per_read"] / baseline["us_per_read"])


@pytest.mark.parametrize(("device", "message"), [("tpu", "--device must be cpu or cuda, got 'tpu'"),
                                                 ("cuda", "torch sees no CUDA device")])
def test_learned_cost_refuses_a_device_it_cannot_run(device: str, message: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = runner.invoke(app, ["learned-cost", "--device", device])
    assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output
