"""What every cloud's `foresight marketplace <cloud>` commands share: connecting to the deployment and the
listing, the register/meter/reconcile commands themselves, serving the pages, and printing for people or
scripts (one JSON object with --json; one error line and the documented exit code otherwise).

The commands act on the deployment `foresight tenants` acts on (VAULT_ADDR/VAULT_TOKEN and
FORESIGHT_ADMIN_URL/FORESIGHT_ADMIN_TOKEN, or the local one) and read the listing from FORESIGHT_<CLOUD>_MP_*;
each cloud's own credentials come from its SDK's standard variables. Exit codes: docs/onboarding.md.
"""

import time  # no `from __future__ import annotations`: typer must see saas_commands' argument help at def time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from onboarding import output
from onboarding.context import resolve
from onboarding.errors import InvalidInput, OnboardingError
from onboarding.tenants import Onboarder

Json = Annotated[bool, output.JsonOption]
AdminUrl = Annotated[
    str | None,
    typer.Option("--admin-url", envvar="FORESIGHT_ADMIN_URL", help="Service admin API (default: the local one)."),
]
TlsCert = Annotated[Path, typer.Option("--tls-cert", help="PEM certificate chain for the pages.")]
TlsKey = Annotated[Path, typer.Option("--tls-key", help="PEM private key of --tls-cert.")]
Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]
Once = Annotated[bool, typer.Option("--once", help="Handle one batch and exit (for cron or a test).")]
Connect = Callable[[str | None], AbstractContextManager[Any]]


@contextmanager
def connected(settings_model: Any, prefix: str, marketplace: Callable[[Any, Onboarder], Any],
              admin_url: str | None) -> Iterator[Any]:
    """The cloud's marketplace object on the deployment; settings errors name the variable to fix."""
    try:
        settings = settings_model()
    except ValidationError as err:
        first = err.errors()[0]
        raise InvalidInput(prefix + "_".join(str(part) for part in first["loc"]).upper(), first["msg"]) from None
    onboarder = Onboarder.connect(resolve(admin_url=admin_url))
    try:
        connection = marketplace(settings, onboarder)
        try:
            yield connection
        finally:
            connection.close()
    finally:
        onboarder.close()


def saas_commands(app: typer.Typer, connect: Connect, *, argument_help: str, meter: Callable[[Any], Any],
                  reconciler: Callable[[Any], Callable[[str], Any]]) -> None:
    """register, meter and reconcile on `app`; the cloud supplies how to connect, meter and reconcile."""

    @app.command()
    def register(
        token: Annotated[str, typer.Argument(help=argument_help + " Put `--` before it: a token may begin with '-'.")],
        admin_url: AdminUrl = None, as_json: Json = False,
    ) -> None:
        """Turn a purchase into a tenant with its plan and first API key (what the registration page does)."""
        with output.reported(as_json), connect(admin_url) as marketplace:
            with output.progress("registering the purchase", as_json):
                body = marketplace.register(token).to_json()
            _print_registration(body, as_json)

    @app.command("meter")
    def meter_(admin_url: AdminUrl = None, as_json: Json = False) -> None:
        """Report the last hour's usage of every purchase; run it hourly, a few minutes past. Safe to re-run."""
        with output.reported(as_json), connect(admin_url) as marketplace:
            _print_metering(meter(marketplace).run(), as_json)

    @app.command()
    def reconcile(admin_url: AdminUrl = None, as_json: Json = False) -> None:
        """Make every purchase's tenant match what the marketplace says now (after an outage, or daily)."""
        with output.reported(as_json), connect(admin_url) as marketplace:
            _reconcile_all(reconciler(marketplace), marketplace.records.tenants(), as_json)


def consume(poll: Callable[[], list[Any]], once: bool, as_json: bool) -> None:
    """Handle batches until interrupted (or one with --once); pulls that find nothing pause a second."""
    handled: list[dict[str, Any]] = []
    while True:
        batch = poll()
        for item in batch:
            handled.append(asdict(item))
            if not as_json:
                actions = "; ".join(f"{o.tenant} {o.action}" for o in item.outcomes) or "no known tenant"
                output.out.print(f"{item.event}: {item.error or actions}", markup=False)
        if once:
            break
        if not batch:
            time.sleep(1)
    if as_json:
        output.emit_json({"handled": handled})


def serve(app_: Any, tls_cert: Path, tls_key: Path, host: str, port: int) -> None:
    """HTTPS only: the pages carry purchase tokens and the buyer's first key. No access log: Azure puts the
    purchase token in the landing page's query string, which an access log would keep."""
    import uvicorn

    for option, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if not path.is_file():
            raise InvalidInput(option, f"{path} is not a file")
    uvicorn.run(app_, host=host, port=port, ssl_certfile=str(tls_cert), ssl_keyfile=str(tls_key), log_level="info",
                access_log=False)


def _print_registration(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.emit_json(body)
        return
    output.warn(body["warnings"])
    output.out.print(f"Tenant [bold]{body['tenant']}[/] (plan {body['plan']}).")
    if body["api_key"]:
        output.out.print("API key (shown once; store it now):")
        output.out.print(body["api_key"], markup=False)


def _print_metering(report: Any, as_json: bool) -> None:
    from marketplace.errors import MarketplaceFailure

    if as_json:
        output.emit_json({"metered": [asdict(m) for m in report.metered], "skipped": report.skipped,
                          "errors": report.errors})
    else:
        for m in report.metered:
            output.out.print(f"{m.tenant} {m.timestamp:%Y-%m-%dT%H:%M:%SZ} {m.quantity} {m.status}", markup=False)
        for tenant, why in report.skipped.items():
            output.out.print(f"{tenant} skipped: {why}", markup=False)
    _fail_on(report.errors, MarketplaceFailure("meter usage", "; ".join(report.errors)), as_json)


def _reconcile_all(reconcile: Callable[[str], Any], tenants: list[str], as_json: bool) -> None:
    """Every tenant, even when one fails (its error is reported and the exit code says so)."""
    from marketplace.errors import MarketplaceFailure

    outcomes, errors = [], {}
    for tenant in tenants:
        try:
            outcomes.append(asdict(reconcile(tenant)))
        except OnboardingError as err:
            errors[tenant] = str(err)
    if as_json:
        output.emit_json({"reconciled": outcomes, "errors": errors})
    else:
        for outcome in outcomes:
            output.out.print(f"{outcome['tenant']} {outcome['action']}", markup=False)
    failure = MarketplaceFailure("reconcile", "; ".join(f"{t}: {why}" for t, why in errors.items()))
    _fail_on(bool(errors), failure, as_json)


def _fail_on(failed: object, failure: Exception, as_json: bool) -> None:
    """Exit with the failure's code; with --json the object already printed holds the errors (one object)."""
    if not failed:
        return
    if as_json:
        raise typer.Exit(getattr(failure, "exit_code", 1))
    raise failure
