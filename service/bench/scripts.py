"""`python -m service.bench.scripts`: what a Lua script costs the server, in process, beside the plain command.

A script holds the event loop for its whole run, so its cost is every tenant's latency. This dispatches
EVALs through a real RespConnection (no socket: `service.bench.hotpath`'s NullTransport) and prints the
microseconds per command beside INCRBY's, measured in the same run: the script's own overhead (compile cache,
the runtime call, KEYS/ARGV, the reply) and each redis.call's (the bridge from Lua into the command table and
back). `foresight bench resp --tests eval,incr` measures the same served, against redis-server.
"""

from __future__ import annotations

import argparse
import json
import time

from service.bench.hotpath import NullTransport
from service.config import Settings
from service.resp.connection import RespConnection
from service.state import DEV_TENANT, ServiceState
from service.tenancy import TenantQuota, TenantSpec

CASES = {
    "INCRBY (baseline)": [b"INCRBY", b"counter", b"1"],
    "EVAL return 1": [b"EVAL", b"return 1", b"0"],
    "EVAL one redis.call (INCRBY)": [b"EVAL", b"return redis.call('INCRBY', KEYS[1], ARGV[1])", b"1", b"counter",
                                     b"1"],
    "EVAL two redis.calls (INCRBY, GET)": [b"EVAL", b"redis.call('INCRBY', KEYS[1], ARGV[1]) "
                                           b"return redis.call('GET', KEYS[1])", b"1", b"counter", b"1"],
}


def measure(commands: int = 20_000, rounds: int = 7) -> dict[str, float]:
    """Microseconds per command, the fastest of `rounds` rounds (the least disturbed by the rest of the box)."""
    state = ServiceState(Settings(dev=True, script_budget_ms_per_s=0), None)  # the cost, not the pacing
    state.tenants.sync([TenantSpec(name=DEV_TENANT, quota=TenantQuota(memory_bytes=1 << 30))])
    connection = RespConnection(state)
    connection.connection_made(NullTransport())  # type: ignore[arg-type]
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, args in CASES.items():  # alternating, so each round's cases share the machine's state
            execute = connection.execute
            started = time.perf_counter()
            for _ in range(commands):
                execute(args)
            elapsed = (time.perf_counter() - started) / commands * 1e6
            best[name] = min(best.get(name, elapsed), elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service.bench.scripts",
        description="What a Lua script costs the server, in process, beside INCRBY: microseconds per command.",
    )
    parser.add_argument("--commands", type=int, default=20_000, help="commands per case and round (default 20000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the fastest is reported (default 7)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    for option in ("commands", "rounds"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be 1 or more")
    figures = measure(args.commands, args.rounds)
    if args.json:
        print(json.dumps(figures))
        return
    baseline = figures["INCRBY (baseline)"]
    print("| command | us per command | x INCRBY |\n|---|---|---|")
    for name, micros in figures.items():
        print(f"| {name} | {micros:.2f} | {micros / baseline:.1f}x |")


if __name__ == "__main__":
    main()
