"""The sign-up page Google Cloud Marketplace sends a buyer to: a form POST carrying `x-gcp-marketplace-token`
(a JWT Google signs). Thin: it hands off to `GcpMarketplace.register` off the event loop."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import Response

from marketplace.gcp.fulfilment import GcpMarketplace
from marketplace.registration import form_token, refused, registered
from onboarding.errors import OnboardingError

TOKEN_FIELD = "x-gcp-marketplace-token"  # noqa: S105 - the form field's name, not a secret


def create_app(marketplace: GcpMarketplace) -> FastAPI:
    app = FastAPI(title="Foresight: Google Cloud Marketplace sign-up", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/gcp/signup")
    async def signup(request: Request) -> Response:
        wants_json = "application/json" in request.headers.get("accept", "")
        try:
            token = await form_token(request, TOKEN_FIELD)
            registration = await asyncio.to_thread(marketplace.register, token)
        except OnboardingError as err:
            return refused(err, wants_json)
        return registered(registration, wants_json)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
