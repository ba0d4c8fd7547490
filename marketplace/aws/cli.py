"""`foresight marketplace aws`: the SaaS listing's registration page, lifecycle events and metering."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from marketplace.aws.settings import AwsMarketplaceSettings
from marketplace.commands import (
    AdminUrl,
    EventsJson,
    Host,
    Once,
    Port,
    TlsCert,
    TlsKey,
    connected,
    consume,
    environment_help,
    events_reported,
    saas_commands,
)
from marketplace.commands import serve as serve_pages
from onboarding import output
from onboarding.errors import InvalidInput

PREFIX = "FORESIGHT_AWS_MP_"
ENVIRONMENT = environment_help(
    AwsMarketplaceSettings, PREFIX, "AWS credentials as boto3 finds them (the host's role)",
    "docs/marketplace-aws.md"
)

app = typer.Typer(no_args_is_help=True, help="AWS Marketplace SaaS: registration, lifecycle events, metering.")


@contextmanager
def connect(admin_url: str | None) -> Iterator[Any]:
    from marketplace.aws.fulfilment import AwsMarketplace

    with connected(AwsMarketplaceSettings, PREFIX, AwsMarketplace, admin_url) as marketplace:
        yield marketplace


def _metering(marketplace: Any) -> Any:
    from marketplace.aws.metering import Metering

    return Metering(marketplace)


def _reconciler(marketplace: Any) -> Any:
    from marketplace.aws.events import Reconciler

    return Reconciler(marketplace, _metering(marketplace)).reconcile


saas_commands(app, connect, argument_help="The x-amzn-marketplace-token the buyer's browser posted.", meter=_metering,
              reconciler=_reconciler, environment=ENVIRONMENT)


@app.command(epilog=ENVIRONMENT)
def serve(tls_cert: TlsCert, tls_key: TlsKey, host: Host = "127.0.0.1", port: Port = 8444,
          admin_url: AdminUrl = None) -> None:
    """Serve the registration page (POST /aws/register) over HTTPS: the listing's fulfilment URL."""
    from marketplace.aws.landing import create_app

    with output.reported(False), connect(admin_url) as marketplace:
        serve_pages(create_app(marketplace), tls_cert, tls_key, host, port)


@app.command(epilog=ENVIRONMENT)
def events(
    once: Once = False,
    wait: Annotated[int, typer.Option(min=0, max=20, help="Long-poll seconds per receive.")] = 20,
    admin_url: AdminUrl = None,
    as_json: EventsJson = False,
) -> None:
    """Consume lifecycle events from FORESIGHT_AWS_MP_QUEUE_URL and reconcile the tenants they name."""
    from marketplace.aws.events import EventQueue, Reconciler

    with events_reported(as_json, once), connect(admin_url) as marketplace:
        queue_url = marketplace.settings.queue_url
        if not queue_url:
            raise InvalidInput("FORESIGHT_AWS_MP_QUEUE_URL", "is not set; the lifecycle events arrive on that queue")
        sqs = marketplace.boto.client("sqs", endpoint_url=marketplace.settings.sqs_endpoint_url)
        queue = EventQueue(Reconciler(marketplace, _metering(marketplace)), sqs, queue_url)
        consume(lambda: queue.poll(wait), once, as_json)
