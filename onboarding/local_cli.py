"""`foresight local`: up, status, down (exit codes: docs/onboarding.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from onboarding import output
from onboarding.context import Endpoints
from onboarding.errors import InvalidInput
from onboarding.local.stack import LocalStack, UpOptions, UpResult
from onboarding.snippet import connection_snippet
from onboarding.state import STATE_DIR_ENV, default_state_dir

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

Json = Annotated[bool, output.JsonOption]
StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", envvar=STATE_DIR_ENV, help="Where the deployment lives (default "
                 "~/.local/state/foresight)."),
]


def _stack(state_dir: Path | None) -> LocalStack:
    return LocalStack(state_dir or default_state_dir())


@app.command()
def up(
    resp_port: Annotated[int | None, typer.Option(help="Redis protocol port (default 6380; 0: any free).")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTPS port (default 8443; 0: any free).")] = None,
    vault_port: Annotated[int | None, typer.Option(help="OpenBao port (default 8200; 0: any free).")] = None,
    origin_latency_ms: Annotated[
        float | None, typer.Option(help="Latency added to each demo-origin read (default 5 ms, an object store).")
    ] = None,
    demo: Annotated[bool, typer.Option(help="Run the demo workload.")] = True,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="NAME=VALUE",
                     help="A service setting (FORESIGHT_<NAME>), e.g. prefetcher=markov; kept for later ups; "
                          "NAME= removes it. Repeatable."),
    ] = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Start OpenBao, the CA, the service (TLS) and a demo tenant on this machine; safe to run again."""
    with output.reported(as_json):
        options = UpOptions(resp_port, http_port, vault_port, origin_latency_ms, demo, _settings(settings or []))
        stack = _stack(state_dir)
        status = output.progress("Starting...", as_json)
        with status as spinner:
            def step(name: str) -> None:
                if spinner is not None:
                    spinner.update(f"Starting: {name}...")

            result = stack.up(options, step)
        if as_json:
            output.emit_json(_up_json(result))
        else:
            _print_up(result)


def _settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"--set {pair}", "expected NAME=VALUE, e.g. --set prefetcher=markov")
        settings[name.strip().lower().removeprefix("foresight_")] = value
    return settings


def _up_json(result: UpResult) -> dict[str, Any]:
    d = result.deployment
    return {
        "resp_host": d.resp_host,
        "resp_port": d.resp_port,
        "http_url": d.http_url,
        "ca_cert": str(d.ca_cert),
        "tenant": result.tenant,
        "api_key": result.api_key,
        "key_id": result.key_id,
        "vault_addr": d.vault_addr,
        "state_dir": str(d.state_dir),
        "audit_log": str(d.audit_log),
        "started": result.started,
        "demo": [phase.as_dict() for phase in result.demo],
        "warnings": result.warnings,
    }


def _print_up(result: UpResult) -> None:
    d, out = result.deployment, output.out
    output.warn(result.warnings)
    out.print("[bold green]Foresight is up[/]" + (f" (started: {', '.join(result.started)})" if result.started
                                                  else " (already running)"))
    table = Table(show_header=False, box=None)
    for name, value in (
        ("Redis (TLS)", f"{d.resp_host}:{d.resp_port}"),
        ("HTTPS", d.http_url),
        ("CA bundle", str(d.ca_cert)),
        ("OpenBao", d.vault_addr),
        ("tenant", result.tenant),
        ("key id", result.key_id),
        ("API key", result.api_key),
        ("state", str(d.state_dir)),
    ):
        table.add_row(name, value)
    out.print(table)
    if result.demo:
        demo = Table("demo", "reads", "hit ratio", "p50", "p99", "origin reads", "prefetch",
                     title=f"Demo workload (the origin adds {d.origin_latency_ms:g} ms per read)")
        for phase in result.demo:
            demo.add_row(phase.name, str(phase.requests), f"{phase.hit_ratio:.1%}", f"{phase.p50_ms:.2f} ms",
                         f"{phase.p99_ms:.2f} ms", str(phase.origin_fetches),
                         f"{phase.prefetch_issued} ({phase.prefetch_used} used)")
        out.print(demo)
    endpoints = Endpoints(d.resp_host, d.resp_port, d.http_url, d.ca_cert)
    out.print("Connect as the demo tenant:")
    out.print(connection_snippet(endpoints, result.api_key)["redis-cli"], markup=False)
    out.print("More tenants: foresight tenants create NAME --plan pro    Stop: foresight local down")


@app.command()
def status(state_dir: StateDir = None, as_json: Json = False) -> None:
    """The deployment's processes and their health."""
    with output.reported(as_json):
        stack = _stack(state_dir)
        deployment = stack.deployment()
        rows = stack.status()
        if as_json:
            output.emit_json({
                "state_dir": str(stack.paths.root),
                "deployment": deployment.model_dump(mode="json") if deployment else None,
                "processes": {r.name: {"pid": r.pid, "health": r.health} for r in rows},
            })
            return
        if deployment is None:
            output.out.print(f"No deployment in {stack.paths.root}; start one with `foresight local up`.")
        table = Table("process", "pid", "health", title=f"Foresight local ({stack.paths.root})")
        for r in rows:
            table.add_row(r.name, str(r.pid or "-"), r.health)
        output.out.print(table)
        if deployment is not None:
            output.out.print(f"Redis (TLS) {deployment.resp_host}:{deployment.resp_port}   HTTPS {deployment.http_url}"
                             f"   OpenBao {deployment.vault_addr}", markup=False)


@app.command()
def down(
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the state directory (data, keys, CA).")] = False,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Stop everything `up` started (service, then OpenBao); --purge deletes all local state."""
    with output.reported(as_json):
        stack = _stack(state_dir)
        stopped = stack.down(purge)
        if as_json:
            output.emit_json({"stopped": stopped, "purged": purge, "state_dir": str(stack.paths.root)})
            return
        output.out.print(f"Stopped: {', '.join(stopped)}." if stopped else "Nothing was running.")
        if purge:
            output.out.print(f"Deleted {stack.paths.root}.", markup=False)
