"""AWS Marketplace SaaS fulfilment: a purchase becomes a tenant with the plan it is entitled to.

The buyer lands on the registration page with a token; ResolveCustomer turns it into the purchase's license
and account, GetEntitlements into a plan, and the onboarding code makes the tenant and its first key. Since
June 2026 new listings identify a purchase by `LicenseArn` and `CustomerAWSAccountId` (a buyer may hold several
concurrent agreements), so that is what this keys on; the legacy `CustomerIdentifier` is not used.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from marketplace.aws.records import CustomerRecord, records, tenant_of
from marketplace.aws.settings import AwsMarketplaceSettings
from marketplace.errors import MarketplaceFailure, NotEntitled
from marketplace.registration import Registration, register_purchase
from onboarding.errors import InvalidInput
from onboarding.plans import PLANS
from onboarding.tenants import Onboarder

_BAD_TOKEN = ("InvalidTokenException", "ExpiredTokenException")
# Client-side retries with backoff for throttling and 5xx; what still fails is reported, not swallowed.
_RETRIES = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20)


@dataclass(frozen=True)
class Purchase:
    license_arn: str
    aws_account_id: str
    product_code: str

    def ids(self) -> dict[str, str]:
        return {"license_arn": self.license_arn, "aws_account_id": self.aws_account_id}


class AwsMarketplace:
    """The listing's AWS side (metering and entitlement clients) and the tenants its purchases became."""

    def __init__(
        self, settings: AwsMarketplaceSettings, onboarder: Onboarder, session: boto3.session.Session | None = None
    ) -> None:
        self.settings = settings
        self.onboarder = onboarder
        self.records = records(onboarder.key_admin)
        self.boto = boto = session or boto3.session.Session(region_name=settings.region)
        self.metering = boto.client("meteringmarketplace", endpoint_url=settings.metering_endpoint_url, config=_RETRIES)
        self.entitlement = boto.client(
            "marketplace-entitlement", endpoint_url=settings.entitlement_endpoint_url, config=_RETRIES
        )

    def close(self) -> None:
        self.metering.close()
        self.entitlement.close()

    def register(self, token: str) -> Registration:
        """The tenant for the purchase behind `token`, created with its first key unless it exists already."""
        if not token.strip():
            raise InvalidInput("registration token", "is empty; AWS Marketplace posts it as x-amzn-marketplace-token")
        purchase = self.resolve(token.strip())
        plan = self.entitled_plan(purchase.license_arn)
        if plan is None:
            raise NotEntitled(
                "register purchase",
                "it holds no entitlement to a plan yet; AWS can take a few minutes after the purchase, so try the "
                "setup link again shortly",
            )
        tenant = tenant_of(purchase.license_arn)
        record = CustomerRecord(
            license_arn=purchase.license_arn,
            aws_account_id=purchase.aws_account_id,
            product_code=purchase.product_code,
            plan=plan,
            registered=dt.datetime.now(dt.UTC),
        )
        return register_purchase(self.records, self.onboarder, tenant, record, purchase.ids())

    def resolve(self, token: str) -> Purchase:
        try:
            reply = self.metering.resolve_customer(RegistrationToken=token)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in _BAD_TOKEN:
                raise InvalidInput(
                    "registration token",
                    f"AWS Marketplace refused it ({code}); open the product in the AWS Marketplace console and "
                    "choose 'Set up your account' again for a fresh one",
                ) from None
            raise api_failure("resolve the registration token", err) from None
        except BotoCoreError as err:
            raise api_failure("resolve the registration token", err) from None
        if reply.get("ProductCode") != self.settings.product_code:
            raise InvalidInput(
                "registration token",
                f"it is for product {reply.get('ProductCode')!r}, not this listing's {self.settings.product_code!r}",
            )
        if not reply.get("LicenseArn") or not reply.get("CustomerAWSAccountId"):
            raise MarketplaceFailure(
                "resolve the registration token",
                "the answer has no LicenseArn/CustomerAWSAccountId; the listing must use the concurrent-agreements "
                "integration (required for SaaS products since June 2026)",
            )
        return Purchase(reply["LicenseArn"], reply["CustomerAWSAccountId"], reply["ProductCode"])

    def entitled_plan(self, license_arn: str) -> str | None:
        """The highest plan the license is entitled to now, or None. Expired entitlements and dimensions we do
        not map are ignored; a contract dimension counts when its value is a positive quantity or true."""
        now = dt.datetime.now(dt.UTC)
        ranks = {plan: rank for rank, plan in enumerate(PLANS)}
        best: str | None = None
        for entitlement in self._entitlements(license_arn):
            plan = self.settings.plan_dimensions.get(entitlement.get("Dimension", ""))
            expires = entitlement.get("ExpirationDate")
            if plan is None or (expires is not None and expires <= now) or not _positive(entitlement.get("Value")):
                continue
            if best is None or ranks[plan] > ranks[best]:
                best = plan
        return best

    def _entitlements(self, license_arn: str) -> Iterator[dict[str, Any]]:
        request: dict[str, Any] = {"ProductCode": self.settings.product_code, "Filter": {"LICENSE_ARN": [license_arn]}}
        while True:
            try:
                reply = self.entitlement.get_entitlements(**request)
            except (ClientError, BotoCoreError) as err:
                raise api_failure("read the purchase's entitlements", err) from None
            yield from reply.get("Entitlements", [])
            if not reply.get("NextToken"):
                return
            request["NextToken"] = reply["NextToken"]


def _positive(value: dict[str, Any] | None) -> bool:
    if not value:
        return False
    if "BooleanValue" in value:
        return bool(value["BooleanValue"])
    number = value.get("IntegerValue", value.get("DoubleValue"))
    return number is None or number > 0  # a StringValue-only entitlement is a grant without a quantity


def api_failure(what: str, err: Exception) -> MarketplaceFailure:
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return MarketplaceFailure(what, f"AWS Marketplace said {error.get('Code', '?')}: {error.get('Message', '')}")
    return MarketplaceFailure(what, f"AWS Marketplace unreachable: {err}")
