"""The registration page AWS Marketplace sends a buyer to: a form POST carrying `x-amzn-marketplace-token`.

Thin: the token goes to `AwsMarketplace.register` off the event loop (boto3 and hvac block), and the outcome
is shown once by `marketplace/registration.py`.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import Response

from marketplace.aws.fulfilment import AwsMarketplace
from marketplace.registration import refused, registered
from onboarding.errors import InvalidInput, OnboardingError

TOKEN_FIELD = "x-amzn-marketplace-token"  # noqa: S105 - the form field's name, not a secret
MAX_FORM_BYTES = 16 * 1024


def create_app(marketplace: AwsMarketplace) -> FastAPI:
    app = FastAPI(title="Foresight: AWS Marketplace registration", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/aws/register")
    async def register(request: Request) -> Response:
        wants_json = "application/json" in request.headers.get("accept", "")
        try:
            token = await _token(request)
            registration = await asyncio.to_thread(marketplace.register, token)
        except OnboardingError as err:
            return refused(err, wants_json)
        return registered(registration, wants_json)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _token(request: Request) -> str:
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        raise InvalidInput("registration", "expected the form AWS Marketplace posts (x-www-form-urlencoded)")
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise InvalidInput("registration", "the form is too large")
    values = parse_qs(raw.decode("utf-8", "replace")).get(TOKEN_FIELD, [])
    if len(values) != 1:
        raise InvalidInput("registration", f"the form must carry exactly one {TOKEN_FIELD}")
    return values[0]
