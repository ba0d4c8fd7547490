"""The `foresight` command. Each group lives with the code it drives and is imported only when used,
so `foresight serve` never pays for Pulumi or torch imports it does not need."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from typing import Annotated

import typer

from onboarding.output import UsageErrorGroup

# group name -> (module, attribute holding its typer.Typer, help line)
GROUPS: dict[str, tuple[str, str, str]] = {
    "bench": ("service.bench.cli", "app", "Benchmarks: RESP against redis-server, trace replay and its report, the "
              "live server, the shared tier, what the access log and the prefetchers cost."),
    "audit": ("service.security.audit_cli", "app", "Verify and show the hash-chained audit log."),
    "kms": ("service.security.kms_cli", "app", "Re-wrap data keys on disk after a KMS key rotation."),
    "snapshot": ("service.snapshot_cli", "app", "See what the warm-restart snapshot holds, and merge entries set "
                 "aside back into it."),
    "local": ("onboarding.local_cli", "app", "Run the whole product on this machine."),
    "tenants": ("onboarding.tenants_cli", "app", "Create, list, show, suspend, resume and delete tenants."),
    "keys": ("onboarding.keys_cli", "app", "Issue, list, rotate and revoke API keys."),
    "metrics-token": ("onboarding.metrics_token_cli", "app", "Rotate the token Prometheus scrapes /metrics with."),
    "marketplace": ("marketplace.cli", "app", "Marketplace artifacts and fulfilment."),
    "kubernetes": ("stacks.kubernetes.cli", "app", "The scale-out workload's Kubernetes manifests."),
}

app = typer.Typer(
    name="foresight",
    cls=UsageErrorGroup,  # every group's bad option, missing argument or unknown option: one `error:` line
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        try:
            version = importlib.metadata.version("foresight")
        except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
            version = "unknown (not installed)"
        typer.echo(f"foresight {version}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Foresight: a multi-tenant, Redis-compatible cache with a learned prefetcher, and its deploy kit."""


def _mount_groups(argv: list[str]) -> None:
    """Import only the group being invoked; the others appear in --help as their help line."""
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, attr, help_text) in GROUPS.items():
        if wanted != name:
            app.add_typer(typer.Typer(help=help_text), name=name)
            continue
        try:
            group = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as err:
            if not err.name or not module.startswith(err.name):
                raise
            group = _unavailable(name, help_text)
        app.add_typer(group, name=name, help=help_text)


def _unavailable(name: str, help_text: str) -> typer.Typer:
    """A group whose code is not in this build says so plainly instead of 'No such command'."""
    group = typer.Typer(help=help_text)

    @group.callback(invoke_without_command=True)
    def missing() -> None:
        typer.echo(f"foresight {name}: not available in this build of Foresight", err=True)
        raise typer.Exit(2)

    return group


def main() -> None:
    from service.serve_cli import register

    register(app)
    _mount_groups(sys.argv[1:])
    app(prog_name="foresight")  # the name errors and usage lines give, however it was started (`python -c`)
