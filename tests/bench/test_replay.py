"""The replay harness: ARC Table IV reproduction, lead semantics, the CLI and the report."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from service.bench import replay as replay_module
from service.bench.cli import app
from service.bench.replay import (
    BENCH_PREFETCHERS,
    FirstReads,
    ReplayError,
    make_bench_prefetcher,
    replay,
    resolve_cache_size,
)
from service.bench.report import summarize
from service.bench.traces import Trace, load_trace
from service.prefetch.base import NoPrefetcher, Predictions
from service.prefetch.shadow import CacheModel, CacheSimulation, ShadowSelector
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
    stride = report["cells"][0]["stride"]
    # Keys numbered in first-access order: new keys are dropped, so the 400 first reads are the floor.
    assert report["cells"] == [{"trace": "scan", "lead": 0, "cache_frac": 0.05, "cache_size": 20, "requests": 4000,
                                "none": 1.0, "stride": stride, "floor_vs_best": pytest.approx(400 / (stride * 4000))}]
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


def _numbered_in_first_access_order(n: int = 4000, keys: int = 1500, seed: int = 3) -> Trace:
    """Random accesses whose keys are then renumbered 0, 1, 2, ... in the order they are first read, as most
    public traces were: every never-seen key is the largest so far + 1."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 1 << 40, size=keys)[np.minimum(rng.zipf(1.3, size=n) - 1, keys - 1)]
    ids: dict[int, int] = {}
    return Trace("numbered", np.array([ids.setdefault(k, len(ids)) for k in raw.tolist()], dtype=np.int64))


class _CountsFirstAccessHits(CacheSimulation):
    """The replay's cache, counting hits on a key's first read: only a prefetch of a never-read key makes one."""

    made: list[_CountsFirstAccessHits] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[Hashable] = set()
        self.first_access_hits = 0
        self.made.append(self)

    def request(self, key: Hashable, proposals: Predictions) -> bool:
        hit = super().request(key, proposals)
        if key not in self.read:
            self.read.add(key)
            self.first_access_hits += hit
        return hit


def _first_access_hits(trace: Trace, name: str, new_keys: str, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(replay_module, "CacheSimulation", _CountsFirstAccessHits)
    _CountsFirstAccessHits.made.clear()
    replay(trace, max(1, trace.unique // 20), make_bench_prefetcher(name), new_keys=new_keys)
    (real,) = _CountsFirstAccessHits.made  # the shadows are built in shadow.py, unpatched
    return real.first_access_hits


@pytest.mark.parametrize("name", BENCH_PREFETCHERS)
def test_no_prefetcher_hits_a_first_access_when_ids_are_numbered_by_first_access(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = _numbered_in_first_access_order()
    assert trace.first_access_numbered == 1.0
    assert _first_access_hits(trace, name, "auto", monkeypatch) == 0
    assert _first_access_hits(trace, name, "drop", monkeypatch) == 0


def test_stride_hits_first_accesses_of_numbered_ids_when_new_keys_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The leak the guard closes: "largest + 1" is the next never-seen key.
    trace = _numbered_in_first_access_order()
    assert _first_access_hits(trace, "stride", "allow", monkeypatch) > trace.unique // 5


def test_auto_allows_new_keys_where_ids_are_not_numbered_by_first_access() -> None:
    numbered = _numbered_in_first_access_order()
    shuffled = Trace("shuffled", np.random.default_rng(0).permutation(numbered.unique)[numbered.keys])
    assert shuffled.first_access_numbered < 0.01
    assert replay(numbered, 50, StridePrefetcher(), new_keys="auto").new_keys == "drop"
    assert replay(shuffled, 50, StridePrefetcher(), new_keys="auto").new_keys == "allow"
    with pytest.raises(ReplayError, match="--new-keys must be one of auto, allow, drop"):
        replay(numbered, 50, StridePrefetcher(), new_keys="sometimes")


def test_shadow_caches_drop_the_proposals_the_replayed_cache_drops() -> None:
    # A selector judging arms by prefetches the real cache would refuse would pick an arm for its leak.
    trace = sequential(2000)  # every read is a key's first: stride's every proposal is a never-read key
    keys = trace.keys.tolist()
    proposals = StridePrefetcher().access_batch(keys)
    for guard, stride_misses_less in ((None, True), (FirstReads(trace.keys), False)):
        selector = ShadowSelector(("stride",), CacheModel(100, prefetchable=guard))
        selector.select_batch(keys, {"stride": proposals})
        stride, none = selector.misses
        assert (stride < none) is stride_misses_less


def _one_hit_wonders(n: int = 6000, seed: int = 5) -> list[int]:
    """Half the reads are of keys read once; the rest of a few hundred repeated keys (random 40-bit ids)."""
    rng = np.random.default_rng(seed)
    hot = rng.integers(0, 1 << 40, size=300)
    return [int(rng.integers(0, 1 << 40)) if rng.random() < 0.5 else int(rng.choice(hot)) for _ in range(n)]


def test_a_trace_replays_the_same_with_integer_or_string_keys(tmp_path: Path) -> None:
    keys = _one_hit_wonders()
    written = {
        "ints.txt": "\n".join(str(k) for k in keys),
        "opaque.txt": "\n".join(f"obj{k:x}" for k in keys),
        "numbered.txt": "\n".join(f"user:{k}" for k in keys),
    }
    traces = [load_trace(_write(tmp_path / name, text)) for name, text in written.items()]
    for name in BENCH_PREFETCHERS:
        ratios = [replay(t, t.unique // 20, make_bench_prefetcher(name), new_keys="auto").miss_ratio for t in traces]
        if name == "learned":
            # Its key embedding hashes the ids themselves, so other labels shift its choices a little; a leak would
            # move it by tenths (string keys numbered in first-seen order: 0.40 against 0.77).
            assert max(ratios) - min(ratios) < 0.005, ratios
        else:
            assert ratios == [ratios[0]] * 3, (name, ratios)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_cli_replay_reports_the_leak_guard_it_ran(tmp_path: Path) -> None:
    path = _write(tmp_path / "scan.txt", "\n".join(str(i % 300) for i in range(3000)))
    args = ["replay", str(path), "--cache-size", "50", "--prefetcher", "stride", "--json"]
    auto = json.loads(runner.invoke(app, args).stdout)
    allow = json.loads(runner.invoke(app, [*args, "--new-keys", "allow"]).stdout)
    assert (auto["new_keys"], auto["first_access_numbered"]) == ("drop", 1.0)
    assert auto["prefetch_dropped_new"] > 250  # the first pass: every proposal is the next unread key
    assert (allow["new_keys"], allow["prefetch_dropped_new"]) == ("allow", 0)
    assert allow["misses"] < auto["misses"]
    bad = runner.invoke(app, [*args, "--new-keys", "never"])
    assert bad.exit_code == 2
    assert "--new-keys must be one of auto, allow, drop" in bad.output


def test_learned_vs_best_has_no_ratio_when_the_best_baseline_never_misses() -> None:
    def row(prefetcher: str, miss_ratio: float) -> dict[str, Any]:
        return {"trace": "t", "lead": 0, "cache_frac": 0.05, "cache_size": 5, "requests": 100, "unique": 10,
                "new_keys": "allow", "prefetcher": prefetcher, "miss_ratio": miss_ratio,
                "misses": round(miss_ratio * 100)}

    worse = summarize([row("stride", 0.0), row("markov", 0.1), row("shadow-select", 0.0), row("learned", 0.05)])
    assert worse[0]["learned_vs_best"] is None
    assert worse[0]["learned_vs_select"] is None
    assert summarize([row("stride", 0.0), row("markov", 0.1), row("learned", 0.0)])[0]["learned_vs_best"] == 1.0
    better = summarize([row("stride", 0.2), row("shadow-select", 0.1), row("learned", 0.05)])
    assert better[0]["learned_vs_select"] == 0.5


def test_report_keeps_traces_with_the_same_name_apart_and_shows_the_selector_and_the_guard(tmp_path: Path) -> None:
    (tmp_path / "dup").mkdir()
    plain = _loop_trace(tmp_path / "dup" / "a.txt", keys=200, requests=2000)
    packed = tmp_path / "dup" / "a.txt.gz"
    packed.write_bytes(gzip.compress("\n".join(str((i * 7) % 997) for i in range(3000)).encode()))
    out = tmp_path / "r"
    result = runner.invoke(app, ["report", str(plain), str(packed), "--out", str(out), "--prefetchers",
                                 "none,stride,markov,shadow-select", "--fracs", "0.05", "--leads", "0"])
    assert result.exit_code == 0, result.output
    table = (out / "results.md").read_text()
    assert "| a.txt | 5% (10) |" in table
    assert "| a.txt.gz | 5% (50) |" in table
    assert "| trace | cache | none | stride | markov | shadow-select | floor/best |\n" in table
    assert "dropped on a.txt (1.000); allowed on a.txt.gz (0.0" in table
