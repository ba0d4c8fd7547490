"""`foresight bench shared-tier`: nodes alone vs on one real redis-server, on a small trace."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from service.bench.cli import app
from service.net import free_port
from tests.servers import redis_server

runner = CliRunner()


def test_nodes_on_a_shared_tier_read_each_object_from_the_origin_about_once(tmp_path: Path) -> None:
    trace = tmp_path / "loop.txt"
    trace.write_text("".join(f"{i % 300}\n" for i in range(3000)))  # 300 keys, ten rounds
    out = runner.invoke(app, ["shared-tier", str(trace), "--nodes", "3", "--cache-frac", "0.1", "--value-bytes", "64",
                              "--origin-latency-ms", "1", "--concurrency", "8", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert "shared-tier: 3,000 requests over 3 nodes, alone" in out.stderr  # progress, beside the JSON
    alone, shared = report["runs"]
    assert (alone["mode"], shared["mode"], report["requests"], report["unique"]) == ("alone", "shared", 3000, 300)
    # Alone, each node's 30-key memory misses nearly every read of a 300-key loop; shared, the tier holds them all.
    assert alone["origin_reads"] > 2500 and alone["tier_hits"] == 0
    assert 300 <= shared["origin_reads"] < 400 and shared["tier_hits"] > 2000
    assert report["origin_reads_ratio"] == shared["origin_reads"] / alone["origin_reads"]


def test_a_tier_url_with_a_password_is_refused_before_anything_runs(tmp_path: Path) -> None:
    trace = tmp_path / "t.txt"
    trace.write_text("1\n")
    out = runner.invoke(app, ["shared-tier", str(trace), "--tier-url", "rediss://:secret@tier:6379"])
    assert out.exit_code == 2
    assert "must not carry a user or password" in out.output and "Traceback" not in out.output


def test_a_tier_nothing_listens_on_fails_before_the_runs_instead_of_reporting_ratios(tmp_path: Path) -> None:
    trace = tmp_path / "loop.txt"
    trace.write_text("".join(f"{i % 50}\n" for i in range(200)))
    port = free_port()  # nothing listens there
    out = runner.invoke(app, ["shared-tier", str(trace), "--nodes", "2", "--origin-latency-ms", "0",
                              "--tier-url", f"redis://127.0.0.1:{port}"])
    assert out.exit_code == 2
    assert out.output == f"error: --tier-url redis://127.0.0.1:{port}: cannot connect (Connection refused)\n"


def test_the_tables_count_the_tiers_failed_calls(tmp_path: Path) -> None:
    trace = tmp_path / "loop.txt"
    trace.write_text("".join(f"{i % 50}\n" for i in range(500)))
    out = runner.invoke(app, ["shared-tier", str(trace), "--nodes", "2", "--value-bytes", "16",
                              "--origin-latency-ms", "0", "--concurrency", "4", "--json"])
    assert out.exit_code == 0, out.output
    alone, shared = json.loads(out.stdout)["runs"]
    assert alone["tier_errors"] == 0 and shared["tier_errors"] == 0


def test_a_tier_that_refuses_this_node_fails_before_the_runs_with_one_line(tmp_path: Path) -> None:
    trace = tmp_path / "loop.txt"
    trace.write_text("".join(f"{i % 50}\n" for i in range(200)))
    with redis_server(password="s3cret") as tier:  # and FORESIGHT_SHARED_TIER_PASSWORD_FILE is not set
        out = runner.invoke(app, ["shared-tier", str(trace), "--nodes", "2", "--origin-latency-ms", "0",
                                  "--tier-url", f"redis://127.0.0.1:{tier.port}"])
    assert out.exit_code == 2
    assert out.output.startswith(f"error: shared tier redis://127.0.0.1:{tier.port} refused this node")
    assert "shared-tier:" not in out.output  # no run started
