"""`foresight tenants`: create, list, show, suspend, resume and delete tenants (exit codes: docs/onboarding.md)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from onboarding import output
from onboarding.context import resolve, with_local_hint
from onboarding.errors import OnboardingError, ServiceFailure, VaultFailure
from onboarding.plans import plan_of, plans_help, quota_for
from onboarding.snippet import KEY_VARIABLE, connection_snippet
from onboarding.tenants import SCOPES_HELP, CreatedTenant, Onboarder, TenantView, parse_scopes, validate_name
from service.prefetch.markov import MIN_MAX_KEYS

app = typer.Typer(cls=output.UsageErrorGroup, no_args_is_help=True, pretty_exceptions_enable=False)

Json = Annotated[bool, output.JsonOption]
AdminUrl = Annotated[
    str | None,
    typer.Option("--admin-url", envvar="FORESIGHT_ADMIN_URL", help="Service admin API (default: the local one)."),
]
StateDir = Annotated[Path | None, output.StateDirOption]
TenantName = Annotated[str, typer.Argument(help="The tenant's name.", show_default=False)]


@contextmanager
def onboarder(admin_url: str | None, state_dir: Path | None) -> Iterator[Onboarder]:
    """Connected to the deployment the environment or the state directory names. Call it after checking the
    command's own input, so that a typo is reported as such even with no deployment."""
    target = resolve(state_dir=state_dir, admin_url=admin_url)
    onboard = Onboarder.connect(target)
    try:
        yield onboard
    except (VaultFailure, ServiceFailure) as failure:
        raise with_local_hint(target, failure) from None
    finally:
        onboard.close()


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Tenant name: a DNS label (a-z, 0-9, '-', at most 63).")],
    plan: Annotated[str, typer.Option(help=f"Quota plan: {plans_help()}.")] = "starter",
    memory: Annotated[int | None, typer.Option(help="Memory budget in MiB (overrides the plan).")] = None,
    rps: Annotated[float | None, typer.Option(help="Requests per second, 0 unlimited (overrides the plan).")] = None,
    origin: Annotated[str | None, typer.Option(
        help="The tenant's own origin, an fsspec URL such as s3://acme-products/catalog. The nodes read it with "
        "their cloud identity: list its bucket in the stack's foresight:originBuckets, or grant the stack's "
        "nodeIdentity read on it.")] = None,
    prefetcher: Annotated[
        str | None,
        typer.Option(help="The tenant's prefetcher: none, stride, markov or learned (default: the service's)."),
    ] = None,
    prefetch_max_keys: Annotated[
        int | None,
        typer.Option(help=f"Keys its Markov or learned prefetcher remembers (at least {MIN_MAX_KEYS}), which "
                     "bounds the prefetcher's memory: about 0.2-0.75 KB a key for the learned one (default: the "
                     "service's FORESIGHT_PREFETCH_MAX_KEYS)."),
    ] = None,
    scopes: Annotated[
        str, typer.Option(help=f"Scopes of the first key, comma-separated: {SCOPES_HELP}.")
    ] = "read,write",
    scripting: Annotated[
        bool, typer.Option(help="Whether it may run Lua scripts (EVAL). A script holds every tenant's requests "
                           "while it runs, up to the service's time limit: --no-scripting for tenants not "
                           "trusted with that.")
    ] = True,
    admin_url: AdminUrl = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Create a tenant with its quotas, Vault policy and first API key (shown once), then print how to connect."""
    with output.reported(as_json):
        validate_name(name)
        quota = quota_for(plan, memory_mib=memory, rps=rps, origin=origin, prefetcher=prefetcher,
                          prefetch_max_keys=prefetch_max_keys, scripting=scripting)
        key_scopes = parse_scopes(scopes)
        with onboarder(admin_url, state_dir) as onboard, output.progress(f"Creating tenant {name}...", as_json):
            created = onboard.create_tenant(name, quota, key_scopes)
        _print_created(created, as_json, can_write="write" in key_scopes)


def _print_created(created: CreatedTenant, as_json: bool, can_write: bool) -> None:
    spec = created.spec
    ends = created.endpoints
    snippet = connection_snippet(ends, created.key.secret, can_write) if ends else {}
    if as_json:
        output.emit_json({
            "tenant": spec.name,
            "plan": plan_of(spec.quota),
            "quota": spec.quota.model_dump(mode="json"),
            "key_id": created.key.key_id,
            "api_key": created.key.secret,
            "endpoints": _endpoints_json(created),
            "snippet": snippet,
            "warnings": created.warnings,
        })
        return
    output.warn(created.warnings)
    out = output.out
    out.print(f"Tenant [bold]{spec.name}[/] created (plan {plan_of(spec.quota)}: "
              f"{_mib(spec.quota.memory_bytes)}, {_rps(spec.quota.requests_per_second)}).")
    if not snippet:
        out.print(f"API key [bold]{created.key.key_id}[/] (shown once; store it now):")
        out.print(created.key.secret, markup=False)
        return
    out.print(f"API key [bold]{created.key.key_id}[/] (shown once; store it now; the commands below read it from "
              f"${KEY_VARIABLE}):")
    out.print(snippet["env"], markup=False)
    for client, text in snippet.items():
        if client != "env":
            out.print(f"\n[dim]# {client}[/]")
            out.print(text, markup=False)


def _endpoints_json(created: CreatedTenant) -> dict[str, Any] | None:
    ends = created.endpoints
    if ends is None:
        return None
    return {"resp_host": ends.resp_host, "resp_port": ends.resp_port, "http_url": ends.http_url,
            "ca_cert": str(ends.ca_cert) if ends.ca_cert else None}


@app.command("list")
def list_(admin_url: AdminUrl = None, state_dir: StateDir = None, as_json: Json = False) -> None:
    """Every tenant with its plan, quotas, state and (when the service answers) usage."""
    with output.reported(as_json), onboarder(admin_url, state_dir) as onboard:
        listing = onboard.list_tenants()
        if as_json:
            output.emit_json({"tenants": [_tenant_json(v) for v in listing.tenants], "warnings": listing.warnings})
            return
        output.warn(listing.warnings)
        table = Table(title="Tenants")
        table.add_column("tenant", no_wrap=True)  # copied into other commands: never wrapped or cut
        for header in ("plan", "memory", "rate", "state", "used memory"):
            table.add_column(header)
        for view in listing.tenants:
            used = (view.usage or {}).get("used_bytes")
            table.add_row(view.spec.name, plan_of(view.spec.quota), _mib(view.spec.quota.memory_bytes),
                          _rps(view.spec.quota.requests_per_second), _state(view),
                          _mib(used) if isinstance(used, int) else "-")
        output.print_table(table)


@app.command()
def show(name: TenantName, admin_url: AdminUrl = None, state_dir: StateDir = None, as_json: Json = False) -> None:
    """One tenant: quotas, state, keys (ids and state, never secrets) and usage."""
    with output.reported(as_json):
        validate_name(name)
        with onboarder(admin_url, state_dir) as onboard:
            view = onboard.show_tenant(name)
        from onboarding.keys_cli import key_json, keys_table  # keys_cli imports this module

        if as_json:
            output.emit_json({**_tenant_json(view), "keys": [key_json(k) for k in view.keys],
                              "warnings": view.warnings})
            return
        output.warn(view.warnings)
        quota = view.spec.quota
        output.out.print(f"[bold]{view.spec.name}[/]  plan {plan_of(quota)}  {_mib(quota.memory_bytes)}  "
                         f"{_rps(quota.requests_per_second)}  {_state(view)}")
        if quota.origin:
            output.out.print(f"origin {quota.origin}", markup=False)
        if quota.prefetcher or quota.prefetch_max_keys:
            bound = f", remembering up to {quota.prefetch_max_keys:,} keys" if quota.prefetch_max_keys else ""
            output.out.print(f"prefetcher {quota.prefetcher or 'the service default'}{bound}", markup=False)
        if not quota.scripting:
            output.out.print("Lua scripts turned off (EVAL answers an error)", markup=False)
        output.print_table(keys_table(view.keys))
        if view.usage:
            u = view.usage
            output.out.print(f"in memory: {u.get('keys', 0)} keys, {_mib(u.get('used_bytes', 0))}; "
                             f"hits {u.get('hits', 0)}, misses {u.get('misses', 0)}; "
                             f"connections {u.get('connections', 0)}", markup=False)


@app.command()
def suspend(name: TenantName, admin_url: AdminUrl = None, state_dir: StateDir = None, as_json: Json = False) -> None:
    """Refuse the tenant's keys (its data stays) until `resume`."""
    _set_suspended(name, True, admin_url, state_dir, as_json)


@app.command()
def resume(name: TenantName, admin_url: AdminUrl = None, state_dir: StateDir = None, as_json: Json = False) -> None:
    """Accept a suspended tenant's keys again."""
    _set_suspended(name, False, admin_url, state_dir, as_json)


def _set_suspended(name: str, suspended: bool, admin_url: str | None, state_dir: Path | None, as_json: bool) -> None:
    with output.reported(as_json):
        validate_name(name)
        with onboarder(admin_url, state_dir) as onboard:
            outcome = onboard.set_suspended(name, suspended)
        if as_json:
            output.emit_json({"tenant": name, "suspended": suspended, "warnings": outcome.warnings})
            return
        output.warn(outcome.warnings)
        output.out.print(f"Tenant {name} {'suspended' if suspended else 'resumed'}.")


@app.command()
def delete(
    name: TenantName,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    admin_url: AdminUrl = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Delete a tenant: its keys, Vault policy, records and cached data. Asks first unless --yes (without a
    terminal, a `y` line on stdin confirms; no answer is no)."""
    with output.reported(as_json):
        validate_name(name)
        if not yes and not _confirmed(f"Delete tenant {name!r} with all its keys and data?"):
            raise OnboardingError(f"delete tenant {name!r}", "not confirmed (pass --yes)")
        with onboarder(admin_url, state_dir) as onboard, output.progress(f"Deleting tenant {name}...", as_json):
            outcome = onboard.delete_tenant(name)
        if as_json:
            output.emit_json({"tenant": name, "deleted": True, "warnings": outcome.warnings})
            return
        output.warn(outcome.warnings)
        output.out.print(f"Tenant {name} deleted.")


def _confirmed(question: str) -> bool:
    """Yes if the answer read from stdin is y or yes. The question goes to stderr, and only to a person at a
    terminal; stdout stays empty, and no answer (end of input) is no."""
    if sys.stdin.isatty():
        output.err.print(f"{question} [y/N]: ", end="", markup=False)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _tenant_json(view: TenantView) -> dict[str, Any]:
    """A tenant for scripts, without its keys: `list` does not read them (one Vault read per key), and an empty
    list there would read as "no keys"; `show` adds them."""
    return {
        "tenant": view.spec.name,
        "plan": plan_of(view.spec.quota),
        "quota": view.spec.quota.model_dump(mode="json"),
        "suspended": view.spec.suspended,
        "usage": view.usage,
    }


def _state(view: TenantView) -> str:
    return "suspended" if view.spec.suspended else "active"


def _mib(n: int) -> str:
    """Bytes for people: 0 B, 12 KiB, 1.1 MiB, 1024 MiB."""
    if n < 1024 * 1024:
        return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"
    mib = n / (1024 * 1024)
    return f"{mib:.0f} MiB" if mib >= 10 or mib == int(mib) else f"{mib:.1f} MiB"


def _rps(rps: float) -> str:
    return "unlimited" if rps == 0 else f"{rps:g} req/s"
