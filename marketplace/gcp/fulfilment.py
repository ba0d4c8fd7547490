"""Google Cloud Marketplace SaaS fulfilment (Partner Procurement API): a purchase becomes a tenant.

The buyer is sent to the sign-up URL with a JWT that Google signs (`x-gcp-marketplace-token`); its `sub` is the
buyer's Procurement account. Sign-up verifies the JWT, approves the account, finds the account's entitlement
(the order), makes the tenant with that plan and approves the entitlement, which starts Google's billing. If
that approval fails the tenant is removed again, so nobody holds a key to an order that is not active.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import google.auth
import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.exceptions import GoogleAuthError
from google.auth.transport.requests import AuthorizedSession, Request

from marketplace.errors import MarketplaceFailure, NotEntitled
from marketplace.gcp.records import EntitlementRecord, records, tenant_of
from marketplace.gcp.settings import GcpMarketplaceSettings
from marketplace.registration import Registration, register_purchase
from onboarding.errors import InvalidInput
from onboarding.tenants import Onboarder

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Entitlement states that can be set up now; every other state is answered by the lifecycle.
_REGISTRABLE = ("ENTITLEMENT_ACTIVATION_REQUESTED", "ENTITLEMENT_ACTIVE")
# States in which the buyer keeps the plan they have (a cancellation takes effect at the end of the term).
_SERVING = (
    "ENTITLEMENT_ACTIVE",
    "ENTITLEMENT_PENDING_CANCELLATION",
    "ENTITLEMENT_PENDING_PLAN_CHANGE",
    "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL",
)


class GoogleApis:
    """Procurement, Pub/Sub and Service Control with the provider's service account (google-auth)."""

    def __init__(self, settings: GcpMarketplaceSettings, credentials: Any | None = None) -> None:
        self.settings = settings
        verify: str | bool = str(settings.ca_file) if settings.ca_file else True
        token_http = requests.Session()
        token_http.trust_env = False  # else REQUESTS_CA_BUNDLE would override `verify` (and proxies apply)
        token_http.verify = verify
        try:
            credentials = credentials or google.auth.default(scopes=[SCOPE])[0]
        except GoogleAuthError as err:
            raise InvalidInput("GOOGLE_APPLICATION_CREDENTIALS", f"no provider credentials: {err}") from None
        self._http = AuthorizedSession(credentials, auth_request=Request(token_http))
        self._plain = requests.Session()  # the sign-up JWT's public certificates need no credentials
        for session in (self._http, self._plain):
            session.trust_env = False
            session.verify = verify

    def call(self, method: str, url: str, what: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        try:
            reply = self._http.request(method, url, json=body, params=params, timeout=30)
        except (requests.RequestException, GoogleAuthError) as err:
            raise MarketplaceFailure(what, f"Google's API unreachable or refused the credentials: {err}") from None
        if reply.status_code >= 300:
            raise MarketplaceFailure(what, f"Google answered {reply.status_code}: {_message(reply)}")
        return reply.json() if reply.content else {}

    def certificates(self) -> dict[str, str]:
        try:
            reply = self._plain.get(self.settings.certs_url, timeout=10)
            reply.raise_for_status()
        except requests.RequestException as err:
            raise MarketplaceFailure("verify the sign-up token", f"Google's signing certificates: {err}") from None
        return dict(reply.json())

    def close(self) -> None:
        self._http.close()
        self._plain.close()


class GcpMarketplace:
    def __init__(self, settings: GcpMarketplaceSettings, onboarder: Onboarder, api: GoogleApis | None = None) -> None:
        self.settings = settings
        self.onboarder = onboarder
        self.records = records(onboarder.key_admin)
        self.api = api or GoogleApis(settings)
        self._provider = f"{settings.procurement_url.rstrip('/')}/v1/providers/{settings.provider_id}"

    def close(self) -> None:
        self.api.close()

    @property
    def product(self) -> str:
        """The listing's product; InvalidInput naming the variable when it is not set (only sign-up needs it)."""
        if not self.settings.product:
            raise InvalidInput("FORESIGHT_GCP_MP_PRODUCT", "is not set; sign-up sets up only that product's orders "
                                                           "(the listing's product name in Producer Portal)")
        return self.settings.product

    def register(self, token: str) -> Registration:
        """The tenant for the order behind a sign-up token, created and approved unless it exists already."""
        product = self.product
        account_id = self.verify(token)
        self._approve_account(account_id)
        entitlement = self._pending_entitlement(account_id, product)
        plan = self.plan_of(entitlement["plan"])
        if plan is None:
            raise NotEntitled("register order", f"plan {entitlement['plan']!r} is not offered here")
        entitlement_id = entitlement["name"].rsplit("/", 1)[-1]
        tenant = tenant_of(entitlement_id)
        purchase = {"account_id": account_id, "entitlement_id": entitlement_id}
        record = EntitlementRecord(
            entitlement_id=entitlement_id,
            account_id=account_id,
            plan_id=entitlement["plan"],
            plan=plan,
            usage_reporting_id=entitlement.get("usageReportingId", ""),
            registered=dt.datetime.now(dt.UTC),
        )
        return register_purchase(self.records, self.onboarder, tenant, record, purchase,
                                 activate=lambda: self._approve_entitlement(entitlement))

    def verify(self, token: str) -> str:
        """The Procurement account id in a sign-up JWT; InvalidInput unless Google signed it for this listing."""
        if not token.strip():
            raise InvalidInput("sign-up token", "is empty; Google posts it as x-gcp-marketplace-token")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            certificate = self.api.certificates().get(kid or "")
            if certificate is None:
                raise jwt.InvalidTokenError(f"no Google certificate with key id {kid!r}")
            key = x509.load_pem_x509_certificate(certificate.encode()).public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise jwt.InvalidTokenError("Google's certificate does not hold an RSA key")
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self.settings.signup_audience,
                issuer=self.settings.certs_url,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.PyJWTError as err:
            raise InvalidInput(
                "sign-up token",
                f"rejected ({err}); open the product in the Google Cloud console and choose 'Sign up' again",
            ) from None
        return str(claims["sub"])

    def entitlement(self, entitlement_id: str) -> dict[str, Any]:
        return dict(self.api.call("GET", f"{self._provider}/entitlements/{entitlement_id}", "read the entitlement"))

    def plan_of(self, plan_id: str | None) -> str | None:
        return self.settings.plans.get(plan_id or "")

    def entitled_plan(self, entitlement: dict[str, Any]) -> str | None:
        """The plan an entitlement is entitled to now: its plan while it serves; nothing once cancelled or
        suspended."""
        if entitlement.get("state") not in _SERVING:
            return None
        return self.plan_of(entitlement.get("plan"))

    def approve_plan_change(self, entitlement: dict[str, Any], approve: bool) -> None:
        name = entitlement["name"].rsplit("/", 1)[-1]
        if approve:
            self.api.call(
                "POST",
                f"{self._provider}/entitlements/{name}:approvePlanChange",
                "approve the plan change",
                body={"pendingPlanName": entitlement["newPendingPlan"]},
            )
        else:
            self.api.call(
                "POST",
                f"{self._provider}/entitlements/{name}:rejectPlanChange",
                "reject the plan change",
                body={
                    "pendingPlanName": entitlement["newPendingPlan"],
                    "reason": "this plan is not offered by the service",
                },
            )

    def _approve_account(self, account_id: str) -> None:
        account = self.api.call("GET", f"{self._provider}/accounts/{account_id}", "read the account")
        if account.get("state") != "ACCOUNT_ACTIVE":
            self.api.call(
                "POST",
                f"{self._provider}/accounts/{account_id}:approve",
                "approve the account",
                body={"approvalName": "signup"},
            )

    def _pending_entitlement(self, account_id: str, product: str) -> dict[str, Any]:
        """The order of this product to set up: one awaiting activation first (an account may buy again after its
        first order is active), else an active one (a repeated sign-up)."""
        entitlements = self._entitlements(f"account={account_id} AND productExternalName={product}")
        for state in _REGISTRABLE:
            for entitlement in entitlements:
                if entitlement.get("state") == state:
                    return dict(entitlement)
        raise NotEntitled(
            "register order",
            "the account has no order to set up yet; Google can take a few "
            "minutes after the purchase, so try the sign-up link again shortly",
        )

    def _entitlements(self, query: str) -> list[dict[str, Any]]:
        """Every entitlement the filter matches, page after page."""
        found: list[dict[str, Any]] = []
        params = {"filter": query}
        while True:
            reply = self.api.call("GET", f"{self._provider}/entitlements", "list the account's entitlements",
                                  params=params)
            found += reply.get("entitlements", [])
            if not reply.get("nextPageToken"):
                return found
            params = {"filter": query, "pageToken": str(reply["nextPageToken"])}

    def _approve_entitlement(self, entitlement: dict[str, Any]) -> None:
        if entitlement.get("state") == "ENTITLEMENT_ACTIVATION_REQUESTED":
            name = entitlement["name"].rsplit("/", 1)[-1]
            self.api.call("POST", f"{self._provider}/entitlements/{name}:approve", "approve the entitlement", body={})


def _message(reply: requests.Response) -> str:
    try:
        error = reply.json().get("error", {})
        return str(error.get("message") or error)
    except ValueError:
        return reply.text[:200]
