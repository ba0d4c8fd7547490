"""`foresight marketplace azure`: the SaaS offer's landing page and webhook, and metering."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from marketplace.azure.settings import AzureMarketplaceSettings
from marketplace.commands import (
    AdminUrl,
    Host,
    Port,
    Problem,
    TlsCert,
    TlsKey,
    connected,
    environment_help,
    saas_commands,
)
from marketplace.commands import serve as serve_pages
from onboarding import output
from onboarding.errors import InvalidInput

PREFIX = "FORESIGHT_AZURE_MP_"
ENVIRONMENT = environment_help(
    AzureMarketplaceSettings, PREFIX, "the app's credential in AZURE_CLIENT_SECRET (or AZURE_CLIENT_CERTIFICATE_PATH)",
    "docs/marketplace-azure.md"
)

app = typer.Typer(no_args_is_help=True, help="Azure Marketplace SaaS: landing page, webhook, metering.")


@contextmanager
def connect(admin_url: str | None) -> Iterator[Any]:
    try:
        from marketplace.azure.fulfilment import AzureMarketplace
    except ModuleNotFoundError as err:  # the base install leaves the cloud SDKs out
        raise InvalidInput("foresight[azure]", f"{err.name} is not installed: pip install 'foresight[azure]'") from None
    with connected(AzureMarketplaceSettings, PREFIX, AzureMarketplace, admin_url, _credential) as marketplace:
        yield marketplace


def _credential() -> list[Problem]:
    """azure-identity's variables, checked with the settings so that one run names everything missing."""
    if os.environ.get("AZURE_CLIENT_SECRET") or os.environ.get("AZURE_CLIENT_CERTIFICATE_PATH"):
        return []
    return [("AZURE_CLIENT_SECRET", "set it (or AZURE_CLIENT_CERTIFICATE_PATH) to the publisher app's credential")]


def _metering(marketplace: Any) -> Any:
    from marketplace.azure.metering import Metering

    return Metering(marketplace)


def _webhook(marketplace: Any) -> Any:
    from marketplace.azure.webhook import Webhook

    return Webhook(marketplace, _metering(marketplace))


saas_commands(app, connect, argument_help="The ?token= the Marketplace put on the landing page URL.", meter=_metering,
              reconciler=lambda marketplace: _webhook(marketplace).reconcile, environment=ENVIRONMENT)


@app.command(epilog=ENVIRONMENT)
def serve(tls_cert: TlsCert, tls_key: TlsKey, host: Host = "127.0.0.1", port: Port = 8444,
          admin_url: AdminUrl = None) -> None:
    """Serve the landing page (GET /azure/landing) and the webhook (POST /azure/webhook) over HTTPS."""
    from marketplace.azure.landing import create_app
    from marketplace.azure.webhook import TokenVerifier

    with output.reported(False), connect(admin_url) as marketplace:
        pages = create_app(marketplace, _webhook(marketplace), TokenVerifier(marketplace.settings))
        serve_pages(pages, tls_cert, tls_key, host, port)
