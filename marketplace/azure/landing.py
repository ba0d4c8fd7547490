"""The Azure Marketplace's two calls into Foresight: the landing page a buyer opens (`GET ?token=...`) and the
webhook the Marketplace posts lifecycle notifications to. Thin: both hand off to plain modules, off the event
loop (azure-identity, requests and hvac block)."""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from marketplace.azure.fulfilment import AzureMarketplace
from marketplace.azure.webhook import TokenVerifier, Unauthorized, Webhook
from marketplace.registration import refused, registered
from onboarding.errors import InvalidInput, OnboardingError

MAX_NOTIFICATION_BYTES = 64 * 1024


def create_app(marketplace: AzureMarketplace, webhook: Webhook, verifier: TokenVerifier) -> FastAPI:
    app = FastAPI(title="Foresight: Azure Marketplace", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/azure/landing")
    async def landing(request: Request, token: str = "") -> Response:
        wants_json = "application/json" in request.headers.get("accept", "")
        try:
            registration = await asyncio.to_thread(marketplace.register, token)
        except OnboardingError as err:
            return refused(err, wants_json)
        return registered(registration, wants_json)

    @app.post("/azure/webhook")
    async def notify(request: Request) -> Response:
        try:
            await asyncio.to_thread(verifier.verify, request.headers.get("authorization"))
            raw = await request.body()
            if len(raw) > MAX_NOTIFICATION_BYTES:
                raise InvalidInput("webhook", "the notification is too large")
            try:
                notification = json.loads(raw)
            except json.JSONDecodeError:
                raise InvalidInput("webhook", "the notification is not JSON") from None
            if not isinstance(notification, dict):
                raise InvalidInput("webhook", "the notification is not a JSON object")
            outcome = await asyncio.to_thread(webhook.handle, notification)
        except Unauthorized as err:
            return JSONResponse({"error": f"unauthorized: {err}"}, status_code=401)
        except InvalidInput as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except OnboardingError as err:  # Vault, the service or the Marketplace API: the Marketplace retries
            return JSONResponse({"error": str(err)}, status_code=503)
        return JSONResponse({"tenant": outcome.tenant, "action": outcome.action})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
