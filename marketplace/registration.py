"""Registering a purchase, on every cloud: the transaction (`register_purchase`), what it hands back, and
the page and JSON that show it once.

The page is the only place the buyer's first API key appears: it is never cached, framed or referred, and
`Accept: application/json` gets the same object for automation.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from marketplace.errors import NotEntitled
from marketplace.records import PurchaseRecords, RecordT
from onboarding.context import Endpoints
from onboarding.errors import Conflict, InvalidInput, OnboardingError
from onboarding.plans import quota_for
from onboarding.snippet import connection_snippet
from onboarding.tenants import Onboarder
from service.security.apikeys import IssuedKey

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 16 * 1024
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


@dataclass(frozen=True, kw_only=True)
class Registration:
    tenant: str
    plan: str
    purchase: dict[str, str]  # the marketplace's ids for the purchase (license, account, subscription, ...)
    key: IssuedKey | None  # None when the purchase was registered before: keys are shown once
    endpoints: Endpoints | None
    warnings: list[str]

    @classmethod
    def already(cls, tenant: str, plan: str, purchase: dict[str, str], endpoints: Endpoints | None) -> Registration:
        return cls(
            tenant=tenant,
            plan=plan,
            purchase=purchase,
            key=None,
            endpoints=endpoints,
            warnings=[
                f"this purchase is already set up as tenant {tenant}; its first API key was shown then "
                f"(an operator can issue another: `foresight keys issue {tenant}`)"
            ],
        )

    def to_json(self) -> dict[str, Any]:
        """What the page, the CLI's --json and the tests all read."""
        body: dict[str, Any] = {
            "tenant": self.tenant,
            "plan": self.plan,
            **self.purchase,
            "api_key": self.key.secret if self.key else None,
            "key_id": self.key.key_id if self.key else None,
            "endpoints": None,
            "snippet": {},
            "warnings": self.warnings,
        }
        if self.endpoints is not None:
            ends = self.endpoints
            body["endpoints"] = {"resp_host": ends.resp_host, "resp_port": ends.resp_port, "http_url": ends.http_url}
            if self.key:
                body["snippet"] = connection_snippet(ends, self.key.secret)
        return body


def register_purchase(
    records: PurchaseRecords[RecordT], onboarder: Onboarder, tenant: str, record: RecordT, purchase: dict[str, str],
    activate: Callable[[], None] = lambda: None,
) -> Registration:
    """The registration transaction every marketplace shares: record the purchase, create the tenant and its
    first key, then `activate` (tell the marketplace to start billing). A step that fails undoes the ones
    before it (only what this call made), so the buyer can simply retry; a purchase registered before, or
    being registered by a concurrent request, gets no second key (activation is repeated, idempotently, in
    case it was what failed)."""
    onboarder.recover()  # a tenant an earlier attempt left half-made (its process died) is not "already set up"
    fresh = records.create(tenant, record)
    if not fresh and records.tenant_exists(tenant):
        activate()
        return Registration.already(tenant, record.plan, purchase, onboarder.endpoints)
    try:
        created = onboarder.create_tenant(tenant, quota_for(record.plan))
    except Conflict:  # a concurrent registration of the same purchase made it first
        return Registration.already(tenant, record.plan, purchase, onboarder.endpoints)
    except BaseException:
        if fresh:
            records.delete(tenant)
        raise
    try:
        activate()
    except BaseException:
        # Nobody pays for it: no tenant, no key. Only what this call made is undone: the record may be an
        # earlier attempt's, and a concurrent registration of the purchase gets Conflict above, not the tenant.
        onboarder.delete_tenant(tenant)
        if fresh:
            records.delete(tenant)
        raise
    log.info("registered a marketplace purchase as tenant %s (plan %s)", tenant, record.plan)
    return Registration(tenant=tenant, plan=record.plan, purchase=purchase, key=created.key,
                        endpoints=onboarder.endpoints, warnings=created.warnings)


def registered(registration: Registration, wants_json: bool) -> Response:
    body = registration.to_json()
    lines = [f"Tenant {registration.tenant}, plan {registration.plan}."]
    if registration.key:
        lines.append(f"Your API key (shown once; store it now): {registration.key.secret}")
    lines += registration.warnings
    lines += [f"{client}: {text}" for client, text in body["snippet"].items()]
    page = _page("Foresight is ready" if registration.key else "Already set up", lines)
    return _reply(wants_json, 201 if registration.key else 200, body, page)


def refused(err: OnboardingError, wants_json: bool) -> Response:
    """400 for bad input, 402 for a purchase that cannot be served (yet), 503 for anything to retry later."""
    status = 400 if isinstance(err, InvalidInput) else 402 if isinstance(err, NotEntitled) else 503
    return _reply(wants_json, status, {"error": str(err)}, _page("Setup could not finish", [str(err)]))


def form_page(title: str, path: str, field: str, register: Callable[[str], Registration]) -> FastAPI:
    """The page a marketplace posts the buyer's browser to with a token in form `field` (AWS, Google Cloud);
    `register` blocks (cloud SDKs, Vault), so it runs off the event loop."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(path)
    async def register_page(request: Request) -> Response:
        wants_json = "application/json" in request.headers.get("accept", "")
        try:
            token = await form_token(request, field)
            registration = await asyncio.to_thread(register, token)
        except OnboardingError as err:
            return refused(err, wants_json)
        return registered(registration, wants_json)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def form_token(request: Request, field: str) -> str:
    """The one `field` of the form a marketplace posts the buyer's browser with; InvalidInput otherwise."""
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        raise InvalidInput("registration", "expected the form the marketplace posts (x-www-form-urlencoded)")
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise InvalidInput("registration", "the form is too large")
    values = parse_qs(raw.decode("utf-8", "replace")).get(field, [])
    if len(values) != 1:
        raise InvalidInput("registration", f"the form must carry exactly one {field}")
    return values[0]


def _reply(wants_json: bool, status: int, body: dict[str, Any], page: str) -> Response:
    if wants_json:
        return JSONResponse(body, status_code=status, headers=HEADERS)
    return HTMLResponse(page, status_code=status, headers=HEADERS)


def _page(title: str, lines: list[str]) -> str:
    items = "".join(f"<pre>{html.escape(line)}</pre>" for line in lines)
    title = html.escape(title)
    return f"<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1>{items}</body></html>"
