"""`foresight marketplace`: build the listings' launch artifacts, and run AWS Marketplace SaaS fulfilment.

The `aws` commands act on the deployment `foresight tenants` acts on (VAULT_ADDR/VAULT_TOKEN and
FORESIGHT_ADMIN_URL/FORESIGHT_ADMIN_TOKEN, or the local one) and read the listing from FORESIGHT_AWS_MP_*;
AWS credentials come from the standard chain (an instance role in production). Exit codes: docs/onboarding.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from onboarding import output
from onboarding.context import resolve
from onboarding.errors import InvalidInput
from onboarding.tenants import Onboarder

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
aws = typer.Typer(no_args_is_help=True, help="AWS Marketplace SaaS: registration, lifecycle events, metering.")
azure = typer.Typer(no_args_is_help=True, help="Azure Marketplace SaaS: landing page, webhook, metering.")
gcp = typer.Typer(no_args_is_help=True, help="Google Cloud Marketplace SaaS: sign-up, Pub/Sub events, metering.")
app.add_typer(aws, name="aws")
app.add_typer(azure, name="azure")
app.add_typer(gcp, name="gcp")

Json = Annotated[bool, output.JsonOption]
AdminUrl = Annotated[
    str | None,
    typer.Option("--admin-url", envvar="FORESIGHT_ADMIN_URL", help="Service admin API (default: the local one)."),
]
TlsCert = Annotated[Path, typer.Option("--tls-cert", help="PEM certificate chain for the pages.")]
TlsKey = Annotated[Path, typer.Option("--tls-key", help="PEM private key of --tls-cert.")]
Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]


@app.command()
def build(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the artifacts into.")] = Path(
        "dist/marketplace"
    ),
    as_json: Json = False,
) -> None:
    """Write every listing's launch artifacts, generated from the same spec as the stacks.

    aws/foresight.template.json (AMI with CloudFormation), aws/eventbridge-pattern.json (the rule that feeds
    lifecycle events to the fulfilment queue), and azure/mainTemplate.json, azure/createUiDefinition.json and
    azure/app.zip (the managed application package Partner Center takes).
    """
    from marketplace.aws.events import EVENT_PATTERN
    from marketplace.aws.template import render
    from marketplace.azure.template import package

    with output.reported(as_json):
        paths = [
            _write_json(out / "aws/foresight.template.json", render()),
            _write_json(out / "aws/eventbridge-pattern.json", EVENT_PATTERN),
        ]
        archive = package(out / "azure")
        paths += [str(archive.parent / name) for name in ("mainTemplate.json", "createUiDefinition.json")]
        paths.append(str(archive))
        if as_json:
            output.emit_json({"written": paths})
        else:
            for path_text in paths:
                output.out.print(f"wrote {path_text}", markup=False)


def _write_json(path: Path, document: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    temporary.replace(path)  # never a half-written template where the old one was
    return str(path)


@aws.command()
def register(
    token: Annotated[str, typer.Argument(help="The x-amzn-marketplace-token the buyer's browser posted.")],
    admin_url: AdminUrl = None,
    as_json: Json = False,
) -> None:
    """Turn a purchase into a tenant with its plan and first API key (what the registration page does)."""
    with output.reported(as_json), _aws(admin_url) as marketplace:
        with output.progress("registering the purchase", as_json):
            body = marketplace.register(token).to_json()
        _print_registration(body, as_json)


@aws.command()
def serve(
    tls_cert: TlsCert,
    tls_key: TlsKey,
    host: Host = "127.0.0.1",
    port: Port = 8444,
    admin_url: AdminUrl = None,
) -> None:
    """Serve the registration page (POST /aws/register) over HTTPS: the listing's fulfilment URL."""
    from marketplace.aws.landing import create_app

    with output.reported(False), _aws(admin_url) as marketplace:
        _serve(create_app(marketplace), tls_cert, tls_key, host, port)


@aws.command()
def events(
    once: Annotated[bool, typer.Option("--once", help="Poll one batch and exit (for cron or a test).")] = False,
    wait: Annotated[int, typer.Option(min=0, max=20, help="Long-poll seconds per receive.")] = 20,
    admin_url: AdminUrl = None,
    as_json: Json = False,
) -> None:
    """Consume lifecycle events from FORESIGHT_AWS_MP_QUEUE_URL and reconcile the tenants they name."""
    from marketplace.aws.events import EventQueue, Reconciler
    from marketplace.aws.metering import Metering

    with output.reported(as_json), _aws(admin_url) as marketplace:
        queue_url = marketplace.settings.queue_url
        if not queue_url:
            raise InvalidInput("FORESIGHT_AWS_MP_QUEUE_URL", "is not set; the lifecycle events arrive on that queue")
        sqs = marketplace.boto.client("sqs", endpoint_url=marketplace.settings.sqs_endpoint_url)
        queue = EventQueue(Reconciler(marketplace, Metering(marketplace)), sqs, queue_url)
        _consume(lambda: queue.poll(wait), once, as_json)


@aws.command()
def meter(admin_url: AdminUrl = None, as_json: Json = False) -> None:
    """Report the last hour's usage of every purchase (BatchMeterUsage); run it hourly. Safe to re-run."""
    from marketplace.aws.metering import Metering
    from marketplace.errors import MarketplaceFailure

    with output.reported(as_json), _aws(admin_url) as marketplace:
        report = Metering(marketplace).run()
        if as_json:
            output.emit_json(
                {"metered": [asdict(m) for m in report.metered], "skipped": report.skipped, "errors": report.errors}
            )
        else:
            for m in report.metered:
                output.out.print(f"{m.tenant} {m.timestamp:%Y-%m-%dT%H:%M:%SZ} {m.quantity} {m.status}", markup=False)
            for tenant, why in report.skipped.items():
                output.out.print(f"{tenant} skipped: {why}", markup=False)
        if report.errors:
            raise MarketplaceFailure("meter usage", "; ".join(report.errors))


@aws.command()
def reconcile(admin_url: AdminUrl = None, as_json: Json = False) -> None:
    """Make every purchase's tenant match its entitlements now (after an outage, or on a schedule)."""
    from marketplace.aws.events import Reconciler
    from marketplace.aws.metering import Metering

    with output.reported(as_json), _aws(admin_url) as marketplace:
        reconciler = Reconciler(marketplace, Metering(marketplace))
        _reconcile_all(reconciler.reconcile, marketplace.records.tenants(), as_json)


@azure.command("register")
def azure_register(
    token: Annotated[str, typer.Argument(help="The ?token= the Marketplace put on the landing page URL.")],
    admin_url: AdminUrl = None,
    as_json: Json = False,
) -> None:
    """Turn a SaaS subscription into an activated tenant with its plan and first key (what the page does)."""
    with output.reported(as_json), _azure(admin_url) as marketplace:
        with output.progress("registering the subscription", as_json):
            body = marketplace.register(token).to_json()
        _print_registration(body, as_json)


@azure.command("serve")
def azure_serve(
    tls_cert: TlsCert,
    tls_key: TlsKey,
    host: Host = "127.0.0.1",
    port: Port = 8444,
    admin_url: AdminUrl = None,
) -> None:
    """Serve the landing page (GET /azure/landing) and the webhook (POST /azure/webhook) over HTTPS."""
    from marketplace.azure.landing import create_app
    from marketplace.azure.metering import Metering
    from marketplace.azure.webhook import TokenVerifier, Webhook

    with output.reported(False), _azure(admin_url) as marketplace:
        app_ = create_app(marketplace, Webhook(marketplace, Metering(marketplace)), TokenVerifier(marketplace.settings))
        _serve(app_, tls_cert, tls_key, host, port)


@azure.command("meter")
def azure_meter(admin_url: AdminUrl = None, as_json: Json = False) -> None:
    """Report the last hour's usage of every subscription (batch usage events); run it hourly. Safe to re-run."""
    from marketplace.azure.metering import Metering

    with output.reported(as_json), _azure(admin_url) as marketplace:
        _print_metering(Metering(marketplace).run(), as_json)


@azure.command("reconcile")
def azure_reconcile(admin_url: AdminUrl = None, as_json: Json = False) -> None:
    """Make every subscription's tenant match its status and plan now (after an outage, or on a schedule)."""
    from marketplace.azure.metering import Metering
    from marketplace.azure.webhook import Webhook

    with output.reported(as_json), _azure(admin_url) as marketplace:
        webhook = Webhook(marketplace, Metering(marketplace))
        _reconcile_all(webhook.reconcile, marketplace.records.tenants(), as_json)


@gcp.command("register")
def gcp_register(
    token: Annotated[str, typer.Argument(help="The x-gcp-marketplace-token JWT the buyer's browser posted.")],
    admin_url: AdminUrl = None,
    as_json: Json = False,
) -> None:
    """Turn an order into an approved tenant with its plan and first key (what the sign-up page does)."""
    with output.reported(as_json), _gcp(admin_url) as marketplace:
        with output.progress("registering the order", as_json):
            body = marketplace.register(token).to_json()
        _print_registration(body, as_json)


@gcp.command("serve")
def gcp_serve(tls_cert: TlsCert, tls_key: TlsKey, host: Host = "127.0.0.1", port: Port = 8444,
              admin_url: AdminUrl = None) -> None:
    """Serve the sign-up page (POST /gcp/signup) over HTTPS: the listing's sign-up URL."""
    from marketplace.gcp.landing import create_app

    with output.reported(False), _gcp(admin_url) as marketplace:
        _serve(create_app(marketplace), tls_cert, tls_key, host, port)


@gcp.command("events")
def gcp_events(
    once: Annotated[bool, typer.Option("--once", help="Pull one batch and exit (for cron or a test).")] = False,
    admin_url: AdminUrl = None,
    as_json: Json = False,
) -> None:
    """Consume Procurement events from FORESIGHT_GCP_MP_SUBSCRIPTION and reconcile the orders they name."""
    from marketplace.gcp.events import Reconciler, Subscription
    from marketplace.gcp.metering import Metering

    with output.reported(as_json), _gcp(admin_url) as marketplace:
        if not marketplace.settings.subscription:
            raise InvalidInput("FORESIGHT_GCP_MP_SUBSCRIPTION", "is not set; the Procurement events arrive there")
        subscription = Subscription(Reconciler(marketplace, Metering(marketplace)), marketplace.settings.subscription)
        _consume(subscription.poll, once, as_json)


@gcp.command("meter")
def gcp_meter(admin_url: AdminUrl = None, as_json: Json = False) -> None:
    """Report the last hour's usage of every order (Service Control); run it hourly. Safe to re-run."""
    from marketplace.gcp.metering import Metering

    with output.reported(as_json), _gcp(admin_url) as marketplace:
        _print_metering(Metering(marketplace).run(), as_json)


@gcp.command("reconcile")
def gcp_reconcile(admin_url: AdminUrl = None, as_json: Json = False) -> None:
    """Make every order's tenant match its entitlement now (after an outage, or on a schedule)."""
    from marketplace.gcp.events import Reconciler
    from marketplace.gcp.metering import Metering

    with output.reported(as_json), _gcp(admin_url) as marketplace:
        reconciler = Reconciler(marketplace, Metering(marketplace))
        _reconcile_all(reconciler.reconcile, marketplace.records.tenants(), as_json)


def _consume(poll: Any, once: bool, as_json: bool) -> None:
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


def _reconcile_all(reconcile: Any, tenants: list[str], as_json: bool) -> None:
    """Every tenant, even when one fails (its error is reported and the exit code says so)."""
    from marketplace.errors import MarketplaceFailure
    from onboarding.errors import OnboardingError

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


def _serve(app_: Any, tls_cert: Path, tls_key: Path, host: str, port: int) -> None:
    """HTTPS only: the pages carry purchase tokens and the buyer's first key. No access log: Azure puts the
    purchase token in the landing page's query string, which an access log would keep."""
    import uvicorn

    for option, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if not path.is_file():
            raise InvalidInput(option, f"{path} is not a file")
    uvicorn.run(app_, host=host, port=port, ssl_certfile=str(tls_cert), ssl_keyfile=str(tls_key), log_level="info",
                access_log=False)


def _settings(model: Any, prefix: str) -> Any:
    try:
        return model()
    except ValidationError as err:
        first = err.errors()[0]
        raise InvalidInput(prefix + "_".join(str(part) for part in first["loc"]).upper(), first["msg"]) from None


@contextmanager
def _aws(admin_url: str | None) -> Iterator[Any]:
    from marketplace.aws.fulfilment import AwsMarketplace
    from marketplace.aws.settings import AwsMarketplaceSettings

    settings = _settings(AwsMarketplaceSettings, "FORESIGHT_AWS_MP_")
    onboarder = Onboarder.connect(resolve(admin_url=admin_url))
    try:
        yield AwsMarketplace(settings, onboarder)
    finally:
        onboarder.close()


@contextmanager
def _azure(admin_url: str | None) -> Iterator[Any]:
    from marketplace.azure.fulfilment import AzureMarketplace
    from marketplace.azure.settings import AzureMarketplaceSettings

    settings = _settings(AzureMarketplaceSettings, "FORESIGHT_AZURE_MP_")
    onboarder = Onboarder.connect(resolve(admin_url=admin_url))
    try:
        marketplace = AzureMarketplace(settings, onboarder)
        yield marketplace
        marketplace.api.close()
    finally:
        onboarder.close()


@contextmanager
def _gcp(admin_url: str | None) -> Iterator[Any]:
    from marketplace.gcp.fulfilment import GcpMarketplace
    from marketplace.gcp.settings import GcpMarketplaceSettings

    settings = _settings(GcpMarketplaceSettings, "FORESIGHT_GCP_MP_")
    onboarder = Onboarder.connect(resolve(admin_url=admin_url))
    try:
        marketplace = GcpMarketplace(settings, onboarder)
        yield marketplace
        marketplace.api.close()
    finally:
        onboarder.close()
