"""The sign-up page Google Cloud Marketplace sends a buyer to: a form POST carrying `x-gcp-marketplace-token`
(a JWT Google signs)."""

from __future__ import annotations

from fastapi import FastAPI

from marketplace.gcp.fulfilment import GcpMarketplace
from marketplace.registration import form_page

TOKEN_FIELD = "x-gcp-marketplace-token"  # noqa: S105 - the form field's name, not a secret


def create_app(marketplace: GcpMarketplace) -> FastAPI:
    return form_page("Foresight: Google Cloud Marketplace sign-up", "/gcp/signup", TOKEN_FIELD, marketplace.register)
