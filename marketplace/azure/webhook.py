"""The Azure Marketplace webhook: lifecycle notifications (ChangePlan, ChangeQuantity, Suspend, Reinstate,
Unsubscribe, Renew), verified twice before anything changes.

1. The request's bearer token must be an Entra ID token signed with the publisher tenant's keys, issued to the
   publisher app (`aud`) in the publisher tenant (`tid`) for the Marketplace's own app (`appid`/`azp`).
2. The operation it names must exist at the Fulfillment API (`GET .../operations/{id}`).

Then the tenant is made to match. Microsoft's webhook table has the publisher answer (PATCH the operation) only
ChangePlan and ChangeQuantity, within 10 seconds ("PATCH with success (this event is optional and autoaccepted
in 10 secs)"); every other action, Reinstate included, is "Not applicable". So a ChangePlan or ChangeQuantity
InProgress is answered first (Failure for a plan this service does not offer, and nothing changes; Success
otherwise), then applied; if applying fails the call gets 503, Microsoft delivers it again, and the operation,
no longer InProgress, is applied from the subscription's state. Every other notification re-reads the
subscription and applies its state (`marketplace/lifecycle.py`).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import jwt

from marketplace.azure.fulfilment import MARKETPLACE_APP_ID, AzureMarketplace
from marketplace.azure.metering import Metering
from marketplace.azure.records import tenant_of
from marketplace.azure.settings import AzureMarketplaceSettings
from marketplace.errors import MarketplaceFailure
from marketplace.lifecycle import Lifecycle, Outcome
from onboarding.errors import InvalidInput

log = logging.getLogger(__name__)

_ANSWERED_BY_US = ("ChangePlan", "ChangeQuantity")


class Unauthorized(Exception):
    """The webhook call did not come from the Marketplace; the message says which check failed."""


class TokenVerifier:
    def __init__(self, settings: AzureMarketplaceSettings) -> None:
        self.settings = settings
        context = ssl.create_default_context(cafile=str(settings.ca_file)) if settings.ca_file else None
        keys_url = f"{settings.authority.rstrip('/')}/{settings.tenant_id}/discovery/v2.0/keys"
        self._keys = jwt.PyJWKClient(keys_url, cache_keys=True, ssl_context=context, timeout=10)
        self._issuers = {
            f"https://sts.windows.net/{settings.tenant_id}/",
            f"{settings.authority.rstrip('/')}/{settings.tenant_id}/v2.0",
        }

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims; Unauthorized unless every check passes. Blocks (fetches signing keys)."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("no bearer token")
        token = authorization.removeprefix("Bearer ").strip()
        try:
            key = self._keys.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.settings.client_id,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.PyJWKClientConnectionError as err:
            raise MarketplaceFailure("verify the webhook token", f"Entra ID's keys unreachable: {err}") from None
        except jwt.PyJWTError as err:
            raise Unauthorized(f"token rejected: {err}") from None
        if claims["iss"] not in self._issuers:
            raise Unauthorized(f"issuer {claims['iss']!r} is not the publisher tenant")
        if claims.get("tid") != self.settings.tenant_id:
            raise Unauthorized("tid is not the publisher tenant")
        if claims.get("appid", claims.get("azp")) != MARKETPLACE_APP_ID:
            raise Unauthorized("the token was not issued to the Marketplace")
        return claims


class Webhook:
    def __init__(self, marketplace: AzureMarketplace, metering: Metering) -> None:
        self.marketplace = marketplace
        self.lifecycle = Lifecycle(marketplace.records, marketplace.onboarder, metering)

    def handle(self, notification: dict[str, Any]) -> Outcome:
        try:
            subscription_id, operation_id = str(notification["subscriptionId"]), str(notification["id"])
            action = str(notification["action"])
        except KeyError as err:
            raise InvalidInput("webhook", f"the notification has no {err.args[0]!r}") from None
        tenant = tenant_of(subscription_id)
        if notification.get("offerId") != self.marketplace.settings.offer_id:
            return Outcome(tenant, f"ignored: offer {notification.get('offerId')!r}")
        path = f"/api/saas/subscriptions/{subscription_id}/operations/{operation_id}"
        try:
            _, operation = self.marketplace.api.call("GET", path, "confirm the operation")
        except MarketplaceFailure as err:
            if "answered 404" in err.why:
                raise InvalidInput("webhook", f"the Marketplace knows no operation {operation_id}") from None
            raise
        record = self.marketplace.records.get(tenant)
        if record is None:
            return Outcome(tenant, "no purchase record (not registered yet)")
        if action in _ANSWERED_BY_US and operation.get("status") == "InProgress":
            plan_id = operation.get("planId") or record.plan_id
            plan = self.marketplace.plan_of(plan_id)
            if plan is None:
                self._answer(path, "Failure")
                return Outcome(tenant, f"refused: plan {plan_id!r} is not offered")
            self._answer(path, "Success")
            outcome = self.lifecycle.apply(tenant, record, plan)
            self.marketplace.records.update(tenant, lambda r: r.model_copy(update={"plan_id": plan_id}))
            return outcome
        return self.reconcile(tenant)

    def reconcile(self, tenant: str) -> Outcome:
        """Make `tenant` match its subscription's status and plan now."""
        record = self.marketplace.records.get(tenant)
        if record is None:
            return Outcome(tenant, "no purchase record")
        subscription = self.marketplace.subscription(record.subscription_id)
        outcome = self.lifecycle.apply(tenant, record, self.marketplace.entitled_plan(subscription))
        plan_id = subscription.get("planId")
        if plan_id and plan_id != record.plan_id and self.marketplace.plan_of(plan_id):
            self.marketplace.records.update(tenant, lambda r: r.model_copy(update={"plan_id": plan_id}))
        return outcome

    def _answer(self, path: str, status: str) -> None:
        self.marketplace.api.call("PATCH", path, f"answer the operation {status}", body={"status": status})
