"""`foresight marketplace gcp`: the SaaS listing's sign-up page, Procurement events and metering."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

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
from marketplace.gcp.settings import GcpMarketplaceSettings
from onboarding import output
from onboarding.errors import InvalidInput

PREFIX = "FORESIGHT_GCP_MP_"
ENVIRONMENT = environment_help(
    GcpMarketplaceSettings, PREFIX, "the service account in GOOGLE_APPLICATION_CREDENTIALS (or the host's own)",
    "docs/marketplace-gcp.md"
)

app = typer.Typer(no_args_is_help=True, help="Google Cloud Marketplace SaaS: sign-up, Pub/Sub events, metering.")


@contextmanager
def connect(admin_url: str | None) -> Iterator[Any]:
    try:
        from marketplace.gcp.fulfilment import GcpMarketplace
    except ModuleNotFoundError as err:  # the base install leaves the cloud SDKs out
        raise InvalidInput("foresight[gcp]", f"{err.name} is not installed: pip install 'foresight[gcp]'") from None
    with connected(GcpMarketplaceSettings, PREFIX, GcpMarketplace, admin_url) as marketplace:
        yield marketplace


def _metering(marketplace: Any) -> Any:
    from marketplace.gcp.metering import Metering

    return Metering(marketplace)


def _reconciler(marketplace: Any) -> Any:
    from marketplace.gcp.events import Reconciler

    return Reconciler(marketplace, _metering(marketplace))


saas_commands(app, connect, argument_help="The x-gcp-marketplace-token JWT the buyer's browser posted.",
              meter=_metering, reconciler=lambda marketplace: _reconciler(marketplace).reconcile,
              environment=ENVIRONMENT)


@app.command(epilog=ENVIRONMENT)
def serve(tls_cert: TlsCert, tls_key: TlsKey, host: Host = "127.0.0.1", port: Port = 8444,
          admin_url: AdminUrl = None) -> None:
    """Serve the sign-up page (POST /gcp/signup) over HTTPS: the listing's sign-up URL."""
    from marketplace.gcp.landing import create_app

    with output.reported(False), connect(admin_url) as marketplace:
        _ = marketplace.product  # refused at start, not at the first buyer's sign-up
        serve_pages(create_app(marketplace), tls_cert, tls_key, host, port)


@app.command(epilog=ENVIRONMENT)
def events(once: Once = False, admin_url: AdminUrl = None, as_json: EventsJson = False) -> None:
    """Consume Procurement events from FORESIGHT_GCP_MP_SUBSCRIPTION and reconcile the orders they name."""
    from marketplace.gcp.events import Subscription

    with events_reported(as_json, once), connect(admin_url) as marketplace:
        if not marketplace.settings.subscription:
            raise InvalidInput("FORESIGHT_GCP_MP_SUBSCRIPTION", "is not set; the Procurement events arrive there")
        subscription = Subscription(_reconciler(marketplace), marketplace.settings.subscription)
        consume(subscription.poll, once, as_json)
