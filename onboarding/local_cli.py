"""`foresight local`: up, status, rewrap, down (exit codes: docs/onboarding.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from onboarding import output
from onboarding.context import Endpoints
from onboarding.errors import InvalidInput, NotFound, OnboardingError, ServiceFailure, VaultFailure
from onboarding.local.rewrap import RewrapOptions, RewrapResult, rewrap
from onboarding.local.stack import LocalStack, ProcessStatus, UpOptions, UpResult
from onboarding.snippet import connection_snippet
from onboarding.state import default_state_dir, state_dir_option

app = typer.Typer(cls=output.UsageErrorGroup, no_args_is_help=True, pretty_exceptions_enable=False)

Json = Annotated[bool, output.JsonOption]
StateDir = Annotated[Path | None, output.StateDirOption]


def _stack(state_dir: Path | None) -> LocalStack:
    # absolute: the service runs in the state directory, so a relative path in its settings would miss
    return LocalStack((state_dir or default_state_dir()).expanduser().absolute())


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
    snippet = connection_snippet(endpoints, result.api_key)
    out.print(snippet["env"], markup=False)
    out.print(snippet["redis-cli"], markup=False)
    flag = state_dir_option(d.state_dir)
    out.print(f"More tenants: foresight tenants create NAME --plan pro{flag}    Stop: foresight local down{flag}",
              markup=False)


@app.command()
def status(state_dir: StateDir = None, as_json: Json = False) -> None:
    """The deployment's processes and their health. Exit 0 only when OpenBao is active and the service ready: 3 no
    deployment, 5 OpenBao stopped or sealed, 6 the service stopped or not ready."""
    with output.reported(as_json):
        stack = _stack(state_dir)
        deployment = stack.deployment()
        if deployment is None:
            raise NotFound(f"no deployment in {stack.paths.root}", "start one with `foresight local up`")
        rows = stack.status()
        problem = _unhealthy(stack.paths.root, rows)
        if as_json:
            report = {
                "state_dir": str(stack.paths.root),
                "deployment": deployment.model_dump(mode="json"),
                "processes": {r.name: {"pid": r.pid, "health": r.health} for r in rows},
                "healthy": problem is None,
            }
            if problem is not None:
                report |= {"error": str(problem), "exit_code": problem.exit_code}
            output.emit_json(report)
        else:
            table = Table("process", "pid", "health", title=f"Foresight local ({stack.paths.root})")
            for r in rows:
                table.add_row(r.name, str(r.pid or "-"), r.health)
            output.out.print(table)
            output.out.print(f"Redis (TLS) {deployment.resp_host}:{deployment.resp_port}   HTTPS {deployment.http_url}"
                             f"   OpenBao {deployment.vault_addr}", markup=False)
        if problem is not None:
            output.err.print(f"error: {problem}", markup=False)
            raise typer.Exit(problem.exit_code)


def _unhealthy(root: Path, rows: list[ProcessStatus]) -> OnboardingError | None:
    """Why the deployment does not serve (the exit code of what is down first), or None when it does."""
    health = {r.name: r.health for r in rows}
    if health == {"openbao": "active", "service": "ready"}:
        return None
    what = f"local deployment in {root}"
    why = (f"not running (openbao {health['openbao']}, service {health['service']}); start it with "
           f"`foresight local up{state_dir_option(root)}`")
    return VaultFailure(what, why) if health["openbao"] != "active" else ServiceFailure(what, why)


@app.command()
def down(
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the state directory (data, keys, CA).")] = False,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Stop everything `up` started (service, then OpenBao); --purge deletes all local state. No deployment: nothing
    to do (exit 0); --purge of a directory that holds anything but is not a Foresight state directory: exit 2."""
    with output.reported(as_json):
        stack = _stack(state_dir)
        deployed = stack.paths.is_ours()
        stopped = stack.down(purge)
        purged = purge and deployed
        if as_json:
            output.emit_json({"stopped": stopped, "purged": purged, "state_dir": str(stack.paths.root)})
            return
        if not deployed:
            output.out.print(f"No deployment in {stack.paths.root}; nothing to stop"
                             + (" or delete." if purge else "."), markup=False)
            return
        output.out.print(f"Stopped: {', '.join(stopped)}." if stopped else "Nothing was running.")
        if purged:
            output.out.print(f"Deleted {stack.paths.root}.", markup=False)


@app.command("rewrap")
def rewrap_command(
    rotate: Annotated[bool, typer.Option("--rotate", help="First rotate the transit key to a new version.")] = False,
    retire: Annotated[
        bool, typer.Option("--retire", help="Then retire every older version (min_decryption_version), only if no "
                           "file failed.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list the files that would move (the service is still stopped "
                           "and started again).")
    ] = False,
    retire_despite_shipped_audit: Annotated[
        bool, typer.Option("--retire-despite-shipped-audit", help="With --retire and audit_ship_url set: retire "
                           "anyway, although the audit archives already shipped then no longer decrypt.")
    ] = False,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Re-wrap the service's encrypted files under the KMS key's newest version, with OpenBao kept up.

    The local service's KMS is the OpenBao transit key `foresight`. A key rotation
    leaves the snapshot, model checkpoints and audit archives wrapped under the
    old version; retiring that version makes them unreadable. This runs the
    documented order (docs/security.md): the service is stopped (writing its
    snapshot), the key rotated (--rotate), every file re-wrapped by
    `foresight kms rewrap`, the old versions retired (--retire, skipped if any
    file failed), and the service started again if it was running.

    With audit_ship_url set, --retire is refused (exit 2, nothing stopped or
    changed): the archives already shipped stay wrapped under the old versions,
    and retiring those makes them unreadable. Keep the old versions until the
    shipped archives' retention has ended, or add --retire-despite-shipped-audit.

    Exit 0: every file moved (or was current); 1: some file failed (each is left
    as it was; run it again); 2: bad options; 3: no deployment; 5: OpenBao not
    active; 7: the rewrap could not run or the service did not start again.
    """
    with output.reported(as_json):
        result = rewrap(_stack(state_dir), RewrapOptions(rotate, retire, dry_run, retire_despite_shipped_audit))
        if as_json:
            output.emit_json(result.as_dict())
        else:
            _print_rewrap(result)
        if result.failed:
            raise typer.Exit(1)


def _print_rewrap(result: RewrapResult) -> None:
    out = output.out
    if result.rotated_to is not None:
        out.print(f"Rotated the transit key to version {result.rotated_to}.")
    for file in result.report["files"]:
        reason = f": {file['reason']}" if file["reason"] else ""
        out.print(f"{file['outcome']:<12} {file['path']}{reason}", markup=False)
    counts = result.report["counts"]
    moved = (f"{counts['would-rewrap']} would be rewrapped" if result.report["dry_run"]
             else f"{counts['rewrapped']} rewrapped")
    out.print(f"{moved}, {counts['current']} already current, {counts['failed']} failed.")
    if result.retired_below is not None:
        out.print(f"Retired versions below {result.retired_below} (min_decryption_version {result.retired_below}).")
    elif result.failed:
        out.print("Nothing retired: fix the failed files and run it again.")
    if result.service_restarted:
        out.print("The service runs again.")
