"""Azure Marketplace SaaS fulfilment (Fulfillment API v2): a purchase becomes a tenant with its plan.

The buyer lands on the landing page with `?token=...`; `resolve` turns it into the SaaS subscription, its
offer and plan; the onboarding code makes the tenant and its first key; then the subscription is activated,
which is when Microsoft starts billing. If activation fails the tenant is removed again, so the buyer never
holds a key to something nobody pays for and can simply retry.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any

import requests
from azure.core.exceptions import AzureError
from azure.identity import CertificateCredential, ClientSecretCredential

from marketplace.azure.records import SubscriptionRecord, records, tenant_of
from marketplace.azure.settings import AzureMarketplaceSettings
from marketplace.errors import MarketplaceFailure, NotEntitled
from marketplace.registration import Registration, register_purchase
from onboarding.errors import InvalidInput
from onboarding.tenants import Onboarder

API_VERSION = "2018-08-31"
MARKETPLACE_APP_ID = "20e940b3-4c77-4b0b-9a53-9e16a1b010a7"  # the Marketplace API's own Entra app (its resource)
SCOPE = f"{MARKETPLACE_APP_ID}/.default"
# Statuses a subscription passes through; only these two may be set up.
_REGISTRABLE = ("PendingFulfillmentStart", "Subscribed")


class MarketplaceApi:
    """The Fulfillment and Metering APIs with the publisher app's token (azure-identity acquires and caches it)."""

    def __init__(self, settings: AzureMarketplaceSettings, credential: Any | None = None) -> None:
        self.settings = settings
        verify = str(settings.ca_file) if settings.ca_file else True
        self._credential = credential or _credential(settings, verify)
        self._http = requests.Session()
        self._http.trust_env = False  # REQUESTS_CA_BUNDLE or a proxy variable must not redirect billing calls
        self._http.verify = verify

    def call(
        self,
        method: str,
        path: str,
        what: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        ok_statuses: tuple[int, ...] = (200, 202),
    ) -> tuple[int, Any]:
        try:
            token = self._credential.get_token(SCOPE).token
        except AzureError as err:
            raise MarketplaceFailure(what, f"no token from Entra ID for the publisher app: {err}") from None
        request_headers = {
            "Authorization": f"Bearer {token}",
            "x-ms-requestid": str(uuid.uuid4()),
            "x-ms-correlationid": str(uuid.uuid4()),
            **(headers or {}),
        }
        url = f"{self.settings.api_url.rstrip('/')}{path}"
        try:
            reply = self._http.request(
                method, url, params={"api-version": API_VERSION}, json=body, headers=request_headers, timeout=30
            )
        except requests.RequestException as err:
            raise MarketplaceFailure(what, f"the Marketplace API is unreachable: {type(err).__name__}") from None
        payload = reply.json() if reply.content and "json" in reply.headers.get("content-type", "") else None
        if reply.status_code not in ok_statuses:
            raise MarketplaceFailure(what, f"the Marketplace API answered {reply.status_code}: {_message(payload)}")
        return reply.status_code, payload

    def close(self) -> None:
        self._http.close()


class AzureMarketplace:
    def __init__(
        self, settings: AzureMarketplaceSettings, onboarder: Onboarder, api: MarketplaceApi | None = None
    ) -> None:
        self.settings = settings
        self.onboarder = onboarder
        self.records = records(onboarder.key_admin)
        self.api = api or MarketplaceApi(settings)

    def close(self) -> None:
        self.api.close()

    def register(self, token: str) -> Registration:
        """The tenant for the subscription behind `token`, created and activated unless it exists already."""
        if not token.strip():
            raise InvalidInput("purchase token", "is empty; the Marketplace passes it as ?token= on the landing page")
        subscription = self.resolve(token.strip())
        plan = self.plan_of(subscription["planId"])
        status = subscription.get("saasSubscriptionStatus")
        if plan is None:
            raise NotEntitled("register subscription", f"plan {subscription['planId']!r} is not offered here")
        if status not in _REGISTRABLE:
            raise NotEntitled(
                "register subscription", f"it is {status}; reopen it in the Azure portal if it should be active"
            )
        subscription_id = subscription["id"]
        tenant = tenant_of(subscription_id)
        record = SubscriptionRecord(
            subscription_id=subscription_id,
            offer_id=subscription["offerId"],
            plan_id=subscription["planId"],
            plan=plan,
            registered=dt.datetime.now(dt.UTC),
        )
        return register_purchase(self.records, self.onboarder, tenant, record, _ids(subscription),
                                 activate=lambda: self._activate(subscription))

    def resolve(self, token: str) -> dict[str, Any]:
        """The subscription a landing-page token stands for; refused if it belongs to another offer."""
        try:
            _, reply = self.api.call(
                "POST",
                "/api/saas/subscriptions/resolve",
                "resolve the purchase token",
                headers={"x-ms-marketplace-token": token},
            )
        except MarketplaceFailure as err:
            if "answered 400" in err.why or "answered 403" in err.why:
                raise InvalidInput(
                    "purchase token",
                    "the Marketplace could not identify this purchase; reopen the SaaS subscription in the Azure "
                    "portal and select 'Configure account' again",
                ) from None
            raise
        subscription = dict(reply.get("subscription") or {})
        subscription.setdefault("id", reply.get("id"))
        subscription.setdefault("planId", reply.get("planId"))
        subscription.setdefault("offerId", reply.get("offerId"))
        if subscription["offerId"] != self.settings.offer_id:
            raise InvalidInput(
                "purchase token", f"it is for offer {subscription['offerId']!r}, not {self.settings.offer_id!r}"
            )
        return subscription

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        _, reply = self.api.call("GET", f"/api/saas/subscriptions/{subscription_id}", "read the subscription")
        return dict(reply or {})

    def plan_of(self, plan_id: str | None) -> str | None:
        return self.settings.plans.get(plan_id or "")

    def entitled_plan(self, subscription: dict[str, Any]) -> str | None:
        """The plan a subscription is entitled to now: Subscribed on a mapped plan; anything else is nothing."""
        if subscription.get("saasSubscriptionStatus") != "Subscribed":
            return None
        return self.plan_of(subscription.get("planId"))

    def _activate(self, subscription: dict[str, Any]) -> None:
        if subscription.get("saasSubscriptionStatus") == "Subscribed":
            return
        body = {"planId": subscription["planId"], "quantity": subscription.get("quantity")}
        self.api.call(
            "POST", f"/api/saas/subscriptions/{subscription['id']}/activate", "activate the subscription", body=body
        )


def _credential(settings: AzureMarketplaceSettings, verify: str | bool) -> Any:
    common: dict[str, Any] = {"authority": settings.authority, "disable_instance_discovery": True}
    if isinstance(verify, str):
        common["connection_verify"] = verify
    if os.environ.get("AZURE_CLIENT_CERTIFICATE_PATH"):
        return CertificateCredential(
            settings.tenant_id, settings.client_id, os.environ["AZURE_CLIENT_CERTIFICATE_PATH"], **common
        )
    secret = os.environ.get("AZURE_CLIENT_SECRET")
    if not secret:
        raise InvalidInput(
            "AZURE_CLIENT_SECRET", "set it (or AZURE_CLIENT_CERTIFICATE_PATH) to the publisher app's credential"
        )
    return ClientSecretCredential(settings.tenant_id, settings.client_id, secret, **common)


def _ids(subscription: dict[str, Any]) -> dict[str, str]:
    return {"subscription_id": subscription["id"], "offer_id": subscription["offerId"]}


def _message(payload: Any) -> str:
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("code") or error)
    return str(payload)[:200]
