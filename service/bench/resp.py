"""`foresight bench resp`: redis-benchmark against redis-server and Foresight in one run, side by side.

Both servers run as separate processes on loopback, each benchmark is repeated alternately on the two, and
the table reports each figure with the Foresight/Redis ratio, so machine noise hits both sides alike.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import IO, Annotated

import typer

from service.cli_failure import fail
from service.net import free_port


class BenchError(RuntimeError):
    """A benchmark prerequisite is missing or a server failed to start."""


@dataclass(frozen=True)
class Figure:
    server: str
    test: str
    pipeline: int
    rps: float
    p50_ms: float
    p99_ms: float


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on port {port} within {timeout:.0f}s")


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def spawn(argv: list[str], output: IO[bytes] | None = None, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    """Start a process the benchmark owns, which on Linux gets SIGTERM when the benchmark dies, even of SIGKILL
    (which runs no clean-up: without this its servers would live on, holding their ports and scratch origins).

    The signal comes when the *thread* that started the child ends (PR_SET_PDEATHSIG follows the forking thread,
    not the process), so spawn from the main thread or one that outlives the child, as every bench does. Elsewhere
    than Linux the child is started as it is, with no such signal."""
    die_with_parent = _die_with(os.getpid()) if sys.platform == "linux" else None
    return subprocess.Popen(argv, stdout=output, stderr=output, env=env, preexec_fn=die_with_parent)


def _die_with(parent: int) -> Callable[[], None]:
    """The child's last step before exec: ask for SIGTERM when the parent's thread ends; and if the parent died
    between the fork and this, exit now, since the request would never fire."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it

    def request() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(1)

    return request


@contextmanager
def server_process(argv: list[str], port: int, name: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run a server until the block ends (and no longer than the benchmark, `spawn`); returns once it accepts
    connections on `port`."""
    with tempfile.TemporaryFile() as log:
        proc = spawn(argv, log, env)
        try:
            try:
                _wait_for_port(port, proc, name)
            except BenchError as err:
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-15:]
                raise BenchError("\n".join([str(err), *(f"  {line}" for line in tail)])) from None
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def dev_server_argv(resp_port: int, http_port: int, *options: str) -> list[str]:
    """`foresight serve --dev` on these ports, run by this interpreter (the benchmark's own install)."""
    return [sys.executable, "-c", "from service.cli import main; main()", "serve", "--dev",
            "--resp-port", str(resp_port), "--http-port", str(http_port), *options]


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise BenchError(f"{binary} not found: apt-get install -y redis-server redis-tools")
    return path


# Tests beyond redis-benchmark's own (-t): a script as rate limiters and counters call it, sent as a custom command.
CUSTOM_TESTS = {"eval": ["EVAL", "return redis.call('INCRBY', KEYS[1], ARGV[1])", "1", "counter:__rand_int__", "1"]}
# redis-benchmark's -t names that run one test each: `ping` and `lrange*` run several (lrange an LPUSH first), and a
# name it does not know runs nothing.
BENCHMARK_TESTS = ("get", "set", "incr", "mset", "lpush", "rpush", "lpop", "rpop", "sadd", "spop", "hset", "zadd",
                   "zpopmin", "ping_inline", "ping_mbulk")


def run_redis_benchmark(port: int, test: str, requests: int, clients: int, pipeline: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from one redis-benchmark run."""
    argv = [
        _require("redis-benchmark"),
        "-p",
        str(port),
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-P",
        str(pipeline),
        "-r",
        "100000",
        "-d",
        "64",
        "--csv",
        *CUSTOM_TESTS.get(test, ["-t", test]),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    if not rows:
        raise BenchError(f"redis-benchmark printed no result for {test}: {out!r}")
    row = rows[0]
    return float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"])


def measure(requests: int, clients: int, pipelines: list[int], rounds: int, tests: list[str]) -> list[Figure]:
    redis_port, foresight_port, http_port = free_port(), free_port(), free_port()
    redis_argv = [
        _require("redis-server"),
        "--port",
        str(redis_port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    foresight_argv = dev_server_argv(foresight_port, http_port)
    # What a script costs, not how a tenant's scripts are paced: the budget would refuse most of the eval test's.
    foresight_env = os.environ | {"FORESIGHT_SCRIPT_BUDGET_MS_PER_S": "0"}
    samples: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {}
    with (
        server_process(redis_argv, redis_port, "redis-server"),
        server_process(foresight_argv, foresight_port, "foresight", foresight_env),
    ):
        for _ in range(rounds):
            for test in tests:
                for pipeline in pipelines:
                    for name, port in (("redis", redis_port), ("foresight", foresight_port)):
                        result = run_redis_benchmark(port, test, requests, clients, pipeline)
                        samples.setdefault((name, test, pipeline), []).append(result)
    figures = []
    for (name, test, pipeline), runs in samples.items():
        figures.append(
            Figure(
                name,
                test,
                pipeline,
                statistics.median(r[0] for r in runs),
                statistics.median(r[1] for r in runs),
                statistics.median(r[2] for r in runs),
            )
        )
    return figures


def render_table(figures: list[Figure]) -> str:
    by_key = {(f.server, f.test, f.pipeline): f for f in figures}
    lines = [
        "| test | pipeline | redis rps | foresight rps | ratio | redis p99 ms | foresight p99 ms | p99 ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (server, test, pipeline), ref in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if server != "redis":
            continue
        ours = by_key[("foresight", test, pipeline)]
        lines.append(
            f"| {test.upper()} | {pipeline} | {ref.rps:,.0f} | {ours.rps:,.0f} | {ours.rps / ref.rps:.2f}x "
            f"| {ref.p99_ms:.3f} | {ours.p99_ms:.3f} | {ours.p99_ms / ref.p99_ms:.2f}x |"
        )
    return "\n".join(lines)


def bench_resp(
    requests: Annotated[int, typer.Option(min=1000, help="Requests per redis-benchmark run.")] = 200_000,
    clients: Annotated[int, typer.Option(min=1, help="Parallel connections (redis-benchmark -c).")] = 50,
    pipeline: Annotated[
        list[int], typer.Option(min=1, help="Pipeline depths to test (repeatable).")
    ] = [1, 16],  # noqa: B006
    rounds: Annotated[int, typer.Option(min=1, help="Alternating rounds; the median is reported.")] = 3,
    tests: Annotated[str, typer.Option(help=f"Comma-separated tests: redis-benchmark's ({', '.join(BENCHMARK_TESTS)}) "
                                           "or eval, a Lua script that INCRBYs a random key.")] = "get,set",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Compare Foresight's RESP throughput and latency with redis-server on this machine.

    Starts redis-server and `foresight serve --dev` on free loopback ports, runs redis-benchmark against each
    in alternation (GET and SET, 50 clients, with and without -P 16 by default), and prints the medians with
    Foresight/Redis ratios. Needs redis-server and redis-benchmark (Debian: redis-server redis-tools). Bad input
    and a failed run exit 2. For example:

        foresight bench resp --tests get,set,eval --pipeline 1 --pipeline 16 --rounds 3
    """
    names = list(dict.fromkeys(t.strip().lower() for t in tests.split(",") if t.strip()))
    unknown = [name for name in names if name not in (*BENCHMARK_TESTS, *CUSTOM_TESTS)]
    if not names or unknown:
        raise fail(f"--tests: {'unknown test ' + ', '.join(unknown) if unknown else 'no test given'}; choose "
                   f"from {', '.join((*BENCHMARK_TESTS, *CUSTOM_TESTS))}", as_json)
    try:
        figures = measure(requests, clients, pipeline, rounds, names)
    except (BenchError, subprocess.CalledProcessError) as err:
        raise fail(str(err), as_json) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "cpu_count": os.cpu_count(),
                    "requests": requests,
                    "clients": clients,
                    "figures": [asdict(f) for f in figures],
                }
            )
        )
    else:
        typer.echo(render_table(figures))
