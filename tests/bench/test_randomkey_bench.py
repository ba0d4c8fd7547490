"""`foresight bench randomkey` runs both sides on one store and says what it measured (its numbers are the
benchmark's; here only that it measures what it claims)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from service.bench.cli import app
from service.bench.randomkey import _filled, _writes_ns, measure


def test_the_json_has_the_walk_the_draw_and_both_write_costs() -> None:
    result = CliRunner().invoke(app, ["randomkey", "--keys", "5000", "--draws", "200", "--json"])
    assert result.exit_code == 0, result.output
    cost = json.loads(result.stdout)
    assert cost["keys"] == 5000
    assert cost["walk_us"] > 0 and cost["draw_us"] > 0 and cost["draw_p99_us"] >= cost["draw_us"]
    assert cost["speedup"] == cost["walk_us"] / cost["draw_us"]
    assert set(cost["set_ns"]) == set(cost["del_ns"]) == {"with", "without"}
    assert all(ns > 0 for ns in [*cost["set_ns"].values(), *cost["del_ns"].values()])


def test_the_write_rounds_leave_the_store_as_they_found_it() -> None:
    store = _filled(3000)
    store.random_key()
    _writes_ns(store, 0)
    assert len(store) == 3000 and b"new:0" not in store
    assert measure(3000, draws=100, rounds=2).keys == 3000


def test_bad_sizes_are_refused() -> None:
    result = CliRunner().invoke(app, ["randomkey", "--keys", "10"])
    assert result.exit_code == 2 and "--keys" in result.output
