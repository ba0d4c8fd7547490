"""A FAKE of AWS Marketplace's Metering (ResolveCustomer, BatchMeterUsage) and Entitlement (GetEntitlements) APIs,
built from their published contract, because no runnable implementation of them exists here: moto has no
ResolveCustomer or GetEntitlements, and its BatchMeterUsage takes only the deprecated CustomerIdentifier (a record
with CustomerAWSAccountId and LicenseArn, which new listings must send since June 2026, fails in moto 5.2.5 with a
KeyError).

The contract it follows: the operations' shapes in botocore's service models (meteringmarketplace 2016-01-14 and
marketplace-entitlement 2017-01-11, both spoken as AWS JSON 1.1 by this botocore), and the API reference's
documented behaviour: InvalidTokenException and ExpiredTokenException; at most 25 records a call; records 6 hours
old or more refused with TimestampOutOfBoundsException ("Usage records aren't accepted 6 hours or more after an
event"); a record identical to an earlier one is idempotent (Success again, the same MeteringRecordId); same
purchase, dimension and time with another quantity is DuplicateRecord; a purchase that is not subscribed is
CustomerNotSubscribed; after a license is deprovisioned usage is accepted for one more hour; a record of a license
that is not valid, or stamped before the second of the license's activation, fails the whole call with
InvalidLicenseException (botocore's model: "Ensure the LicenseArn is valid, matches the customer, and usage is
within the license activation period"). Everything it was sent is kept in `calls` for tests to read.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.servers import http_server

FINAL_WINDOW = dt.timedelta(hours=1)
ACCEPTED_FOR = dt.timedelta(hours=6)  # BatchMeterUsage's API reference


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class Purchase:
    license_arn: str
    account_id: str
    product_code: str
    entitlements: list[dict[str, Any]] = field(default_factory=list)
    deprovisioned: dt.datetime | None = None
    activated: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    valid: bool = True  # False: the license is not valid (InvalidLicenseException for its records)


@dataclass
class MarketplaceFake:
    product_code: str
    dimensions: set[str]
    purchases: dict[str, Purchase] = field(default_factory=dict)  # license ARN -> purchase
    tokens: dict[str, str] = field(default_factory=dict)  # registration token -> license ARN
    expired_tokens: set[str] = field(default_factory=set)
    metered: dict[tuple[str, str, dt.datetime], tuple[int, str]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_next: list[ApiError] = field(default_factory=list)  # raised by the next calls, one each
    unprocessed_next: int = 0  # the next N records come back in UnprocessedRecords
    endpoint: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- what a test sets up ---------------------------------------------------------------------------------

    def purchase(self, account_id: str, plan_dimension: str, quantity: int = 1) -> tuple[str, str]:
        """A new purchase entitled to `plan_dimension`; returns (registration token, license ARN)."""
        license_arn = f"arn:aws:license-manager::294406891311:license:l-{uuid.uuid4().hex}"
        self.purchases[license_arn] = Purchase(license_arn, account_id, self.product_code)
        self.entitle(license_arn, plan_dimension, quantity)
        token = "regtoken-" + uuid.uuid4().hex
        self.tokens[token] = license_arn
        return token, license_arn

    def entitle(self, license_arn: str, dimension: str, quantity: int = 1,
                expires: dt.datetime | None = None) -> None:
        purchase = self.purchases[license_arn]
        purchase.entitlements = [{"Dimension": dimension, "Value": {"IntegerValue": quantity},
                                  "ExpirationDate": expires or dt.datetime.now(dt.UTC) + dt.timedelta(days=365)}]
        purchase.deprovisioned = None

    def deprovision(self, license_arn: str) -> None:
        purchase = self.purchases[license_arn]
        purchase.entitlements = []
        purchase.deprovisioned = dt.datetime.now(dt.UTC)

    def usage(self, license_arn: str) -> list[int]:
        """The quantities billed to a license, in time order."""
        ordered = sorted(self.metered.items(), key=lambda item: item[0][2])
        return [quantity for (arn, _, _), (quantity, _) in ordered if arn == license_arn]

    # -- the operations --------------------------------------------------------------------------------------

    def resolve_customer(self, request: dict[str, Any]) -> dict[str, Any]:
        token = request.get("RegistrationToken")
        if token in self.expired_tokens:
            raise ApiError("ExpiredTokenException", "Registration token is expired")
        if token not in self.tokens:
            raise ApiError("InvalidTokenException", "Registration token is invalid")
        purchase = self.purchases[self.tokens[token]]
        # New integrations get no CustomerIdentifier (ResolveCustomer's reference, 2026).
        return {"ProductCode": purchase.product_code, "CustomerAWSAccountId": purchase.account_id,
                "LicenseArn": purchase.license_arn}

    def get_entitlements(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("ProductCode") != self.product_code:
            raise ApiError("InvalidParameterException", "Unknown product code")
        wanted = set(request.get("Filter", {}).get("LICENSE_ARN", []))
        found = [
            {"ProductCode": p.product_code, "CustomerAWSAccountId": p.account_id, "LicenseArn": p.license_arn, **e}
            for p in self.purchases.values() if not wanted or p.license_arn in wanted for e in p.entitlements
        ]
        start = int(request.get("NextToken") or 0)
        page = 1  # one per page, so callers that ignore NextToken miss entitlements and fail their tests
        reply: dict[str, Any] = {"Entitlements": found[start:start + page]}
        if start + page < len(found):
            reply["NextToken"] = str(start + page)
        return reply

    def batch_meter_usage(self, request: dict[str, Any]) -> dict[str, Any]:
        records = request.get("UsageRecords", [])
        if not 1 <= len(records) <= 25:
            raise ApiError("ValidationException", "UsageRecords must hold 1 to 25 records")
        now = dt.datetime.now(dt.UTC)
        for record in records:
            if record.get("Dimension") not in self.dimensions:
                raise ApiError("InvalidUsageDimensionException", f"unknown dimension {record.get('Dimension')}")
            if ("CustomerIdentifier" in record) == ("CustomerAWSAccountId" in record):
                raise ApiError("ValidationException", "give exactly one of CustomerIdentifier, CustomerAWSAccountId")
            if now - _time(record["Timestamp"]) >= ACCEPTED_FOR or _time(record["Timestamp"]) > now:
                raise ApiError("TimestampOutOfBoundsException", "Timestamp out of bounds")
            purchase = self.purchases.get(record.get("LicenseArn", ""))
            before = purchase is not None and _time(record["Timestamp"]) < purchase.activated.replace(microsecond=0)
            if purchase is not None and (not purchase.valid or before):
                raise ApiError("InvalidLicenseException", f"license {purchase.license_arn} is not valid for "
                                                          "this record or it is outside its activation period")
        results, unprocessed = [], []
        for record in records:
            if self.unprocessed_next > 0:
                self.unprocessed_next -= 1
                unprocessed.append(record)
                continue
            results.append(self._meter(record, now))
        return {"Results": results, "UnprocessedRecords": unprocessed}

    def _meter(self, record: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
        purchase = self.purchases.get(record.get("LicenseArn", ""))
        subscribed = purchase is not None and purchase.account_id == record["CustomerAWSAccountId"] and (
            purchase.entitlements or (purchase.deprovisioned and now - purchase.deprovisioned < FINAL_WINDOW))
        key = (record.get("LicenseArn", ""), record["Dimension"], _time(record["Timestamp"]))
        if not subscribed:
            return {"UsageRecord": record, "Status": "CustomerNotSubscribed"}
        if key in self.metered:
            quantity, record_id = self.metered[key]
            status = "Success" if quantity == record.get("Quantity", 0) else "DuplicateRecord"
            return {"UsageRecord": record, "MeteringRecordId": record_id, "Status": status}
        record_id = uuid.uuid4().hex
        self.metered[key] = (record.get("Quantity", 0), record_id)
        return {"UsageRecord": record, "MeteringRecordId": record_id, "Status": "Success"}

    def call(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append((operation, request))
            if self.fail_next:
                raise self.fail_next.pop(0)
            handler = {"ResolveCustomer": self.resolve_customer, "GetEntitlements": self.get_entitlements,
                       "BatchMeterUsage": self.batch_meter_usage}.get(operation)
            if handler is None:
                raise ApiError("UnknownOperationException", f"{operation} is not faked")
            return handler(request)


def _time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(float(value), dt.UTC)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _answer(fake: MarketplaceFake, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    service, _, operation = headers.get("X-Amz-Target", "").partition(".")
    try:
        if method != "POST" or service not in ("AWSMPMeteringService", "AWSMPEntitlementService"):
            raise ApiError("UnknownOperationException", f"not an AWS Marketplace JSON 1.1 call: {method} {path}")
        request = json.loads(body or b"{}")
        if request.get("UsageRecords"):
            request["UsageRecords"] = [{**r, "Timestamp": _time(r["Timestamp"])} for r in request["UsageRecords"]]
        return 200, json.dumps(_jsonable(fake.call(operation, request)))
    except ApiError as err:
        return err.status, json.dumps({"__type": err.code, "message": err.message})


@contextmanager
def marketplace_fake(product_code: str, dimensions: set[str]) -> Iterator[MarketplaceFake]:
    fake = MarketplaceFake(product_code, dimensions)
    with http_server(lambda *request: _answer(fake, *request)) as url:
        fake.endpoint = url
        yield fake
