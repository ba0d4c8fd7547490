"""The replay harness: ARC Table IV reproduction, lead semantics, the CLI and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from service.bench.cli import app
from service.bench.replay import ReplayError, replay, resolve_cache_size
from service.bench.traces import Trace, load_trace
from service.prefetch.base import NoPrefetcher
from service.prefetch.stride import StridePrefetcher

TRACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces"
OLTP = TRACES / "arc-OLTP.lis.zst"


@pytest.mark.skipif(not OLTP.exists(), reason="needs ../shared/traces")
def test_lru_without_prefetch_reproduces_arc_table_iv() -> None:
    # Megiddo & Modha, FAST 2003, Table IV: LRU hit ratio on OLTP is 32.83% at c=1000 pages.
    trace = load_trace(OLTP)
    result = replay(trace, 1000, NoPrefetcher(), policy="lru")
    assert result.requests == 914_145
    assert round(100 * (1 - result.miss_ratio), 2) == 32.83


def sequential(n: int) -> Trace:
    return Trace("seq", np.arange(n, dtype=np.int64))


def test_stride_turns_a_scan_into_hits_at_lead_zero() -> None:
    result = replay(sequential(1000), 10, StridePrefetcher(lead=0), lead=0)
    assert result.misses < 10
    assert result.prefetch_used > 980


def test_a_prefetch_lands_lead_requests_after_it_is_issued() -> None:
    # A next-key guess (distance 1) with lead 3 always lands after its key was read: never used.
    too_late = replay(sequential(500), 50, _NextKeyOnly(lead=3), lead=3)
    assert too_late.prefetch_used == 0
    assert too_late.prefetch_late > 400
    # A stride prefetcher that knows the lead predicts 4 ahead and catches the scan.
    on_time = replay(sequential(500), 50, StridePrefetcher(lead=3), lead=3)
    assert on_time.misses < 20


class _NextKeyOnly(StridePrefetcher):
    name = "next-only"

    def access(self, key: int):  # type: ignore[no-untyped-def]
        from service.prefetch.base import Prediction

        return [Prediction(key + 1, 1.0)]


def test_cache_size_options_are_exclusive_and_validated() -> None:
    with pytest.raises(ReplayError, match="not both"):
        resolve_cache_size(100, 0.1, 10)
    with pytest.raises(ReplayError):
        resolve_cache_size(100, 1.5, None)
    assert resolve_cache_size(1000, 0.01, None) == 10


runner = CliRunner()


def test_cli_replay_prints_the_required_json_fields(tmp_path: Path) -> None:
    path = tmp_path / "scan.txt"
    path.write_text("\n".join(str(i % 300) for i in range(3000)))
    out = runner.invoke(app, ["replay", str(path), "--cache-size", "50", "--prefetcher", "stride", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    for field in (
        "requests",
        "unique",
        "cache_size",
        "hits",
        "misses",
        "miss_ratio",
        "prefetch_issued",
        "prefetch_used",
        "seconds",
    ):
        assert field in result
    assert result["requests"] == 3000
    assert result["unique"] == 300


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "/nonexistent/trace.lis"], "not found"),
        (["replay", "{trace}", "--format", "parquet"], "unknown trace format"),
        (["replay", "{trace}", "--cache-frac", "0.1", "--cache-size", "5"], "not both"),
        (["replay", "{trace}", "--policy", "fifo"], "unknown eviction policy"),
        (["replay", "{trace}", "--prefetcher", "oracle"], "unknown prefetcher"),
    ],
)
def test_cli_rejects_bad_input_with_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    trace = tmp_path / "k.txt"
    trace.write_text("1\n2\n3\n")
    out = runner.invoke(app, [a.format(trace=trace) for a in args])
    assert out.exit_code == 2
    assert message in out.output
    assert "Traceback" not in out.output


def test_report_writes_table_and_json(tmp_path: Path) -> None:
    trace = tmp_path / "scan.txt"
    trace.write_text("\n".join(str(i % 400) for i in range(4000)))
    out = runner.invoke(
        app,
        [
            "report",
            str(trace),
            "--out",
            str(tmp_path / "r"),
            "--prefetchers",
            "none,stride,markov",
            "--fracs",
            "0.05",
            "--leads",
            "0",
        ],
    )
    assert out.exit_code == 0, out.output
    table = (tmp_path / "r" / "results.md").read_text()
    assert "| scan | 5% (20) |" in table
    rows = json.loads((tmp_path / "r" / "results.json").read_text())
    assert {r["prefetcher"] for r in rows} == {"none", "stride", "markov"}


def _loop_trace(path: Path, keys: int = 400, requests: int = 4000) -> Path:
    path.write_text("\n".join(str(i % keys) for i in range(requests)))
    return path


@pytest.mark.parametrize(("out", "message"), [
    ("file", "--out {out}: exists and is not a directory"),
    ("file/sub", "--out {out}: a parent of it is not a directory"),
])
def test_report_checks_out_before_running_anything(tmp_path: Path, out: str, message: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    trace = _loop_trace(tmp_path / "scan.txt")
    result = runner.invoke(app, ["report", str(trace), "--out", str(tmp_path / out), "--prefetchers", "none",
                                 "--fracs", "0.05", "--leads", "0"])
    assert result.exit_code == 2
    assert result.output == f"error: {message.format(out=tmp_path / out)}\n"  # no unit ran


def test_report_keeps_the_finished_cells_when_a_later_unit_fails(tmp_path: Path) -> None:
    good = _loop_trace(tmp_path / "big.txt", requests=8000)  # larger: its units run first
    broken = tmp_path / "small.txt.gz"
    broken.write_bytes(b"not gzip")
    out = tmp_path / "r"
    result = runner.invoke(app, ["report", str(good), str(broken), "--out", str(out), "--prefetchers",
                                 "none,stride", "--fracs", "0.05,0.1", "--leads", "0"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"stopped: the 4 cells finished are in {out / 'results.jsonl'}" in result.stderr
    assert result.stderr.endswith(f"error: {broken}: cannot read: Not a gzipped file (b'no')\n")
    cells = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(c["trace"], c["prefetcher"], c["cache_frac"]) for c in cells} == {
        ("big", p, f) for p in ("none", "stride") for f in (0.05, 0.1)}


def test_report_json_lists_files_and_cells_and_says_when_plots_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    trace = _loop_trace(tmp_path / "scan.txt")
    out = tmp_path / "r"
    result = runner.invoke(app, ["report", str(trace), "--out", str(out), "--prefetchers", "none,stride",
                                 "--fracs", "0.05", "--leads", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["files"] == [str(out / "results.json"), str(out / "results.md")]
    assert report["cells"] == [{"trace": "scan", "lead": 0, "cache_frac": 0.05, "cache_size": 20, "requests": 4000,
                                "none": 1.0, "stride": pytest.approx(report["cells"][0]["stride"])}]
    assert "PNG plots skipped: matplotlib is not installed" in result.stderr
    assert "done 2 of 2: scan.txt lead=0 " in result.stderr


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_report_refuses_jobs_below_one(tmp_path: Path, jobs: str) -> None:
    trace = _loop_trace(tmp_path / "scan.txt")
    result = runner.invoke(app, ["report", str(trace), "--out", str(tmp_path / "r"), "--jobs", jobs])
    assert result.exit_code == 2
    assert "Invalid value for '--jobs'" in result.output
    assert not (tmp_path / "r").exists()


def test_scripts_bench_shows_its_help_instead_of_running() -> None:
    result = subprocess.run([sys.executable, "-m", "service.bench.scripts", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m service.bench.scripts")
    assert "| command |" not in result.stdout
