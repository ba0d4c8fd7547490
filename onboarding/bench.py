"""Benchmark `tenants create` against a local OpenBao: p50 per create and the total for many.

    python -m onboarding.bench                      # a fresh throwaway deployment, 100 tenants, 20 via the CLI
    python -m onboarding.bench --state-dir DIR      # an existing `foresight local up` deployment
    python -m onboarding.bench --set prefetcher=none   # the fresh deployment without prefetch engines

Two measurements: the operation itself (`Onboarder.create_tenant`: name check, Vault writes of tenant, policy
and key, the service's refresh), and the `foresight tenants create --json` command end to end (adds Python
start-up and imports, paid once per command). Created tenants are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onboarding.context import resolve
from onboarding.local.stack import LocalStack, UpOptions
from onboarding.plans import PLANS
from onboarding.tenants import Onboarder


def summarize(seconds: list[float]) -> dict[str, float]:
    """p50/p90/max/total, and the p50 of the first and last ten (does it grow with the tenant count?)."""
    ordered = sorted(seconds)
    return {
        "count": len(ordered),
        "p50_s": statistics.median(ordered),
        "p90_s": ordered[int(0.9 * (len(ordered) - 1))],
        "max_s": ordered[-1],
        "total_s": sum(ordered),
        "first10_p50_s": statistics.median(seconds[:10]),
        "last10_p50_s": statistics.median(seconds[-10:]),
    }


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench(state_dir: Path, tenants: int, cli: int, keep: bool) -> dict[str, Any]:
    run = secrets.token_hex(3)
    onboard = Onboarder.connect(resolve(state_dir))
    refreshes: list[float] = []
    if onboard.admin is not None:  # time the service's part of each create apart from Vault's
        admin, refresh = onboard.admin, onboard.admin.refresh_tenant

        def timed_refresh(tenant: str) -> bool:
            start = time.perf_counter()
            try:
                return refresh(tenant)
            finally:
                refreshes.append(time.perf_counter() - start)

        admin.refresh_tenant = timed_refresh  # type: ignore[method-assign]
    names: list[str] = []
    try:
        api: list[float] = []
        wall = time.perf_counter()
        for i in range(tenants):
            name = f"bench-{run}-{i:03d}"
            api.append(timed(lambda name=name: onboard.create_tenant(name, PLANS["starter"])))  # type: ignore[misc]
            names.append(name)
        api_wall = time.perf_counter() - wall
        service_part = summarize(refreshes) if refreshes else None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "FORESIGHT_ADMIN"))}
        env["FORESIGHT_STATE_DIR"] = str(state_dir)
        foresight = str(Path(sys.executable).parent / "foresight")
        commands: list[float] = []
        for i in range(cli):
            name = f"bench-{run}-cli-{i:03d}"
            argv = [foresight, "tenants", "create", name, "--json"]
            commands.append(timed(lambda argv=argv: subprocess.run(argv, env=env, check=True,  # type: ignore[misc]
                                                                   capture_output=True)))
            names.append(name)
        return {
            "create_tenant": {**summarize(api), "wall_s": api_wall},
            "service_refresh": service_part,
            "cli": summarize(commands) if commands else None,
            "machine": {"cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]},
        }
    finally:
        if not keep:
            for name in names:
                onboard.delete_tenant(name)
        onboard.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=100, help="creates through the API (default 100)")
    parser.add_argument("--cli", type=int, default=20, help="creates through the CLI command (default 20)")
    parser.add_argument("--state-dir", type=Path, help="an existing deployment (default: a fresh one)")
    parser.add_argument("--keep", action="store_true", help="keep the created tenants")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a service setting of the fresh deployment, e.g. prefetcher=none (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.state_dir is not None:
        result = bench(args.state_dir, args.tenants, args.cli, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="foresight-bench-") as tmp:
            stack = LocalStack(Path(tmp) / "state")
            try:
                settings = dict(pair.split("=", 1) for pair in args.set)
                stack.up(UpOptions(resp_port=0, http_port=0, vault_port=0, demo=False, service_settings=settings))
                result = bench(stack.paths.root, args.tenants, args.cli, args.keep)
            finally:
                stack.down()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    api, cmd = result["create_tenant"], result["cli"]
    print(f"tenants create (operation): n={api['count']}  p50 {api['p50_s'] * 1000:.0f} ms  "
          f"p90 {api['p90_s'] * 1000:.0f} ms  max {api['max_s'] * 1000:.0f} ms  total {api['wall_s']:.1f} s")
    if result["service_refresh"]:
        refresh = result["service_refresh"]
        print(f"  of which the service's refresh: p50 {refresh['p50_s'] * 1000:.0f} ms  "
              f"p90 {refresh['p90_s'] * 1000:.0f} ms  total {refresh['total_s']:.1f} s  (p50 of the first ten "
              f"{refresh['first10_p50_s'] * 1000:.0f} ms, of the last ten {refresh['last10_p50_s'] * 1000:.0f} ms)")
    if cmd:
        print(f"foresight tenants create (command): n={cmd['count']}  p50 {cmd['p50_s'] * 1000:.0f} ms  "
              f"p90 {cmd['p90_s'] * 1000:.0f} ms  max {cmd['max_s'] * 1000:.0f} ms")
    machine = result["machine"]
    print(f"machine: {machine['cpus']} CPUs, load average {machine['loadavg_1m']:.1f}")


if __name__ == "__main__":
    main()
