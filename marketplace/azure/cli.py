"""`foresight marketplace azure`: the SaaS offer's landing page and webhook, and metering."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from marketplace.commands import AdminUrl, Host, Port, TlsCert, TlsKey, connected, saas_commands
from marketplace.commands import serve as serve_pages
from onboarding import output
from onboarding.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, help="Azure Marketplace SaaS: landing page, webhook, metering.")


@contextmanager
def connect(admin_url: str | None) -> Iterator[Any]:
    try:
        from marketplace.azure.fulfilment import AzureMarketplace
    except ModuleNotFoundError as err:  # the base install leaves the cloud SDKs out
        raise InvalidInput("foresight[azure]", f"{err.name} is not installed: pip install 'foresight[azure]'") from None
    from marketplace.azure.settings import AzureMarketplaceSettings

    with connected(AzureMarketplaceSettings, "FORESIGHT_AZURE_MP_", AzureMarketplace, admin_url) as marketplace:
        yield marketplace


def _metering(marketplace: Any) -> Any:
    from marketplace.azure.metering import Metering

    return Metering(marketplace)


def _webhook(marketplace: Any) -> Any:
    from marketplace.azure.webhook import Webhook

    return Webhook(marketplace, _metering(marketplace))


saas_commands(app, connect, argument_help="The ?token= the Marketplace put on the landing page URL.", meter=_metering,
              reconciler=lambda marketplace: _webhook(marketplace).reconcile)


@app.command()
def serve(tls_cert: TlsCert, tls_key: TlsKey, host: Host = "127.0.0.1", port: Port = 8444,
          admin_url: AdminUrl = None) -> None:
    """Serve the landing page (GET /azure/landing) and the webhook (POST /azure/webhook) over HTTPS."""
    from marketplace.azure.landing import create_app
    from marketplace.azure.webhook import TokenVerifier

    with output.reported(False), connect(admin_url) as marketplace:
        pages = create_app(marketplace, _webhook(marketplace), TokenVerifier(marketplace.settings))
        serve_pages(pages, tls_cert, tls_key, host, port)
