"""`foresight bench shared-tier`: nodes alone vs on one real redis-server, on a small trace."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from service.bench.cli import app

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
