"""A FAKE of the Azure Marketplace SaaS Fulfillment API v2, its metering API and the slice of Entra ID they
rely on, because none of them has a runnable implementation: it is built from Microsoft's published contract
(learn.microsoft.com: "SaaS fulfillment Subscription APIs v2", "Implementing a webhook on the SaaS service",
"Marketplace metered billing APIs", and Entra ID's OpenID configuration, client-credentials token and JWKS).

It serves HTTPS (the suite's test CA), so the real azure-identity client-credentials flow and PyJWT's key fetch
run against it unchanged. What it checks and answers, per the contract:
- Entra: client id and secret; tokens for the Marketplace API's scope only; signing keys as JWKS; and it signs
  webhook tokens the way the Marketplace's are (RS256, iss sts.windows.net/<tenant>/, aud = the publisher app,
  tid, appid = the Marketplace's app id).
- resolve: the `x-ms-marketplace-token` header -> the subscription; 400 for an unknown token.
- activate: PendingFulfillmentStart -> Subscribed (the plan given must be the subscription's).
- subscriptions/{id}, operations/{id}: GET; PATCH an InProgress ChangePlan or ChangeQuantity with Success
  applies it, Failure rejects it; the webhook table ("Implementing a webhook on the SaaS service") makes every
  other action notify-only ("Not applicable"), so those are applied when notified and a PATCH of one is 400.
- batchUsageEvent: at most 25 events; quantity > 0 (InvalidQuantity); one event per resource, dimension and hour
  (Duplicate); effectiveStartTime within 24 hours (Expired); unknown resource (ResourceNotFound); dimension
  known to the offer (InvalidDimension).
Every Marketplace API call must carry a bearer token it issued. Everything received is kept in `calls`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from marketplace.azure.fulfilment import MARKETPLACE_APP_ID, SCOPE
from tests.servers import http_server
from tests.tlsutil import PKI

_ANSWERED_BY_PUBLISHER = ("ChangePlan", "ChangeQuantity")  # the webhook table's only actions with a PATCH


@dataclass
class AzureFake:
    tenant_id: str
    client_id: str
    client_secret: str
    offer_id: str
    dimensions: set[str]
    pki: PKI
    base: str = ""
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # purchase token -> subscription id
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage: dict[tuple[str, str, dt.datetime], dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)  # HTTP statuses for the next Marketplace API calls
    access_tokens: set[str] = field(default_factory=set)
    signing_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    key_id: str = "fake-entra-key-1"
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- what a test sets up ---------------------------------------------------------------------------------

    def purchase(self, plan_id: str, offer_id: str | None = None) -> tuple[str, str]:
        """A new SaaS subscription, pending activation; returns (landing-page token, subscription id)."""
        subscription_id = str(uuid.uuid4())
        self.subscriptions[subscription_id] = {
            "id": subscription_id, "name": "Foresight for Contoso", "publisherId": "foresight",
            "offerId": offer_id or self.offer_id, "planId": plan_id, "quantity": None,
            "saasSubscriptionStatus": "PendingFulfillmentStart", "isTest": True, "isFreeTrial": False,
            "beneficiary": {"tenantId": str(uuid.uuid4()), "objectId": str(uuid.uuid4())},
        }
        token = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
        self.tokens[token] = subscription_id
        return token, subscription_id

    def operation(self, subscription_id: str, action: str, status: str = "InProgress",
                  plan_id: str | None = None) -> dict[str, Any]:
        """What the Marketplace would post to the webhook, with the operation recorded behind it."""
        subscription = self.subscriptions[subscription_id]
        operation = {
            "id": str(uuid.uuid4()), "activityId": str(uuid.uuid4()), "subscriptionId": subscription_id,
            "offerId": subscription["offerId"], "publisherId": "foresight", "planId": plan_id or subscription["planId"],
            "quantity": None, "action": action, "status": status,
            "timeStamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        self.operations[operation["id"]] = operation
        if status == "Success" or action not in _ANSWERED_BY_PUBLISHER:  # done on Microsoft's side already
            self._apply(operation)
        return dict(operation)

    def webhook_token(self, **overrides: Any) -> str:
        """A token like the one the Marketplace sends the webhook, signed with Entra's (fake) key."""
        now = int(time.time())
        claims = {"iss": f"https://sts.windows.net/{self.tenant_id}/", "aud": self.client_id, "tid": self.tenant_id,
                  "appid": MARKETPLACE_APP_ID, "iat": now, "nbf": now, "exp": now + 3600, **overrides}
        return jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": self.key_id})

    def billed(self, subscription_id: str) -> list[float]:
        return [e["quantity"] for (sid, _, _), e in sorted(self.usage.items(), key=lambda kv: kv[0][2])
                if sid == subscription_id]

    # -- Entra ID --------------------------------------------------------------------------------------------

    def entra(self, method: str, path: str, form: dict[str, str]) -> tuple[int, Any]:
        tenant = path.split("/")[1]
        if tenant != self.tenant_id:
            return 400, {"error": "invalid_tenant"}
        authority = f"{self.base}/{tenant}"
        if path.endswith("/.well-known/openid-configuration"):
            return 200, {"token_endpoint": f"{authority}/oauth2/v2.0/token",
                         "authorization_endpoint": f"{authority}/oauth2/v2.0/authorize",
                         "issuer": f"{authority}/v2.0", "jwks_uri": f"{authority}/discovery/v2.0/keys"}
        if path.endswith("/discovery/v2.0/keys"):
            public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.signing_key.public_key()))
            return 200, {"keys": [{**public, "kid": self.key_id, "use": "sig", "alg": "RS256"}]}
        if path.endswith("/oauth2/v2.0/token") and method == "POST":
            if (form.get("client_id"), form.get("client_secret")) != (self.client_id, self.client_secret):
                return 401, {"error": "invalid_client"}
            if form.get("scope") != SCOPE:
                return 400, {"error": "invalid_scope"}
            token = "fake-" + uuid.uuid4().hex
            self.access_tokens.add(token)
            return 200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token}
        return 404, {"error": "not_found"}

    # -- the Marketplace API ---------------------------------------------------------------------------------

    def api(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if headers.get("authorization", "").removeprefix("Bearer ") not in self.access_tokens:
            return 401, {"error": {"code": "Unauthorized", "message": "no valid publisher token"}}
        if self.fail_next:
            return self.fail_next.pop(0), {"error": {"code": "InternalServerError", "message": "try again"}}
        parts = path.strip("/").split("/")
        if path == "/api/saas/subscriptions/resolve" and method == "POST":
            subscription_id = self.tokens.get(headers.get("x-ms-marketplace-token", ""))
            if subscription_id is None:
                return 400, {"error": {"code": "BadArgument", "message": "The token is invalid"}}
            sub = self.subscriptions[subscription_id]
            return 200, {"id": sub["id"], "subscriptionName": sub["name"], "offerId": sub["offerId"],
                         "planId": sub["planId"], "quantity": sub["quantity"], "subscription": dict(sub)}
        if path == "/api/batchUsageEvent" and method == "POST":
            return self._usage_events(body.get("request", []))
        if len(parts) >= 4 and parts[:3] == ["api", "saas", "subscriptions"]:
            sub = self.subscriptions.get(parts[3])
            if sub is None:
                return 404, {"error": {"code": "EntityNotFound", "message": "no such subscription"}}
            if len(parts) == 4 and method == "GET":
                return 200, dict(sub)
            if len(parts) == 5 and parts[4] == "activate" and method == "POST":
                if body.get("planId") != sub["planId"]:
                    return 400, {"error": {"code": "BadArgument", "message": "planId is not the subscription's"}}
                if sub["saasSubscriptionStatus"] == "PendingFulfillmentStart":
                    sub["saasSubscriptionStatus"] = "Subscribed"
                return 200, None
            if len(parts) == 6 and parts[4] == "operations":
                operation = self.operations.get(parts[5])
                if operation is None or operation["subscriptionId"] != sub["id"]:
                    return 404, {"error": {"code": "EntityNotFound", "message": "no such operation"}}
                if method == "GET":
                    return 200, dict(operation)
                if method == "PATCH" and (operation["action"] not in _ANSWERED_BY_PUBLISHER
                                          or operation["status"] != "InProgress"):
                    return 400, {"error": {"code": "BadArgument", "message": "this operation takes no answer"}}
                if method == "PATCH" and body.get("status") in ("Success", "Failure"):
                    operation["status"] = "Succeeded" if body["status"] == "Success" else "Failed"
                    if body["status"] == "Success":
                        self._apply(operation)
                    return 200, None
        return 404, {"error": {"code": "NotFound", "message": f"{method} {path}"}}

    def _apply(self, operation: dict[str, Any]) -> None:
        sub = self.subscriptions[operation["subscriptionId"]]
        action = operation["action"]
        if action == "ChangePlan":
            sub["planId"] = operation["planId"]
        elif action == "Suspend":
            sub["saasSubscriptionStatus"] = "Suspended"
        elif action == "Reinstate":
            sub["saasSubscriptionStatus"] = "Subscribed"
        elif action == "Unsubscribe":
            sub["saasSubscriptionStatus"] = "Unsubscribed"

    def _usage_events(self, events: list[dict[str, Any]]) -> tuple[int, Any]:
        if not 1 <= len(events) <= 25:
            return 400, {"error": {"code": "BadArgument", "message": "1 to 25 events"}}
        now = dt.datetime.now(dt.UTC)
        results = []
        for event in events:
            start = dt.datetime.fromisoformat(event["effectiveStartTime"].replace("Z", "+00:00"))
            hour = start.replace(minute=0, second=0, microsecond=0)
            key = (event["resourceId"], event["dimension"], hour)
            if event["resourceId"] not in self.subscriptions:
                status = "ResourceNotFound"
            elif event["dimension"] not in self.dimensions:
                status = "InvalidDimension"
            elif not event["quantity"] > 0:
                status = "InvalidQuantity"
            elif now - start > dt.timedelta(hours=24) or start > now:
                status = "Expired"
            elif key in self.usage:
                status = "Duplicate"
            else:
                status = "Accepted"
                self.usage[key] = dict(event)
            results.append({**event, "usageEventId": str(uuid.uuid4()), "status": status,
                            "messageTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                            "effectiveStartTime": start.strftime("%Y-%m-%dT%H:%M:%S")})
        return 200, {"result": results, "count": len(results)}


def _answer(fake: AzureFake, method: str, path: str, raw_headers: dict[str, str], raw: bytes) -> tuple[int, str]:
    url = urlsplit(path)
    headers = {k.lower(): v for k, v in raw_headers.items()}
    with fake.lock:
        if not url.path.startswith("/api/"):
            status, reply = fake.entra(method, url.path, {k: v[0] for k, v in parse_qs(raw.decode()).items()})
        elif parse_qs(url.query).get("api-version") != ["2018-08-31"]:
            status, reply = 400, {"error": {"code": "BadArgument", "message": "api-version"}}
        else:
            body = json.loads(raw) if raw else {}
            fake.calls.append((method, url.path, body))
            status, reply = fake.api(method, url.path, headers, body)
    return status, "" if reply is None else json.dumps(reply)


@contextmanager
def azure_fake(pki: PKI, offer_id: str, dimensions: set[str]) -> Iterator[AzureFake]:
    fake = AzureFake(str(uuid.uuid4()), str(uuid.uuid4()), "publisher-app-secret", offer_id, dimensions, pki)
    with http_server(lambda *request: _answer(fake, *request), tls=(pki.cert, pki.key), host="localhost") as url:
        fake.base = url
        yield fake
