"""The benchmark matrix: traces x cache sizes x prefetchers x leads, as JSON, a Markdown table and plots.

A simple prefetcher's proposals depend only on the trace (never on the cache), so each (trace, lead,
prefetcher) computes them once and replays them at every cache size. The learned prefetcher's arms are
cache-independent too; only its choice among them depends on the cache, so its arms run once and a fresh
shadow selector picks for each size. Either way: the same numbers `bench replay` gives, for a third of the
model time.

The leak guard (`--new-keys`, `replay.py`) is resolved once per trace and reaches both the replay's cache and the
shadow caches a cache-aware prefetcher selects with, so the selection and the replay see the same prefetches.
`shadow-select` is that selector over stride and Markov alone: the learned prefetcher without its network.

Each unit's cells are appended to `results.jsonl` as it finishes, so a run that fails or is stopped keeps what it
had done; the table, `results.json` and the plots are written at the end. Each cell carries every setting that
defines it (`unit_settings`), so a resumed run (`resume=True`, `resume.py`) reuses exactly the cells it would have
computed and runs the rest.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import tempfile
import typing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.bench.replay import (
    BENCH_PREFETCHERS,
    CHUNK,
    NEW_KEYS,
    ReplayError,
    ReplayResult,
    leak_guard,
    make_bench_prefetcher,
    replay,
    resolve_cache_size,
    resolve_new_keys,
)
from service.bench.resume import open_cells, reusable_cells
from service.bench.traces import TraceError, load_trace, trace_name
from service.prefetch.base import DEFAULT_THRESHOLD, Predictions
from service.prefetch.markov import DEFAULT_MAX_KEYS
from service.prefetch.shadow import CacheAwarePrefetcher, CacheModel
from service.store.policies import POLICIES

GOAL = 0.9  # the learned prefetcher's goal: its misses at most this share of the better simple one's
_TRACE_SUFFIXES = (".lis", ".txt", ".csv", ".gz", ".zst", ".xz", ".bz2")


class ReportError(ValueError):
    """A report matrix that cannot run."""


@dataclass(frozen=True, slots=True)
class MatrixSpec:
    traces: tuple[Path, ...]
    fracs: tuple[float, ...]
    leads: tuple[int, ...]
    prefetchers: tuple[str, ...]
    policy: str
    limit: int | None
    budget: int
    new_keys: str = "auto"

    @classmethod
    def parse(
        cls,
        paths: Sequence[Path],
        fracs: str,
        leads: str,
        prefetchers: str,
        policy: str,
        limit: int | None,
        budget: int,
        new_keys: str = "auto",
    ) -> MatrixSpec:
        traces: list[Path] = []
        for path in paths:
            if path.is_dir():
                traces += sorted(
                    p
                    for p in path.iterdir()
                    if p.is_file()
                    and p.name.endswith(_TRACE_SUFFIXES)
                    and "README" not in p.name
                    and "LICENSE" not in p.name
                    and "README" not in p.stem
                )
            elif path.is_file():
                traces.append(path)
            else:
                raise ReportError(f"trace file not found: {path}")
        if not traces:
            raise ReportError("no trace files given")
        names = tuple(n.strip() for n in prefetchers.split(",") if n.strip())
        unknown = [n for n in names if n not in BENCH_PREFETCHERS]
        if not names:
            raise ReportError(f"--prefetchers: none given; choose from {', '.join(BENCH_PREFETCHERS)}")
        if unknown:
            raise ReportError(
                f"unknown prefetcher(s) {', '.join(unknown)}; choose from {', '.join(BENCH_PREFETCHERS)}"
            )
        if new_keys not in NEW_KEYS:
            raise ReportError(f"--new-keys must be one of {', '.join(NEW_KEYS)}, got {new_keys!r}")
        try:
            frac_values = tuple(dict.fromkeys(float(f) for f in fracs.split(",")))
            lead_values = tuple(dict.fromkeys(int(v) for v in leads.split(",")))
        except ValueError as err:
            raise ReportError(f"bad --fracs or --leads: {err}") from None
        # Every value is checked here, before --out's results.jsonl is touched: a unit refusing one later would
        # leave the earlier run's cells (what --resume reuses) overwritten by nothing.
        if bad := [f for f in frac_values if not 0.0 < f <= 1.0]:
            raise ReportError(f"--fracs must be within (0, 1], got {bad[0]}")
        if bad_leads := [v for v in lead_values if v < 0]:
            raise ReportError(f"--leads must be >= 0, got {bad_leads[0]}")
        if policy not in POLICIES:
            raise ReportError(f"unknown eviction policy {policy!r}; choose one of: {', '.join(sorted(POLICIES))}")
        if limit is not None and limit <= 0:
            raise ReportError(f"--limit must be positive, got {limit}")
        if budget < 0:
            raise ReportError(f"--budget must be >= 0, got {budget}")
        return cls(tuple(dict.fromkeys(traces)), frac_values, lead_values, tuple(dict.fromkeys(names)), policy, limit,
                   budget, new_keys)

    def label(self, path: Path) -> str:
        """A trace's name in the report: without its suffixes, or its file name where that would merge two traces
        (`a.txt` and `a.txt.gz`), or its path where even that would."""
        name = trace_name(path)
        if sum(trace_name(p) == name for p in self.traces) == 1:
            return name
        if sum(p.name == path.name for p in self.traces) == 1:
            return path.name
        return str(path)


# What every unit runs with beyond the matrix's own settings: `bench replay`'s defaults.
_ENGINE: dict[str, Any] = {"device": "cpu", "max_keys": DEFAULT_MAX_KEYS, "seed": 0, "threshold": DEFAULT_THRESHOLD}


def unit_settings(path: Path, lead: int, name: str, spec: MatrixSpec) -> dict[str, Any]:
    """Everything that decides a unit's cells besides the cache size, as its cells record it: a resumed run reuses
    a cell only where all of these and its `cache_frac` are what this run would compute it with."""
    return {"trace_path": str(path.resolve()), "trace_bytes": path.stat().st_size, "limit": spec.limit,
            "policy": spec.policy, "prefetcher": name, "lead": lead, "budget": spec.budget,
            "new_keys_asked": spec.new_keys, **_ENGINE}


def _unit(path: Path, lead: int, name: str, spec: MatrixSpec, fracs: tuple[float, ...]) -> list[dict[str, Any]]:
    """One trace, lead and prefetcher at the cache sizes `fracs` (a learned prefetcher computes on one torch
    thread)."""
    trace = load_trace(path, limit=spec.limit)
    mode = resolve_new_keys(spec.new_keys, trace)
    guard = leak_guard(trace, mode)
    prefetcher = make_bench_prefetcher(name, lead=lead, device=_ENGINE["device"], max_keys=_ENGINE["max_keys"],
                                       seed=_ENGINE["seed"])
    keys = trace.keys.tolist()
    chunks = [keys[begin : begin + CHUNK] for begin in range(0, len(keys), CHUNK)]
    propose = name != "none" and spec.budget > 0
    aware = prefetcher if propose and isinstance(prefetcher, CacheAwarePrefetcher) else None
    arms = [aware.propose_arms(chunk) for chunk in chunks] if aware is not None else []
    predictions: list[Predictions] | None = None
    if propose and aware is None:
        predictions = [p for chunk in chunks for p in prefetcher.access_batch(chunk)]
    settings = unit_settings(path, lead, name, spec)
    rows = []
    for frac in fracs:
        size = resolve_cache_size(trace.unique, frac, None)
        if aware is not None:
            model = CacheModel(size, spec.policy, lead, spec.budget, _ENGINE["threshold"], prefetchable=guard)
            selector = aware.selector_for(model)
            predictions = [
                p for chunk, answers in zip(chunks, arms, strict=True) for p in selector.select_batch(chunk, answers)
            ]
        result = replay(trace, size, prefetcher, policy=spec.policy, budget=spec.budget, lead=lead,
                        threshold=_ENGINE["threshold"], predictions=predictions, new_keys=mode)
        rows.append({**result.as_dict(), "trace": spec.label(path), "cache_frac": frac, **settings})
    return rows


Unit = tuple[Path, int, str]  # trace, lead, prefetcher: one replay's proposals, replayed at every cache size
Job = tuple[Unit, tuple[float, ...]]  # a unit and the cache sizes it still has to run


def prepare_out(out: Path) -> None:
    """Create `out` and check this run can write there, before any replay (ReportError saying why not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except FileExistsError:
        raise ReportError(f"--out {out}: exists and is not a directory") from None
    except NotADirectoryError:
        raise ReportError(f"--out {out}: a parent of it is not a directory") from None
    except OSError as err:
        raise ReportError(f"--out {out}: {err.strerror}") from None


def run_matrix(
    spec: MatrixSpec,
    jobs: int = 1,
    log: Callable[[str], None] = lambda line: None,
    cells_file: Path | None = None,
    resume: bool = False,
) -> list[dict]:
    """Every cell of the matrix, sorted by trace, lead, size and prefetcher; each unit's cells are appended to
    `cells_file` (JSON Lines) as it finishes, so a failure or an interrupt loses only the units still running.

    Without `resume` an existing `cells_file` is overwritten. With it, the cells already there that this run would
    compute are reused, only the rest run, and theirs are appended (the lines it does not reuse are kept)."""
    units = [(path, lead, name) for path in spec.traces for lead in spec.leads for name in spec.prefetchers]
    # Learned units on the largest traces take longest: start them first.
    units.sort(key=lambda u: (u[2] != "learned", -u[0].stat().st_size))
    reused = _reused_cells(cells_file, spec, units, log) if resume and cells_file is not None else {}
    rows: list[dict[str, Any]] = list(reused.values())
    jobs_left: list[Job] = [(unit, fracs) for unit in units
                            if (fracs := tuple(f for f in spec.fracs if (unit, f) not in reused))]
    if resume:
        log(f"resume: reused {len(units) - len(jobs_left)} of {len(units)} units ({len(reused)} cells) from "
            f"{cells_file}; running {len(jobs_left)}")
    done: list[Unit] = []
    sink = open_cells(cells_file, append=resume) if cells_file is not None else None

    def finished(unit: Unit, cells: list[dict[str, Any]]) -> None:
        rows.extend(cells)
        done.append(unit)
        if sink is not None:
            sink.write("".join(json.dumps(cell) + "\n" for cell in cells))
            sink.flush()
        log(f"done {len(done)} of {len(jobs_left)}: {unit[0].name} lead={unit[1]} {unit[2]}")

    try:
        _run_units(jobs_left, spec, jobs, finished)
    except BaseException as err:
        if rows and sink is not None:
            log(f"stopped: the {len(rows)} cells finished are in {cells_file}")
        if isinstance(err, TraceError | ReplayError):
            raise ReportError(str(err)) from None
        raise
    finally:
        if sink is not None:
            sink.close()
    order = {name: i for i, name in enumerate(BENCH_PREFETCHERS)}
    rows.sort(key=lambda r: (r["trace"], r["lead"], r["cache_frac"], order[r["prefetcher"]]))
    return rows


# What `_unit` puts in a cell besides its trace label and settings: a line lacking any, or with one of another type,
# is not reused.
_CELL_TYPES = {**typing.get_type_hints(ReplayResult), "cache_frac": float}


def _reused_cells(cells_file: Path, spec: MatrixSpec, units: list[Unit],
                  log: Callable[[str], None]) -> dict[tuple[Unit, float], dict[str, Any]]:
    """The cells in `cells_file` this run would compute (`resume.reusable_cells`), by (unit, cache_frac), each under
    the label this run gives its trace."""
    settings = {unit: unit_settings(*unit, spec) for unit in units}
    found = reusable_cells(cells_file, settings, spec.fracs, _CELL_TYPES, log)
    return {key: {**cell, "trace": spec.label(key[0][0])} for key, cell in found.items()}


def _run_units(units: list[Job], spec: MatrixSpec, jobs: int,
               finished: Callable[[Unit, list[dict[str, Any]]], None]) -> None:
    if jobs <= 1:
        for unit, fracs in units:
            finished(unit, _unit(*unit, spec, fracs))
        return
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_worker_start)
    try:
        futures = {pool.submit(_unit, *unit, spec, fracs): unit for unit, fracs in units}
        for future in as_completed(futures):
            finished(futures[future], future.result())
    except BaseException:
        # Stop now: leaving the pool normally would wait for every unit still queued or running (hours, at worst).
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in set(multiprocessing.active_children()) - before:
            worker.terminate()
        raise
    pool.shutdown()


def _worker_start() -> None:
    """A worker forked from the CLI inherits its SIGTERM handler, whose exception the pool would hand back as the
    unit's result and carry on with the next unit: let SIGTERM end a worker, as it ends any process."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (trace, lead, size): each prefetcher's miss ratio, learned / best-simple, and floor / best-simple.

    The floor is the fewest misses any prefetcher could have: where proposals of unread keys are dropped, every
    key's first read misses, so at least the trace's unique keys; where they are allowed, no bound (0)."""
    cells: dict[tuple[str, int, float], dict[str, Any]] = {}
    simple_misses: dict[tuple[str, int, float], list[int]] = {}
    floors: dict[tuple[str, int, float], int] = {}
    for row in rows:
        key = (row["trace"], row["lead"], row["cache_frac"])
        cell = cells.setdefault(
            key,
            {
                "trace": row["trace"],
                "lead": row["lead"],
                "cache_frac": row["cache_frac"],
                "cache_size": row["cache_size"],
                "requests": row["requests"],
            },
        )
        cell[row["prefetcher"]] = row["miss_ratio"]
        if row["prefetcher"] in ("stride", "markov"):
            simple_misses.setdefault(key, []).append(row["misses"])
            floors[key] = row["unique"] if row["new_keys"] == "drop" else 0
    out = []
    for key, cell in cells.items():
        simple = [cell[n] for n in ("stride", "markov") if n in cell]
        if "learned" in cell and simple:
            cell["learned_vs_best"] = _ratio(cell["learned"], min(simple))
        if simple:
            cell["floor_vs_best"] = floors[key] / min(simple_misses[key]) if floors[key] else 0.0
        if "learned" in cell and "shadow-select" in cell:
            cell["learned_vs_select"] = _ratio(cell["learned"], cell["shadow-select"])
        out.append(cell)
    return out


def _ratio(learned: float, best: float) -> float | None:
    """learned / best. Against a best with no misses: 1.0 when learned has none either, else None (no ratio says
    how much worse; the table shows n/a and counts it as a loss)."""
    if best > 0:
        return learned / best
    return 1.0 if learned == 0 else None


def _size_label(cell: dict[str, Any]) -> str:
    return f"{cell['cache_frac'] * 100:g}% ({cell['cache_size']})"


def _markdown(cells: list[dict[str, Any]], spec: MatrixSpec, guards: dict[str, tuple[str, float]]) -> str:
    names = [n for n in BENCH_PREFETCHERS if n in spec.prefetchers]
    ratios: list[tuple[str, str]] = []
    simple = "stride" in names or "markov" in names
    if "learned" in names and simple:
        ratios.append(("learned_vs_best", "learned/best"))
    if simple:
        ratios.append(("floor_vs_best", "floor/best"))
    if "learned" in names and "shadow-select" in names:
        ratios.append(("learned_vs_select", "learned/select"))
    explained = {
        "learned_vs_best": "`learned/best` is the learned miss ratio over the better of stride and Markov",
        "floor_vs_best": "`floor/best` the fewest misses any prefetcher could have (the unique keys where unread "
        "keys are dropped; 0 where they are allowed: no bound) over the better of stride's and Markov's",
        "learned_vs_select": "`learned/select` over `shadow-select` (the same selector without the network)",
    }
    limit = f"first {spec.limit} requests of each trace (all of a shorter one)" if spec.limit else "all requests"
    learned_ratio = any(key != "floor_vs_best" for key, _ in ratios)
    lines = [
        f"Miss ratio, policy `{spec.policy}`, budget {spec.budget}, {limit}"
        + "".join(f"; {explained[key]}" for key, _ in ratios)
        + ("; n/a: the baseline had no misses and learned had some." if learned_ratio else "."),
        "",
        _guard_line(spec.new_keys, guards),
        "",
    ]
    for lead in spec.leads:
        lines += [
            f"### lead {lead}",
            "",
            "| trace | cache | " + " | ".join([*names, *(title for _, title in ratios)]) + " |",
            "|---|---:|" + "---:|" * (len(names) + len(ratios)),
        ]
        for c in (c for c in cells if c["lead"] == lead):
            shown = [_shown_ratio(c, key) for key, _ in ratios]
            lines.append(
                f"| {c['trace']} | {_size_label(c)} | "
                + " | ".join([*(f"{c[n]:.4f}" if n in c else "" for n in names), *shown])
                + " |"
            )
        lines.append("")
    for key, title in ratios:
        lines.extend(_floor_summary(cells) if key == "floor_vs_best" else _ratio_summary(cells, key, title))
    return "\n".join(lines) + "\n"


def _shown_ratio(cell: dict[str, Any], key: str) -> str:
    if key not in cell:
        return ""
    if cell[key] is None:
        return "n/a"
    return "0" if key == "floor_vs_best" and cell[key] == 0 else f"{cell[key]:.3f}"


def _floor_summary(cells: list[dict[str, Any]]) -> list[str]:
    floors = [c["floor_vs_best"] for c in cells if "floor_vs_best" in c]
    if not floors:
        return []
    bound = sum(f > GOAL for f in floors)
    return [f"floor/best: above {GOAL} in {bound} of {len(floors)} cells, where no prefetcher can reach the goal "
            f"(its misses at most {GOAL} of the better simple one's)."]


def _ratio_summary(cells: list[dict[str, Any]], key: str, title: str) -> list[str]:
    ratios = [c[key] for c in cells if key in c]
    if not ratios:
        return []
    known = [r for r in ratios if r is not None]
    wins = sum(r <= 1.0 for r in known)
    line = f"{title}: <= 1 in {wins} of {len(ratios)} cells"
    if len(known) < len(ratios):
        line += f" ({len(ratios) - len(known)} n/a, counted as losses)"
    if known:
        line += f"; mean {sum(known) / len(known):.3f}, worst {max(known):.3f}"
    return [line + "."]


def _guard_line(requested: str, guards: dict[str, tuple[str, float]]) -> str:
    """Which traces ran with proposals of unread keys dropped, with each one's share of numbered first accesses."""
    by_mode: dict[str, list[str]] = {}
    for trace, (mode, share) in sorted(guards.items()):
        by_mode.setdefault(mode, []).append(f"{trace} ({share:.3f})")
    parts = [f"{'dropped' if mode == 'drop' else 'allowed'} on {', '.join(traces)}"
             for mode, traces in sorted(by_mode.items(), reverse=True)]
    return (f"Prefetches of keys not read yet (`--new-keys {requested}`; in parentheses, the share of first accesses "
            f"numbered largest-so-far + 1): {'; '.join(parts)}.")


def _plots(cells: list[dict[str, Any]], spec: MatrixSpec, out: Path) -> list[Path] | None:
    """One PNG per lead, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    written = []
    names = [n for n in BENCH_PREFETCHERS if n in spec.prefetchers]
    for lead in spec.leads:
        subset = [c for c in cells if c["lead"] == lead]
        labels = [f"{c['trace']}\n{c['cache_frac'] * 100:g}%" for c in subset]
        fig, ax = plt.subplots(figsize=(max(8, len(subset) * 0.45), 4.5))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(subset))]
            ax.bar(xs, [c.get(name, 0.0) for c in subset], width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(subset))], labels, rotation=90, fontsize=6)
        ax.set_ylabel("miss ratio")
        ax.set_title(f"miss ratio by prefetcher, lead {lead}, policy {spec.policy}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"miss_ratio_lead{lead}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(
    rows: list[dict[str, Any]], spec: MatrixSpec, out: Path, log: Callable[[str], None] = lambda line: None
) -> list[Path]:
    """results.json (every cell), results.md (the table) and one PNG per lead when matplotlib is there."""
    out.mkdir(parents=True, exist_ok=True)
    cells = summarize(rows)
    guards = {row["trace"]: (row["new_keys"], row["first_access_numbered"]) for row in rows}
    _write_atomically(out / "results.json", json.dumps(rows, indent=1))
    _write_atomically(out / "results.md", _markdown(cells, spec, guards))
    plots = _plots(cells, spec, out)
    if plots is None:
        log("PNG plots skipped: matplotlib is not installed (pip install matplotlib)")
    return [out / "results.json", out / "results.md", *(plots or [])]


def _write_atomically(path: Path, text: str) -> None:
    """A reader never sees half a file, and a failed write leaves the earlier one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
