"""`foresight bench prefetch-load`, `resp`, `live-replay` and the rest: real servers, real redis-benchmark, small
runs."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from typer.testing import CliRunner

from service.bench.cli import app
from service.bench.resp import BenchError, dev_server_argv, server_process
from service.net import free_port

runner = CliRunner()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--prefetchers", "stride,oracle", "unknown prefetcher(s): oracle"),
    ("--isolation", "process,fork", "--isolation takes process and/or thread, got 'process,fork'"),
    ("--device", "tpu", "--device must be cpu or cuda, got 'tpu'"),
])
def test_prefetch_load_rejects_bad_input_before_starting_anything(option: str, value: str, message: str) -> None:
    out = runner.invoke(app, ["prefetch-load", option, value])
    assert out.exit_code == 2
    assert message in out.output
    assert "Traceback" not in out.output


@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="needs redis-tools")
def test_prefetch_load_reports_each_prefetcher_and_isolation_against_none_per_pipeline() -> None:
    out = runner.invoke(app, ["prefetch-load", "--prefetchers", "stride", "--requests", "10000", "--rounds", "1",
                              "--cpu-share", "0.9", "--process-share", "0.5", "--warmup", "1000", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    setup = report["setup"]
    assert (setup["cpu_share"], setup["process_share"], setup["warmup"]) == (0.9, 0.5, 1000)
    rows = {(f["prefetcher"], f["isolation"], f["pipeline"]): f for f in report["figures"]}
    arms = {("none", ""), ("stride", "process"), ("stride", "thread")}
    assert set(rows) == {(*arm, pipeline) for arm in arms for pipeline in (1, 16)}
    for pipeline in (1, 16):
        none = rows[("none", "", pipeline)]
        assert none["rps_ratio"] == 1.0 and none["predicted"] is None
        for isolation in ("process", "thread"):
            stride = rows[("stride", isolation, pipeline)]
            assert stride["rps"] > 0 and stride["p99_ms"] > 0, report
            assert stride["rps_ratio"] == pytest.approx(stride["rps"] / none["rps"])
            # Read from the server's own metrics once the engine caught up with the run (the warm-up's lagging
            # predictions had made a share of 1.01).
            assert 0 < stride["predicted"] <= 1, report
            assert stride["predicted"] <= stride["logged"] <= 1, report  # predicted from what it logged


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


@pytest.mark.parametrize("argv", [
    ["prefetch-load", "--prefetchers", "oracle", "--json"],
    ["replay", "/nonexistent/trace.txt", "--json"],
    ["resp", "--tests", "nope", "--json"],
])
def test_a_refusal_under_json_is_one_json_object_on_stdout(argv: list[str]) -> None:
    """A script that asked for JSON reads the refusal in the same shape as the other commands' (onboarding's)."""
    out = CliRunner().invoke(app, argv)
    assert out.exit_code == 2
    reply = json.loads(out.stdout)
    assert reply["exit_code"] == 2 and reply["error"] and f"error: {reply['error']}" in out.stderr


def test_a_server_that_dies_at_start_up_is_reported_with_its_own_last_words() -> None:
    argv = [sys.executable, "-c", "import sys; print('bad setting: FORESIGHT_X'); sys.exit(3)"]
    with (
        pytest.raises(BenchError, match=r"exited with code 3 during start-up\n  bad setting: FORESIGHT_X"),
        server_process(argv, free_port(), "foresight"),
    ):
        pass


def test_the_load_bench_waits_for_a_prefetch_engine_and_says_when_none_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.bench import prefetch_load

    monkeypatch.setattr(prefetch_load, "ENGINE_START_TIMEOUT_S", 1.0)
    resp_port, http_port = free_port(), free_port()
    setup = prefetch_load.LoadSetup()
    with tempfile.TemporaryDirectory() as origin, server_process(
        dev_server_argv(resp_port, http_port, "--origin", origin), resp_port, "foresight",
        setup.environment("none", ""),
    ), pytest.raises(BenchError, match="the stride prefetch engine did not start within 1 s"):
        prefetch_load.wait_for_engine(http_port, "stride")


@pytest.mark.parametrize(("args", "message"), [
    (["--prefetchers", "none,oracle"], "unknown prefetcher(s): oracle"),
    (["--rates", "1000,fast"], "--rates takes reads per second or max, got '1000,fast'"),
    (["--rates", "0"], "--rates takes reads per second (at least 1) or max, got '0'"),
    (["--rates", "nan"], "--rates takes reads per second (at least 1) or max, got 'nan'"),
    (["--rates", "100,inf"], "--rates takes reads per second (at least 1) or max, got '100,inf'"),
    (["--rates", "1e-9"], "--rates takes reads per second (at least 1) or max, got '1e-9'"),  # one read in 30 years
    (["--lead-tuning", "on,maybe"], "--lead-tuning takes on, off or on,off, got 'on,maybe'"),
    (["--cache-frac", "0.1", "--cache-size", "10"], "give --cache-frac or --cache-size, not both"),
])
def test_live_replay_rejects_bad_input_before_starting_anything(
    args: list[str], message: str, tmp_path: pathlib.Path
) -> None:
    trace = tmp_path / "keys.txt"
    trace.write_text("1\n2\n3\n")
    out = runner.invoke(app, ["live-replay", str(trace), *args])
    assert out.exit_code == 2
    assert message in out.output
    assert "Traceback" not in out.output


def test_live_replay_matches_the_replay_without_a_prefetcher_and_keeps_strides_gain(tmp_path: pathlib.Path) -> None:
    """Paced in order on one connection, a server without a prefetcher is the replay's cache exactly (same store,
    policy and capacity); stride's prefetches turn most of a sequential scan into hits (not all: each one is
    issued after its read and fetched from the origin while reads go on)."""
    # Scans of fresh keys with a hot set of 20 read between them: some hits without prefetching, many with.
    keys = [k for run in range(12) for i in range(150) for k in (run * 1000 + i, *((90_000 + i % 20,) * (i % 3 == 0)))]
    trace = tmp_path / "scans.txt"
    trace.write_text("\n".join(map(str, keys)))
    out = runner.invoke(app, ["live-replay", str(trace), "--cache-size", "200", "--prefetchers", "none,stride",
                              "--rates", "400", "--pipeline", "1", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)  # progress goes to stderr
    assert (report["requests"], report["unique"], report["cache_size"]) == (2400, 1820, 200)
    none, stride = report["figures"]
    assert none["prefetcher"] == "none" and none["hit_ratio"] == pytest.approx(none["replay_hit_ratio"], abs=1e-9)
    assert 0.1 < none["hit_ratio"] < 0.4  # the hot set's re-reads
    assert none["issued"] == 0 and none["stride_lead"] is None
    assert stride["tune_lead"] is True and 0 <= stride["stride_lead"] <= 32
    assert stride["replay_hit_ratio"] > 0.8
    assert stride["hit_ratio"] > none["hit_ratio"] + 0.4
    assert stride["used"] > 0.4 * len(keys) and stride["predicted"] > 0.95
    assert 350 < stride["rate"] < 450


def test_live_replay_names_every_key_at_one_width_so_entries_are_one_size() -> None:
    from service.bench.live_replay import key_names

    assert key_names([7, 12]) == [b"k:000000000007", b"k:000000000012"]
    names = key_names([5, -3, 10**14])
    assert len({len(n) for n in names}) == 1 and names[1] == b"k:-00000000000003"


def test_access_log_overhead_is_the_drained_cost_over_a_served_get() -> None:
    """The engine keeps the ring drained (a worker that is behind records a sample instead of overflowing it),
    so that regime is the overhead; the full ring's is reported beside it."""
    from service.bench.hotpath import AccessLogCost

    cost = AccessLogCost(1000.0, {"drained": 20.0, "full": 40.0}, {1: 10.0, 16: 4.0})
    assert cost.overhead(16) == pytest.approx(0.005) and cost.overhead(1) == pytest.approx(0.002)
    report = cost.as_dict()
    assert report["overhead"]["16"] == pytest.approx(0.005)
    assert report["overhead_full_ring"]["16"] == pytest.approx(0.01)


def test_prefetch_pool_reports_each_pool_size_against_the_first() -> None:
    out = runner.invoke(app, ["prefetch-pool", "--processes", "1,2", "--tenants", "2", "--warmup", "256",
                              "--seconds", "0.5", "--json"])
    assert out.exit_code == 0, out.output
    one, two = json.loads(out.output)["figures"]
    assert (one["processes"], two["processes"]) == (1, 2) and one["ratio"] == 1.0
    for figure in (one, two):
        assert figure["tenants"] == 2 and figure["device"] == "cpu"
        assert 0 < figure["slowest_tenant_reads_per_s"] <= figure["reads_per_s"] / 2
    assert two["ratio"] == pytest.approx(two["reads_per_s"] / one["reads_per_s"])


@pytest.mark.parametrize(("processes", "message"), [("0,2", "pool sizes of 1 or more"),
                                                    ("1,x", "comma-separated whole numbers")])
def test_prefetch_pool_rejects_bad_sizes(processes: str, message: str) -> None:
    out = runner.invoke(app, ["prefetch-pool", "--processes", processes])
    assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output


def test_prefetch_memory_reports_each_prefetchers_memory_per_key_against_a_set() -> None:
    out = runner.invoke(app, ["prefetch-memory", "--reads", "200000", "--json"])
    assert out.exit_code == 0, out.output
    figures = {f["prefetcher"]: f for f in json.loads(out.output)["figures"]}
    assert list(figures) == ["set", "markov", "learned"] and figures["set"]["ratio"] == 1.0
    assert all(199_990 <= f["keys"] <= 200_000 for f in figures.values())  # nearly every read a new key
    # A key seen once costs Markov little more than the set's entry (it cost 4.7x with a dict per key); the
    # learned builder keeps two tables and a last-read map.
    assert 0 < figures["markov"]["kb_per_key"] < 2 * figures["set"]["kb_per_key"] < figures["learned"]["kb_per_key"]
    bounded = runner.invoke(app, ["prefetch-memory", "--reads", "20000", "--max-keys", "4096", "--json"])
    assert all(f["keys"] <= 4096 for f in json.loads(bounded.output)["figures"])


def test_prefetch_memory_on_a_trace_counts_the_successors_its_keys_recur_with(tmp_path: pathlib.Path) -> None:
    """Random keys are each followed once; a trace's keys recur, each followed by several successors, and
    every successor a table holds costs memory: the random figure would understate a real tenant's."""
    import random

    rng, keys = random.Random(0), list(range(50_000))
    lines = []
    for _ in range(4):  # four tours in different orders: up to four successors a key
        rng.shuffle(keys)
        lines += [str(key) for key in keys]
    trace = tmp_path / "tours.txt"
    trace.write_text("\n".join(lines) + "\n")
    out = runner.invoke(app, ["prefetch-memory", "--trace", str(trace), "--json"])
    assert out.exit_code == 0, out.output
    traced = {f["prefetcher"]: f for f in json.loads(out.output)["figures"]}
    assert all(f["reads"] == 200_000 and f["keys"] == 50_000 for f in traced.values())
    random_keys = runner.invoke(app, ["prefetch-memory", "--reads", "50000", "--json"])
    once = {f["prefetcher"]: f for f in json.loads(random_keys.output)["figures"]}
    assert traced["markov"]["kb_per_key"] > 1.5 * once["markov"]["kb_per_key"]
    assert traced["learned"]["kb_per_key"] > 1.5 * once["learned"]["kb_per_key"]
    missing = runner.invoke(app, ["prefetch-memory", "--trace", str(tmp_path / "absent.txt")])
    assert missing.exit_code == 2 and "trace file not found" in missing.output and "Traceback" not in missing.output


@pytest.mark.parametrize(("args", "message"), [
    (["--pipeline", "0"], "Invalid value for '--pipeline'"),
    (["--pipeline", "-3"], "Invalid value for '--pipeline'"),
    (["--tests", ""], "error: --tests: no test given; choose from get, set"),
    (["--tests", "get,bogus"], "error: --tests: unknown test bogus; choose from get, set"),
    (["--tests", "lrange"], "error: --tests: unknown test lrange"),  # runs an LPUSH first: its figure is not LRANGE's
])
def test_resp_rejects_bad_pipelines_and_tests_before_starting_anything(args: list[str], message: str) -> None:
    out = runner.invoke(app, ["resp", "--requests", "1000", "--rounds", "1", *args])
    assert out.exit_code == 2
    assert message in out.output
    assert "Traceback" not in out.output and out.stdout == ""


def test_resp_without_redis_server_is_one_error_line_and_exit_2_like_the_other_benches() -> None:
    out = runner.invoke(app, ["resp", "--requests", "1000", "--rounds", "1"], env={"PATH": "/nonexistent"})
    assert out.exit_code == 2
    assert out.output == "error: redis-server not found: apt-get install -y redis-server redis-tools\n"


def _children(pid: int) -> list[int]:
    children = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def test_sigterm_stops_the_benchs_server_and_removes_its_scratch_origin_as_ctrl_c_does(tmp_path: pathlib.Path) -> None:
    trace = tmp_path / "scan.txt"
    trace.write_text("".join(f"{i}\n" for i in range(3000)))  # 30 s at 100 reads/s: it is stopped long before
    bench = subprocess.Popen([sys.executable, "-c", "from service.cli import main; main()", "bench", "live-replay",
                              str(trace), "--prefetchers", "none", "--rates", "100"], stderr=subprocess.PIPE, text=True)
    server: int | None = None
    origin: pathlib.Path | None = None
    try:
        deadline = time.monotonic() + 60
        while server is None and time.monotonic() < deadline and bench.poll() is None:
            for child in _children(bench.pid):
                argv = pathlib.Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                if b"serve" in argv and b"--origin" in argv:
                    server, origin = child, pathlib.Path(argv[argv.index(b"--origin") + 1].decode())
            time.sleep(0.1)
        assert server is not None and origin is not None and origin.is_dir(), "the bench started no server"
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(30) == 143
        assert not pathlib.Path(f"/proc/{server}").exists()  # stopped and reaped before the bench exited
        assert not origin.exists()
    finally:
        bench.kill()
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
        if origin is not None:
            shutil.rmtree(origin, ignore_errors=True)
