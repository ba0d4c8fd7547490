"""`foresight bench`: RESP throughput against redis-server, the access log's cost, trace replay and the report."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import typer

from service.bench.resp import bench_resp
from service.cli_failure import fail
from service.prefetch.markov import DEFAULT_MAX_KEYS

if TYPE_CHECKING:
    from service.bench.replay import ReplayResult

app = typer.Typer(
    help="Benchmarks: RESP against redis-server, trace replay and its report, the live server, the shared tier, what "
    "the access log and the prefetchers cost.",
    no_args_is_help=True,
)
app.command("resp")(bench_resp)

_LARGE = 200_000  # requests above which replay shows a progress bar on an interactive stderr
_CACHE_FRAC_HELP = "Cache size as a fraction of unique keys (default 0.05 unless --cache-size is given)."
_NEW_KEYS_HELP = (
    "Prefetches of keys not read yet: drop, allow, or auto (drop where the trace's first accesses are numbered "
    "largest-so-far + 1, which would leak the next new key)."
)


class Terminated(SystemExit):
    """SIGTERM, raised where the benchmark is, so that the servers and scratch directories it started go as on Ctrl-C
    (the default action would end the process on the spot and leave them behind)."""


@app.callback()
def _bench(ctx: typer.Context) -> None:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated(128 + signum)


def _echo_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> None:
    """A Markdown table: the first `text_columns` left-aligned, the rest (numbers) right-aligned."""
    typer.echo(f"| {' | '.join(header)} |\n|{'---|' * text_columns}{'---:|' * (len(header) - text_columns)}")
    for row in rows:
        typer.echo(f"| {' | '.join(row)} |")


def _prefetcher_names(text: str, as_json: bool) -> list[str]:
    """Comma-separated prefetcher names, each one the service knows; raises a clear error otherwise."""
    from service.prefetch import PREFETCHERS

    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(names) - set(PREFETCHERS))
    if not names or unknown:
        given = ", ".join(unknown) or "(none given)"
        raise fail(f"unknown prefetcher(s): {given} (choose from {', '.join(PREFETCHERS)})", as_json)
    return names


def _check_device(device: str, as_json: bool) -> None:
    """A clear error for a device this machine cannot run, before any work (torch is imported only for cuda)."""
    if device not in ("cpu", "cuda"):
        raise fail(f"--device must be cpu or cuda, got {device!r}", as_json)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise fail("--device cuda asked for, but torch sees no CUDA device", as_json)


TraceFile = Annotated[Path, typer.Argument(help="Trace file: ARC .lis, key-per-line text or CSV; plain, .gz, .zst, "
                                                         ".xz or .bz2.")]


@app.command()
def replay(
    trace: TraceFile,
    fmt: Annotated[str, typer.Option("--format", help="auto, lis, text or csv.")] = "auto",
    limit: Annotated[int | None, typer.Option(help="Replay only the first N requests.")] = None,
    cache_frac: Annotated[float | None, typer.Option(help=_CACHE_FRAC_HELP)] = None,
    cache_size: Annotated[int | None, typer.Option(help="Cache size in entries.")] = None,
    policy: Annotated[str, typer.Option(help="Eviction policy: lru or s3fifo.")] = "s3fifo",
    prefetcher: Annotated[str, typer.Option(help="none, stride, markov, shadow-select or learned.")] = "none",
    budget: Annotated[int, typer.Option(help="Prefetches per request at most.")] = 1,
    lead: Annotated[int, typer.Option(help="Requests before a prefetch lands (0: at once).")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda, for the learned prefetcher.")] = "cpu",
    threshold: Annotated[float, typer.Option(help="Minimum confidence to prefetch.")] = 0.25,
    max_keys: Annotated[
        int, typer.Option(min=1024, help="Keys a Markov or learned prefetcher remembers (FORESIGHT_PREFETCH_MAX_KEYS).")
    ] = DEFAULT_MAX_KEYS,
    seed: Annotated[int, typer.Option(min=0, help="The learned model's seed: how much of a result is its luck.")] = 0,
    new_keys: Annotated[str, typer.Option(help=_NEW_KEYS_HELP)] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bar.")] = None,
) -> None:
    """Replay a trace through the service's store, eviction policy, prefetcher and coordinator.

    Without --cache-frac or --cache-size the cache holds 5 % of the trace's unique keys.
    For example:

        foresight bench replay ../shared/traces/lirs-sprite.txt.gz --cache-frac 0.1 --prefetcher stride
    """
    from service.bench.replay import ReplayError, make_bench_prefetcher, resolve_cache_size
    from service.bench.replay import replay as run_replay
    from service.bench.traces import TraceError, load_trace
    from service.store.policies import POLICIES

    if policy not in POLICIES:
        raise fail(f"unknown eviction policy {policy!r}; choose one of: {', '.join(sorted(POLICIES))}", as_json)
    _check_device(device, as_json)
    try:
        size = resolve_cache_size(1, cache_frac, cache_size)  # validates the pair before reading the trace
        loaded = load_trace(trace, fmt, limit)
        size = resolve_cache_size(loaded.unique, cache_frac, cache_size)
        engine = make_bench_prefetcher(prefetcher, lead=lead, device=device, max_keys=max_keys, seed=seed)
        show = progress if progress is not None else (len(loaded) > _LARGE and sys.stderr.isatty())
        if show:
            result = _with_progress(
                len(loaded),
                lambda tick: run_replay(loaded, size, engine, policy=policy, budget=budget, lead=lead,
                                        threshold=threshold, progress=tick, new_keys=new_keys),
            )
        else:
            result = run_replay(loaded, size, engine, policy=policy, budget=budget, lead=lead, threshold=threshold,
                                new_keys=new_keys)
    except (TraceError, ReplayError, ValueError) as err:
        raise fail(str(err), as_json) from None
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    typer.echo(
        f"{result.trace}: {result.requests} requests, {result.unique} unique, cache {result.cache_size} "
        f"({result.policy}), prefetcher {result.prefetcher} (budget {result.budget}, lead {result.lead})\n"
        f"  hits {result.hits}  misses {result.misses}  miss ratio {result.miss_ratio:.4f}  "
        f"hit ratio {1 - result.miss_ratio:.4f}\n"
        f"  prefetch issued {result.prefetch_issued}  used {result.prefetch_used}  "
        f"late {result.prefetch_late}  in {result.seconds:.1f}s\n"
        f"  new keys {result.new_keys} (first accesses numbered largest + 1: {result.first_access_numbered:.1%}), "
        f"proposals of unread keys dropped {result.prefetch_dropped_new}"
    )


def _with_progress(total: int, run: Callable[[Callable[[int], None]], ReplayResult]) -> ReplayResult:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("replay", total=total)
        return run(lambda n: bar.advance(task, n))


@app.command()
def report(
    traces: Annotated[list[Path], typer.Argument(help="Trace files (or directories of them).")],
    out: Annotated[Path, typer.Option(help="Directory for results.json, results.md and PNG plots.")] = Path(
        "out/bench-report"
    ),
    fracs: Annotated[str, typer.Option(help="Cache sizes as fractions of unique keys.")] = "0.01,0.05,0.1",
    leads: Annotated[str, typer.Option(help="Prefetch leads.")] = "0,10",
    prefetchers: Annotated[
        str, typer.Option(help="Prefetchers to compare (shadow-select: the learned one's selector, no network).")
    ] = "none,stride,markov,shadow-select,learned",
    policy: Annotated[str, typer.Option(help="Eviction policy.")] = "s3fifo",
    limit: Annotated[int | None, typer.Option(help="First N requests of each trace.")] = 1_000_000,
    budget: Annotated[int, typer.Option(help="Prefetches per request at most.")] = 1,
    jobs: Annotated[int, typer.Option(min=1, help="Parallel worker processes.")] = 1,
    new_keys: Annotated[str, typer.Option(help=_NEW_KEYS_HELP)] = "auto",
    resume: Annotated[bool, typer.Option(
        "--resume", help="Reuse the cells in --out's results.jsonl that these settings would compute, run only the "
        "rest and append theirs (without it, results.jsonl is overwritten).")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: the files written and the table's cells.")
    ] = False,
) -> None:
    """Run traces x cache sizes x prefetchers x leads; write a Markdown table, JSON and PNG plots (with matplotlib).

    --out is checked before anything runs. Each finished unit's cells go to results.jsonl in --out at once, so a
    run that fails or is stopped keeps them; run it again with --resume to finish it. A cell is reused only where
    every setting matches (trace file, limit, policy, prefetcher, lead, budget, --new-keys, cache size); the lines
    that do not are counted on stderr and left out. For example:

        foresight bench report ../shared/traces --jobs 2 --out out/bench-report [--resume]
    """
    from service.bench.report import MatrixSpec, ReportError, prepare_out, run_matrix, summarize, write_report

    def log(line: str) -> None:
        typer.echo(line, err=True)

    try:
        spec = MatrixSpec.parse(traces, fracs, leads, prefetchers, policy, limit, budget, new_keys)
        prepare_out(out)
        rows = run_matrix(spec, jobs=jobs, log=log, cells_file=out / "results.jsonl", resume=resume)
        written = write_report(rows, spec, out, log=log)
    except (ReportError, ValueError) as err:
        raise fail(str(err), as_json) from None
    except OSError as err:  # the disk filled or --out went away while the matrix ran
        raise fail(f"write the report to {out}: {err.strerror or err}", as_json) from None
    if as_json:
        typer.echo(json.dumps({"files": [str(path) for path in written], "cells": summarize(rows)}))
        return
    for path in written:
        typer.echo(str(path))


@app.command("access-log")
def access_log(
    requests: Annotated[int, typer.Option(min=1000, help="Requests per redis-benchmark run.")] = 200_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What recording reads for the prefetcher adds to a served GET (goal: under 1%).

    Measures the in-process GET dispatch with and without the access log, and the server's time per served
    GET with redis-benchmark (50 clients, -P 1 and -P 16) against `foresight serve --dev`. Under load the engine
    records only a sample of reads: `bench prefetch-load` reports the share it logged.
    """
    from service.bench.hotpath import measure
    from service.bench.resp import BenchError

    try:
        cost = measure(requests)
    except BenchError as err:
        raise fail(str(err), as_json) from None
    if as_json:
        typer.echo(json.dumps(cost.as_dict()))
        return
    typer.echo(f"GET dispatch in process: {cost.dispatch_ns:.0f} ns; the access log adds "
               f"{cost.added_ns['drained']:.0f} ns to a recorded GET ({cost.added_ns['full']:.0f} ns were the ring "
               "full, which a worker that is behind avoids by recording a sample)")
    for pipeline, micros in sorted(cost.served_get_us.items()):
        typer.echo(f"served GET at -P {pipeline}: {micros:.2f} us of server time; access log overhead "
                   f"{cost.overhead(pipeline):.2%} ({cost.overhead(pipeline, 'full'):.2%} with the ring full)")


@app.command("randomkey")
def randomkey(
    keys: Annotated[int, typer.Option(min=1000, help="Keys in the store.")] = 1_000_000,
    draws: Annotated[int, typer.Option(min=100, help="RANDOMKEY calls timed after the first.")] = 10_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """RANDOMKEY's draw from its key index against the walk it replaced, on the same store in the same run, and
    what keeping the index costs a tenant's writes (SET of a new key, DEL) against a store without one."""
    from service.bench.randomkey import measure

    cost = measure(keys, draws)
    if as_json:
        typer.echo(json.dumps(cost.as_dict()))
        return
    typer.echo(f"RANDOMKEY at {keys:,} keys: walk to a random position (the former implementation) "
               f"{cost.walk_us:,.1f} us median; draw from the index {cost.draw_us:.2f} us median (p99 "
               f"{cost.draw_p99_us:.2f} us): {cost.speedup:,.0f}x; the first call builds the index in "
               f"{cost.first_call_ms:.1f} ms")
    for what, ns in (("SET of a new key", cost.set_ns), ("DEL", cost.del_ns)):
        typer.echo(f"{what} with the index kept: {ns['with']:.0f} ns, without: {ns['without']:.0f} ns "
                   f"({ns['with'] / ns['without']:.2f}x)")


@app.command("learned-cost")
def learned_cost(
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    warmup: Annotated[int, typer.Option(min=0, help="Reads before timing; the schedule settles at 32,768.")] = 50_000,
    reads: Annotated[int, typer.Option(min=128, help="Reads timed.")] = 20_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The learned prefetcher's CPU per read and its parts, settled training against training every 1,024 reads.

    Under load this cost decides how many of a tenant's reads the model predicts from (its CPU share,
    FORESIGHT_PREFETCH_PROCESS_SHARE, divided by it). Random keys, batches of 128, a 5,000-entry cache, one
    torch thread.
    """
    from service.bench.learned_cost import as_json as to_json
    from service.bench.learned_cost import measure

    _check_device(device, as_json)
    costs = measure(device, warmup, reads)
    if as_json:
        typer.echo(json.dumps(to_json(costs)))
        return
    parts = list(costs[0].parts_us)
    _echo_table(["schedule", "us per read", *parts],
                [[c.schedule, f"{c.us_per_read:.1f}", *(f"{c.parts_us.get(p, 0.0):.1f}" for p in parts)]
                 for c in costs])
    typer.echo(f"settled / every-1024: {to_json(costs)['ratio']:.2f}x on {device}")


@app.command("prefetch-pool")
def prefetch_pool(
    processes: Annotated[str, typer.Option(help="Comma-separated pool sizes; the first is the baseline.")] = "1,2",
    tenants: Annotated[int, typer.Option(min=1, help="Learned prefetchers, one thread each.")] = 2,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    warmup: Annotated[int, typer.Option(min=0, help="Reads per tenant before measuring (training settles).")] = 20_000,
    seconds: Annotated[float, typer.Option(min=0.5, help="Seconds measured per pool size.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Reads a second that several tenants' learned prefetchers predict from, over pools of child processes.

    Each child computes on one core (FORESIGHT_PREFETCH_PROCESSES spreads tenants over several). Random keys,
    batches of 128, a 5,000-entry cache, no CPU budget: the children's capacity. Prints every tenant's total and
    the least served tenant's, and the ratio to the first pool size.
    """
    from service.bench.pool import as_json as to_json
    from service.bench.pool import measure

    try:
        sizes = [int(size) for size in processes.split(",") if size.strip()]
    except ValueError:
        raise fail(f"--processes takes comma-separated whole numbers, got {processes!r}", as_json) from None
    if not sizes or min(sizes) < 1:
        raise fail(f"--processes needs pool sizes of 1 or more, got {processes!r}", as_json)
    _check_device(device, as_json)
    figures = measure(sizes, tenants, device, warmup, seconds)
    report = to_json(figures)
    if as_json:
        typer.echo(json.dumps(report))
        return
    _echo_table(["processes", "tenants", "reads/s", "slowest tenant", "ratio"],
                [[str(f["processes"]), str(f["tenants"]), f"{f['reads_per_s']:,.0f}",
                  f"{f['slowest_tenant_reads_per_s']:,.0f}", f"{f['ratio']:.2f}x"] for f in report["figures"]])


@app.command("prefetch-memory")
def prefetch_memory(
    reads: Annotated[
        int, typer.Option(min=1024, help="Reads fed: random keys, nearly all new, or the trace's first N.")
    ] = DEFAULT_MAX_KEYS,
    max_keys: Annotated[
        int, typer.Option(min=1024, help="Keys remembered at most (FORESIGHT_PREFETCH_MAX_KEYS).")
    ] = DEFAULT_MAX_KEYS,
    trace: Annotated[
        Path | None,
        typer.Option(help="Feed this trace's keys instead of random ones (formats as `bench replay`'s, auto)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What the Markov and learned prefetchers hold per key they remember, against a set of the same keys.

    Their per-key state (successor tables, last reads) is most of a tenant's prefetcher memory on a large key
    space and is bounded by FORESIGHT_PREFETCH_MAX_KEYS. Random keys each have one successor, the cheapest
    case; a trace's keys recur with several (--trace). Each runs in a fresh interpreter; resident memory
    before and after. Linux only (/proc).
    """
    from service.bench.memory import as_json as to_json
    from service.bench.memory import measure
    from service.bench.traces import TraceError, load_trace
    from service.prefetch.isolated import resident_bytes

    if resident_bytes() is None:
        raise fail("prefetch-memory reads resident memory from /proc: Linux only", as_json)
    try:
        keys = load_trace(trace, limit=reads).keys if trace is not None else None
    except TraceError as err:
        raise fail(str(err), as_json) from None
    figures = measure(reads, max_keys, keys)
    if as_json:
        typer.echo(json.dumps(to_json(figures)))
        return
    _echo_table(["state", "reads", "keys remembered", "MB", "KB per key", "ratio to set"],
                [[f.prefetcher, f"{f.reads:,}", f"{f.keys:,}", f"{f.mb:.0f}", f"{f.kb_per_key:.3f}",
                  "n/a" if f.ratio is None else f"{f.ratio:.2f}x"]
                 for f in figures])


@app.command("prefetch-load")
def prefetch_load(
    prefetchers: Annotated[str, typer.Option(help="Comma-separated prefetchers to compare with none.")] = "learned",
    requests: Annotated[int, typer.Option(min=1000, help="GETs per redis-benchmark run.")] = 200_000,
    rounds: Annotated[int, typer.Option(min=1, help="Alternating rounds; medians are reported.")] = 3,
    cpu_share: Annotated[
        float | None, typer.Option(min=0.001, max=1.0, help="FORESIGHT_PREFETCH_CPU_SHARE for the servers.")
    ] = None,
    process_share: Annotated[
        float | None,
        typer.Option(min=0.001, max=1.0, help="FORESIGHT_PREFETCH_PROCESS_SHARE (unset: a core where one is spare)."),
    ] = None,
    isolation: Annotated[
        str, typer.Option(help="Comma-separated FORESIGHT_PREFETCH_ISOLATION values to run each prefetcher with.")
    ] = "process,thread",
    device: Annotated[str, typer.Option(help="cpu or cuda, for the learned model.")] = "cpu",
    warmup: Annotated[
        int, typer.Option(min=0, help="GETs (-P 16) once the engine runs, before measuring (its training settles).")
    ] = 100_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What a running prefetch engine costs a busy server's GET throughput (ratio to no prefetcher).

    Runs `foresight serve --dev` over a scratch directory origin without a prefetcher and with each one (in a
    child process and in the worker thread), in alternating rounds; waits until each server's prefetch engine
    runs, fills and warms it, and measures GETs with redis-benchmark (50 clients, -P 1 and -P 16), the share
    of them the prefetcher predicted from and the share its access log recorded.
    """
    from service.bench.prefetch_load import LoadSetup, measure
    from service.bench.prefetch_load import as_json as to_json
    from service.bench.resp import BenchError

    names = _prefetcher_names(prefetchers, as_json)
    isolations = tuple(i.strip() for i in isolation.split(",") if i.strip())
    if not isolations or set(isolations) - {"process", "thread"}:
        raise fail(f"--isolation takes process and/or thread, got {isolation!r}", as_json)
    _check_device(device, as_json)
    setup = LoadSetup(requests=requests, rounds=rounds, cpu_share=cpu_share, process_share=process_share,
                      device=device, warmup=warmup, isolations=isolations)
    try:
        figures = measure(names, setup)
    except (BenchError, subprocess.CalledProcessError) as err:
        raise fail(str(err), as_json) from None
    if as_json:
        typer.echo(json.dumps(to_json(figures, setup)))
        return
    _echo_table(["prefetcher", "isolation", "pipeline", "GET rps", "ratio to none", "p99 ms", "GETs predicted",
                 "GETs logged"],
                [[f.prefetcher, f.isolation, str(f.pipeline), f"{f.rps:,.0f}", f"{f.rps_ratio:.2f}x", f"{f.p99_ms:.3f}",
                  *("" if share is None else f"{share:.0%}" for share in (f.predicted, f.logged))] for f in figures],
                text_columns=2)


@app.command("live-replay")
def live_replay(
    trace: TraceFile,
    fmt: Annotated[str, typer.Option("--format", help="auto, lis, text or csv.")] = "auto",
    limit: Annotated[int, typer.Option(min=1, help="Replay only the first N requests.")] = 50_000,
    cache_frac: Annotated[float | None, typer.Option(help=_CACHE_FRAC_HELP)] = None,
    cache_size: Annotated[int | None, typer.Option(help="Cache size in entries.")] = None,
    prefetchers: Annotated[str, typer.Option(help="Comma-separated prefetchers (none is a baseline).")] = (
        "none,stride,learned"
    ),
    rates: Annotated[str, typer.Option(help="Comma-separated reads per second; max: as fast as it answers.")] = (
        "1000,10000,max"
    ),
    connections: Annotated[int, typer.Option(min=1, help="Client connections; more than 1 interleaves the trace.")] = 1,
    pipeline: Annotated[int, typer.Option(min=1, help="GETs sent together on a connection.")] = 8,
    device: Annotated[str, typer.Option(help="cpu or cuda, for the learned model.")] = "cpu",
    lead_tuning: Annotated[str, typer.Option(help="on, off or on,off: whether the engine tunes its stride answers' "
                                             "lead live (off: FORESIGHT_PREFETCH_LEAD throughout).")] = "on",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """How much of a prefetcher's replay hit ratio a running server keeps at a read rate.

    Replays the trace's keys as GETs against `foresight serve --dev` (a fresh server, cold cache and model, per
    prefetcher and rate) over a scratch directory origin holding every key, in order, paced, in pipelined
    batches, and prints the live hit ratio beside `bench replay`'s for the same trace, cache size and prefetcher (lead
    0), with what the engine predicted from, how many reads late its proposals were issued, and the share of
    them the engine's own stride answered (a learned engine whose answers came late). For example:

        foresight bench live-replay ../shared/traces/lirs-sprite.txt.gz --limit 20000 --rates 1000,max
    """
    from service.bench.live_replay import as_json as to_json
    from service.bench.live_replay import measure
    from service.bench.replay import ReplayError, resolve_cache_size
    from service.bench.resp import BenchError
    from service.bench.traces import TraceError, load_trace

    names = _prefetcher_names(prefetchers, as_json)
    try:
        targets = [None if r.strip() == "max" else float(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        raise fail(f"--rates takes reads per second or max, got {rates!r}", as_json) from None
    if not targets or any(t is not None and not 1 <= t < math.inf for t in targets):  # nan fails both
        raise fail(f"--rates takes reads per second (at least 1) or max, got {rates!r}", as_json)
    _check_device(device, as_json)
    tunings = {"on": True, "off": False}
    modes = [m.strip() for m in lead_tuning.split(",") if m.strip()]
    if not modes or any(m not in tunings for m in modes):
        raise fail(f"--lead-tuning takes on, off or on,off, got {lead_tuning!r}", as_json)
    try:
        resolve_cache_size(1, cache_frac, cache_size)  # validates the pair before reading the trace
        loaded = load_trace(trace, fmt, limit)
        size = resolve_cache_size(loaded.unique, cache_frac, cache_size)
        environment = {**os.environ, "FORESIGHT_PREFETCH_DEVICE": device}
        figures = measure(loaded, size, names, targets, environment, connections, pipeline,
                          progress=lambda line: typer.echo(f"live-replay: {line}", err=True),
                          tunings=[tunings[m] for m in dict.fromkeys(modes)])
    except (TraceError, ReplayError, BenchError, ValueError) as err:
        raise fail(str(err), as_json) from None
    if as_json:
        typer.echo(json.dumps(to_json(figures, loaded, size)))
        return
    typer.echo(f"{loaded.name}: {len(loaded)} requests, {loaded.unique} unique, cache {size} entries\n")
    _echo_table(["prefetcher", "target reads/s", "stride lead", "reads/s", "live hit ratio", "replay hit ratio",
                 "issued", "used", "predicted", "lag (reads)", "stride-answered"],
                [[f.prefetcher, "max" if f.target_rate is None else f"{f.target_rate:,.0f}",
                  "-" if f.stride_lead is None else f"{f.stride_lead:.0f} ({'tuned' if f.tune_lead else 'fixed'})",
                  f"{f.rate:,.0f}", f"{f.hit_ratio:.4f}", f"{f.replay_hit_ratio:.4f}", f"{f.issued:,}", f"{f.used:,}",
                  f"{f.predicted:.0%}", f"{f.lag_reads:,.0f}", f"{f.fast_share:.0%}"] for f in figures])


@app.command("shared-tier")
def shared_tier(
    trace: TraceFile,
    fmt: Annotated[str, typer.Option("--format", help="auto, lis, text or csv.")] = "auto",
    limit: Annotated[int, typer.Option(min=1, help="Replay only the first N requests.")] = 100_000,
    nodes: Annotated[int, typer.Option(min=1, max=64, help="Service nodes behind the balancer.")] = 4,
    cache_frac: Annotated[float, typer.Option(min=0.0001, max=1.0, help="Each node's memory, as a fraction of the "
                                              "trace's unique keys.")] = 0.05,
    value_bytes: Annotated[int, typer.Option(min=1, max=1 << 20, help="Size of every object.")] = 1024,
    origin_latency_ms: Annotated[float, typer.Option(min=0, help="Latency of each origin read.")] = 20.0,
    concurrency: Annotated[int, typer.Option(min=1, max=4096, help="Reads in flight.")] = 64,
    tier_url: Annotated[str | None, typer.Option(
        help="Use this Valkey/Redis (rediss://...; FORESIGHT_SHARED_TIER_* settings apply); default: a redis-server "
        "started on loopback.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What a shared Valkey/Redis tier saves several nodes: origin reads and latency, nodes alone vs shared.

    Replays the trace across --nodes service nodes (request i to node i mod N), first each node on its own, then
    all on one shared tier, and prints both runs and the shared run's ratios. Needs redis-server (Debian:
    redis-server) unless --tier-url is given; a tier that cannot be reached stops it before the runs (exit 2).
    For example:

        foresight bench shared-tier ../shared/traces/cache2k-web07.txt.gz --nodes 4 --limit 50000
    """
    from service.bench.resp import BenchError, server_process
    from service.bench.shared_tier import measure
    from service.bench.traces import TraceError, load_trace
    from service.config import ConfigError, shared_tier_url_problem
    from service.net import free_port

    if tier_url is not None:
        if problem := shared_tier_url_problem(tier_url):
            raise fail(f"--tier-url: {problem}", as_json)
        _check_reachable(tier_url, as_json)
    try:
        loaded = load_trace(trace, fmt, limit)
        with contextlib.ExitStack() as stack:
            if tier_url is None:
                port = free_port()
                binary = shutil.which("redis-server")
                if binary is None:
                    raise BenchError("redis-server not found: apt-get install -y redis-server, or pass --tier-url")
                stack.enter_context(server_process(
                    [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                    port, "redis-server"))
                tier_url = f"redis://127.0.0.1:{port}"
            report = measure(loaded, tier_url, nodes, cache_frac, value_bytes, origin_latency_ms, concurrency,
                             progress=lambda line: typer.echo(f"shared-tier: {line}", err=True))
    except (TraceError, BenchError, ConfigError) as err:
        raise fail(str(err), as_json) from None
    if errors := report["runs"][1]["tier_errors"]:
        typer.echo(f"warning: {errors:,} shared tier calls failed during the shared run (those reads went to the "
                   "origin)", err=True)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"{loaded.name}: {report['requests']} requests, {report['unique']} unique, {nodes} nodes, each "
               f"caching {cache_frac:.0%} of the keys; origin {origin_latency_ms:g} ms, {concurrency} in flight\n")
    _echo_table(["nodes", "origin reads", "memory hits", "tier hits", "tier errors", "mean ms", "p50 ms", "p99 ms",
                 "seconds"],
                [[run["mode"], f"{run['origin_reads']:,}", f"{run['memory_hits']:,}", f"{run['tier_hits']:,}",
                  f"{run['tier_errors']:,}", f"{run['mean_ms']:.2f}", f"{run['p50_ms']:.2f}", f"{run['p99_ms']:.2f}",
                  f"{run['seconds']:.1f}"]
                 for run in report["runs"]])
    typer.echo(f"\nshared/alone: origin reads {report['origin_reads_ratio']:.3f}x, mean latency "
               f"{report['mean_latency_ratio']:.3f}x, p99 latency {report['p99_latency_ratio']:.3f}x")


def _check_reachable(tier_url: str, as_json: bool) -> None:
    """Refuse a tier nothing listens on before the runs: ratios against a tier that never answered mean nothing."""
    parts = urlsplit(tier_url)
    try:
        socket.create_connection((parts.hostname, parts.port or 6379), timeout=5).close()
    except OSError as err:
        raise fail(f"--tier-url {tier_url}: cannot connect ({err.strerror or err})", as_json) from None
