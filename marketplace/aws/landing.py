"""The registration page AWS Marketplace sends a buyer to: a form POST carrying `x-amzn-marketplace-token`.

The page is thin: it hands the token to `AwsMarketplace.register` (off the event loop: boto3 and hvac block)
and shows the outcome once. The API key appears in this one response only, which is never cached or
framed; `Accept: application/json` gets the same as JSON for automation.
"""

from __future__ import annotations

import asyncio
import html
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from marketplace.aws.fulfilment import AwsMarketplace, NotEntitled, Registration
from onboarding.errors import InvalidInput, OnboardingError
from onboarding.snippet import connection_snippet

TOKEN_FIELD = "x-amzn-marketplace-token"  # noqa: S105 - the form field's name, not a secret
MAX_FORM_BYTES = 16 * 1024
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


def create_app(marketplace: AwsMarketplace) -> FastAPI:
    app = FastAPI(title="Foresight: AWS Marketplace registration", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/aws/register")
    async def register(request: Request) -> Response:
        wants_json = "application/json" in request.headers.get("accept", "")
        try:
            token = await _token(request)
            registration = await asyncio.to_thread(marketplace.register, token)
        except OnboardingError as err:
            status = 400 if isinstance(err, InvalidInput) else 402 if isinstance(err, NotEntitled) else 503
            return _reply(wants_json, status, {"error": str(err)}, _page("Setup could not finish", [str(err)]))
        body = registration_json(registration)
        return _reply(wants_json, 201 if registration.key else 200, body, _registration_page(registration, body))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def registration_json(registration: Registration) -> dict[str, Any]:
    """What the page, the CLI's --json and the tests all read."""
    ends = registration.endpoints
    body: dict[str, Any] = {
        "tenant": registration.tenant,
        "plan": registration.plan,
        "aws_account_id": registration.purchase.aws_account_id,
        "license_arn": registration.purchase.license_arn,
        "api_key": registration.key.secret if registration.key else None,
        "key_id": registration.key.key_id if registration.key else None,
        "endpoints": None,
        "snippet": {},
        "warnings": registration.warnings,
    }
    if ends is not None:
        body["endpoints"] = {"resp_host": ends.resp_host, "resp_port": ends.resp_port, "http_url": ends.http_url}
        if registration.key:
            body["snippet"] = connection_snippet(ends, registration.key.secret)
    return body


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


def _reply(wants_json: bool, status: int, body: dict[str, Any], page: str) -> Response:
    if wants_json:
        return JSONResponse(body, status_code=status, headers=_HEADERS)
    return HTMLResponse(page, status_code=status, headers=_HEADERS)


def _registration_page(registration: Registration, body: dict[str, Any]) -> str:
    lines = [f"Tenant {registration.tenant}, plan {registration.plan}."]
    if registration.key:
        lines.append(f"Your API key (shown once; store it now): {registration.key.secret}")
    lines += registration.warnings
    lines += [f"{client}: {text}" for client, text in body["snippet"].items()]
    return _page("Foresight is ready" if registration.key else "Already set up", lines)


def _page(title: str, lines: list[str]) -> str:
    items = "".join(f"<pre>{html.escape(line)}</pre>" for line in lines)
    title = html.escape(title)
    return f"<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1>{items}</body></html>"
