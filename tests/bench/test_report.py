"""`foresight bench report`: resuming a matrix from its results.jsonl, and the floor no prefetcher can beat."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from service.bench import report as report_module
from service.bench.cli import app

runner = CliRunner()


def _loop(path: Path, keys: int = 300, requests: int = 3000) -> Path:
    """Keys 0..keys-1 read in turn, again and again: numbered in first-access order, so new keys are dropped."""
    path.write_text("\n".join(str(i % keys) for i in range(requests)))
    return path


def _report(trace: Path, out: Path, *options: str) -> Any:
    args = ["report", str(trace), "--out", str(out), "--leads", "0", *options]
    return runner.invoke(app, args)


def _cells(out: Path) -> list[dict[str, Any]]:
    """results.json's cells without their run times, which no two runs share."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads((out / "results.json").read_text())]


class _Recorded:
    """`report._unit` that records what it was asked to run (jobs=1 runs units in this process)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[float, ...]]] = []
        self.real = report_module._unit

    def __call__(self, path: Path, lead: int, name: str, spec: Any, fracs: tuple[float, ...]) -> Any:
        self.calls.append((name, fracs))
        return self.real(path, lead, name, spec, fracs)


def test_resume_runs_only_the_cells_missing_and_reports_as_a_fresh_run_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = _loop(tmp_path / "loop.txt")
    first = _report(trace, tmp_path / "r", "--prefetchers", "none,stride", "--fracs", "0.05")
    assert first.exit_code == 0, first.output
    recorded = _Recorded()
    monkeypatch.setattr(report_module, "_unit", recorded)
    resumed = _report(trace, tmp_path / "r", "--prefetchers", "none,stride,markov", "--fracs", "0.05,0.1",
                      "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert sorted(recorded.calls) == [("markov", (0.05, 0.1)), ("none", (0.1,)), ("stride", (0.1,))]
    assert f"resume: reused 0 of 3 units (2 cells) from {tmp_path / 'r' / 'results.jsonl'}; running 3" \
        in resumed.stderr
    assert "ignored" not in resumed.stderr
    monkeypatch.undo()
    fresh = _report(trace, tmp_path / "fresh", "--prefetchers", "none,stride,markov", "--fracs", "0.05,0.1")
    assert fresh.exit_code == 0, fresh.output
    assert _cells(tmp_path / "r") == _cells(tmp_path / "fresh")
    assert (tmp_path / "r" / "results.md").read_text() == (tmp_path / "fresh" / "results.md").read_text()
    assert len((tmp_path / "r" / "results.jsonl").read_text().splitlines()) == 6  # 2 kept, 4 appended


def test_resume_with_every_cell_done_runs_nothing_and_renders_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = _loop(tmp_path / "loop.txt")
    options = ["--prefetchers", "none,stride", "--fracs", "0.05,0.1", "--jobs", "2"]
    assert _report(trace, tmp_path / "r", *options).exit_code == 0
    before = _cells(tmp_path / "r")
    (tmp_path / "r" / "results.md").unlink()
    monkeypatch.setattr(report_module, "_unit", None)  # a unit run would fail
    resumed = _report(trace, tmp_path / "r", *options, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resume: reused 2 of 2 units (4 cells)" in resumed.stderr
    assert "; running 0\n" in resumed.stderr
    assert _cells(tmp_path / "r") == before
    assert "| loop | 10% (30) |" in (tmp_path / "r" / "results.md").read_text()


@pytest.mark.parametrize(("first", "why"), [
    (["--limit", "2000"], "limit 2000, which this run has not"),
    (["--budget", "2"], "budget 2, which this run has not"),
    (["--policy", "lru"], "policy 'lru', which this run has not"),
    (["--new-keys", "allow"], "new_keys_asked 'allow', which this run has not"),
    (["--fracs", "0.1"], "cache_frac 0.1, which this run has not"),
])
def test_resume_reuses_no_cell_of_other_settings_and_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: list[str], why: str
) -> None:
    trace = _loop(tmp_path / "loop.txt")
    same = ["--prefetchers", "stride", "--fracs", "0.05", "--limit", "2500"]
    assert _report(trace, tmp_path / "r", *same, *first).exit_code == 0  # the last of a repeated option counts
    recorded = _Recorded()
    monkeypatch.setattr(report_module, "_unit", recorded)
    resumed = _report(trace, tmp_path / "r", *same, "--resume")
    assert resumed.exit_code == 0, resumed.output
    jsonl = tmp_path / "r" / "results.jsonl"
    assert f"resume: ignored 1 line(s) of {jsonl}, first line 1: from other settings ({why})" in resumed.stderr
    assert "reused 0 of 1 units (0 cells)" in resumed.stderr
    assert recorded.calls == [("stride", (0.05,))]
    assert len(jsonl.read_text().splitlines()) == 2  # the other run's line is kept


def test_resume_does_not_reuse_cells_of_a_trace_file_that_changed(tmp_path: Path) -> None:
    trace = _loop(tmp_path / "loop.txt")
    assert _report(trace, tmp_path / "r", "--prefetchers", "stride", "--fracs", "0.05").exit_code == 0
    _loop(trace, keys=200)
    resumed = _report(trace, tmp_path / "r", "--prefetchers", "stride", "--fracs", "0.05", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "first line 1: from other settings (trace_bytes " in resumed.stderr
    assert json.loads((tmp_path / "r" / "results.json").read_text())[0]["unique"] == 200


def test_resume_reports_and_skips_broken_repeated_and_older_lines_then_appends_after_a_cut_line(
    tmp_path: Path,
) -> None:
    trace = _loop(tmp_path / "loop.txt")
    options = ["--prefetchers", "none,stride", "--fracs", "0.05"]
    assert _report(trace, tmp_path / "r", *options).exit_code == 0
    jsonl = tmp_path / "r" / "results.jsonl"
    good = jsonl.read_text().splitlines()
    stride = next(line for line in good if '"prefetcher": "stride"' in line)
    older = {k: v for k, v in json.loads(stride).items() if k in report_module._CELL_TYPES}  # no settings
    wrong_type = json.loads(stride) | {"misses": "many"}
    jsonl.write_text("\n".join([json.dumps(older), stride, "not json", json.dumps(wrong_type), stride, "[1, 2]",
                                stride[:40]]))  # no newline at the end: a run stopped mid-line
    resumed = _report(trace, tmp_path / "r", *options, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert (f"resume: ignored 4 line(s) of {jsonl}, first line 3: not a whole cell (unreadable JSON or a field "
            "missing or of the wrong type)") in resumed.stderr
    assert (f"resume: ignored 1 line(s) of {jsonl}, first line 1: from other settings (no trace_path, trace_bytes, "
            "limit, new_keys_asked, device, max_keys, seed, threshold: written before cells recorded them)"
            ) in resumed.stderr
    assert f"resume: ignored 1 line(s) of {jsonl}, first line 5: a cell an earlier line has" in resumed.stderr
    assert "reused 1 of 2 units (1 cells)" in resumed.stderr
    lines = jsonl.read_text().splitlines()
    assert lines[6] == stride[:40]  # kept as it was, and the new cell after it on a line of its own
    assert json.loads(lines[7])["prefetcher"] == "none"
    again = _report(trace, tmp_path / "r", *options, "--resume")
    assert "reused 2 of 2 units (2 cells)" in again.stderr


def test_without_resume_an_earlier_results_jsonl_is_overwritten(tmp_path: Path) -> None:
    trace = _loop(tmp_path / "loop.txt")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.jsonl").write_text("earlier\n")
    result = _report(trace, tmp_path / "r", "--prefetchers", "stride", "--fracs", "0.05")
    assert result.exit_code == 0, result.output
    assert "resume" not in result.stderr
    assert [json.loads(line)["prefetcher"] for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()] \
        == ["stride"]


def test_a_report_without_prefetchers_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = _report(_loop(tmp_path / "loop.txt"), tmp_path / "r", "--prefetchers", " , ", "--resume")
    assert result.exit_code == 2
    assert result.output == ("error: --prefetchers: none given; choose from none, stride, markov, shadow-select, "
                             "learned\n")


@pytest.mark.parametrize(("option", "value", "error"), [
    ("--fracs", "0.05,2", "--fracs must be within (0, 1], got 2.0"),
    ("--leads", "0,-1", "--leads must be >= 0, got -1"),
    ("--policy", "foo", "unknown eviction policy 'foo'; choose one of: lru, s3fifo"),
    ("--budget", "-1", "--budget must be >= 0, got -1"),
    ("--limit", "0", "--limit must be positive, got 0"),
])
def test_a_bad_value_is_refused_before_the_earlier_results_are_touched(
        tmp_path: Path, option: str, value: str, error: str) -> None:
    """The first unit refused it after results.jsonl was truncated: the cells --resume needs were gone."""
    trace, out = _loop(tmp_path / "loop.txt"), tmp_path / "r"
    assert _report(trace, out, "--prefetchers", "none", "--fracs", "0.05").exit_code == 0
    earlier = (out / "results.jsonl").read_text()
    result = _report(trace, out, "--prefetchers", "none", "--fracs", "0.05", option, value)
    assert (result.exit_code, result.output) == (2, f"error: {error}\n")
    assert (out / "results.jsonl").read_text() == earlier


def test_a_value_named_twice_is_one_column(tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = _report(_loop(tmp_path / "loop.txt"), out, "--prefetchers", "stride,stride", "--fracs", "0.05,0.05")
    assert result.exit_code == 0, result.output
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


def test_report_help_says_resume_keeps_results_jsonl() -> None:
    result = runner.invoke(app, ["report", "--help"], terminal_width=200)
    assert "--resume" in result.output
    assert "results.jsonl is overwritten" in " ".join(result.output.split())


def test_floor_is_the_first_reads_share_of_the_best_baselines_misses_where_new_keys_are_dropped(
    tmp_path: Path,
) -> None:
    # One pass over new keys: under the drop rule every read is a first read and misses, so floor/best is 1.
    once = tmp_path / "once.txt"
    once.write_text("\n".join(str(i) for i in range(2000)))
    loop = _loop(tmp_path / "loop.txt")
    shuffled = tmp_path / "shuffled.txt"  # the loop under ids not numbered by first access: new keys allowed
    ids = np.random.default_rng(0).permutation(1 << 20)[:300]
    shuffled.write_text("\n".join(str(ids[i % 300]) for i in range(3000)))
    result = runner.invoke(app, ["report", str(once), str(loop), str(shuffled), "--out", str(tmp_path / "r"),
                                 "--prefetchers", "none,stride,markov", "--fracs", "0.05", "--leads", "0", "--json"])
    assert result.exit_code == 0, result.output
    cells = {c["trace"]: c for c in json.loads(result.stdout)["cells"]}
    assert cells["once"]["floor_vs_best"] == 1.0
    rows = json.loads((tmp_path / "r" / "results.json").read_text())
    best = min(r["misses"] for r in rows if r["trace"] == "loop" and r["prefetcher"] in ("stride", "markov"))
    assert cells["loop"]["floor_vs_best"] == pytest.approx(300 / best)
    assert 0 < cells["loop"]["floor_vs_best"] <= 1
    assert cells["shuffled"]["floor_vs_best"] == 0.0
    table = (tmp_path / "r" / "results.md").read_text()
    assert "| trace | cache | none | stride | markov | floor/best |\n" in table
    assert "| once | 5% (100) | 1.0000 | 1.0000 | 1.0000 | 1.000 |" in table
    assert f"| {cells['loop']['floor_vs_best']:.3f} |\n" in table
    assert "| shuffled | 5% (15) |" in table and table.split("| shuffled |")[1].split("\n")[0].endswith(" | 0 |")
    above = sum(c["floor_vs_best"] > 0.9 for c in cells.values())
    assert f"floor/best: above 0.9 in {above} of 3 cells, where no prefetcher can reach the goal" in table
