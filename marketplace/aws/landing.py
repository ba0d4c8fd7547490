"""The registration page AWS Marketplace sends a buyer to: a form POST carrying `x-amzn-marketplace-token`.

Thin: the token goes to `AwsMarketplace.register` off the event loop (boto3 and hvac block), and the outcome
is shown once by `marketplace/registration.py`.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import Response

from marketplace.aws.fulfilment import AwsMarketplace
from marketplace.registration import form_token, refused, registered
from onboarding.errors import OnboardingError

TOKEN_FIELD = "x-amzn-marketplace-token"  # noqa: S105 - the form field's name, not a secret


def create_app(marketplace: AwsMarketplace) -> FastAPI:
    app = FastAPI(title="Foresight: AWS Marketplace registration", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/aws/register")
    async def register(request: Request) -> Response:
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
