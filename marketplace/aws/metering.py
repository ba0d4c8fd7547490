"""Hourly usage to AWS Marketplace (BatchMeterUsage): each purchase's reads, in units, billed exactly once.

The service counts each tenant's reads (hits + misses) since it started. Each run turns the growth of that
counter since the last confirmed record into whole units, carrying the remainder. A record is first written
to the purchase's Vault record as *pending*, then sent, then confirmed; a pending record is resent unchanged
until AWS confirms it (BatchMeterUsage is idempotent for identical records), so a crash at any point neither
loses nor double-bills an hour. A counter that went down means the service restarted: its new value is all
new usage (reads between the last run and the restart are the one thing that cannot be recovered).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from marketplace.aws.fulfilment import AwsMarketplace, api_failure
from marketplace.aws.records import CustomerRecord, PendingUsage, Subscription
from onboarding.errors import OnboardingError, ServiceFailure

log = logging.getLogger(__name__)

BATCH = 25  # BatchMeterUsage's limit per call
_CONFIRMED = ("Success", "DuplicateRecord")


@dataclass(frozen=True)
class Metered:
    tenant: str
    timestamp: dt.datetime
    quantity: int
    status: str  # Success, DuplicateRecord, CustomerNotSubscribed, or Unprocessed (resent next run)


@dataclass
class MeteringReport:
    metered: list[Metered] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # tenant -> why
    errors: list[str] = field(default_factory=list)


class Metering:
    def __init__(self, marketplace: AwsMarketplace) -> None:
        self.marketplace = marketplace
        self.records = marketplace.records
        self.settings = marketplace.settings

    def run(
        self, now: dt.datetime | None = None, tenants: Iterable[str] | None = None, final: bool = False
    ) -> MeteringReport:
        """Meter every purchase (or `tenants`) once for the current hour. `final` meters now even if this hour
        was metered already: the last record before an entitlement ends."""
        now = now or dt.datetime.now(dt.UTC)
        report = MeteringReport()
        usage = self._usage()
        pending: list[tuple[str, CustomerRecord, PendingUsage]] = []
        for tenant in tenants if tenants is not None else self.records.tenants():
            record = self.records.get(tenant)
            if record is None:
                report.skipped[tenant] = "no purchase record"
                continue
            prepared = self._prepare(tenant, record, usage.get(tenant), now, final, report)
            if prepared is not None:
                pending.append((tenant, record, prepared))
        for start in range(0, len(pending), BATCH):
            self._send(pending[start:start + BATCH], report)
        return report

    def _usage(self) -> dict[str, int]:
        admin = self.marketplace.onboarder.admin
        if admin is None:
            raise ServiceFailure("meter usage", "needs the service's admin API: set FORESIGHT_ADMIN_URL and "
                                 "FORESIGHT_ADMIN_TOKEN")
        return {t["name"]: int(t.get("hits", 0)) + int(t.get("misses", 0)) for t in admin.list_tenants()}

    def _prepare(
        self, tenant: str, record: CustomerRecord, counter: int | None, now: dt.datetime, final: bool,
        report: MeteringReport,
    ) -> PendingUsage | None:
        if record.pending is not None:
            return record.pending  # sent before but never confirmed: the very same record again
        hour = now.replace(minute=0, second=0, microsecond=0)
        if record.subscription is Subscription.ENDED:
            report.skipped[tenant] = "subscription ended"
            return None
        if not final and record.last_metered is not None and record.last_metered >= hour:
            report.skipped[tenant] = "already metered this hour"
            return None
        if counter is None:
            report.skipped[tenant] = "the service does not serve this tenant (suspended or not loaded)"
            return None
        grown = counter - record.requests_seen if counter >= record.requests_seen else counter
        quantity, remainder = divmod(record.unbilled_requests + grown, self.settings.requests_per_unit)
        timestamp = now.replace(microsecond=0) if final else hour
        prepared = PendingUsage(timestamp=timestamp, quantity=quantity, requests_seen=counter, remainder=remainder)

        def stage(current: CustomerRecord) -> CustomerRecord:
            return current if current.pending is not None else current.model_copy(update={"pending": prepared})

        staged = self.records.update(tenant, stage)
        return staged.pending  # another run's staged record if it won the race: that one is sent

    def _send(self, batch: list[tuple[str, CustomerRecord, PendingUsage]], report: MeteringReport) -> None:
        by_key = {(record.license_arn, usage.timestamp): (tenant, usage) for tenant, record, usage in batch}
        records = [
            {
                "Timestamp": usage.timestamp,
                "CustomerAWSAccountId": record.aws_account_id,
                "LicenseArn": record.license_arn,
                "Dimension": self.settings.usage_dimension,
                "Quantity": usage.quantity,
            }
            for _, record, usage in batch
        ]
        try:
            reply = self.marketplace.metering.batch_meter_usage(UsageRecords=records)
        except (ClientError, BotoCoreError) as err:
            report.errors.append(f"{api_failure('BatchMeterUsage', err)} ({len(batch)} records stay pending)")
            return
        for result in reply.get("Results", []):
            sent = result.get("UsageRecord", {})
            key = (sent.get("LicenseArn"), _utc(sent.get("Timestamp")))
            if key not in by_key:
                report.errors.append(f"BatchMeterUsage answered for a record it was not sent: {key}")
                continue
            tenant, usage = by_key.pop(key)
            status = str(result.get("Status"))
            self._confirm(tenant, usage, status, report)
        for tenant, usage in by_key.values():  # in UnprocessedRecords, or not answered at all
            report.metered.append(Metered(tenant, usage.timestamp, usage.quantity, "Unprocessed"))

    def _confirm(self, tenant: str, usage: PendingUsage, status: str, report: MeteringReport) -> None:
        if status not in _CONFIRMED:
            log.warning("AWS did not bill %s's usage at %s: %s", tenant, usage.timestamp, status)

        def commit(current: CustomerRecord) -> CustomerRecord:
            if current.pending != usage:
                return current  # confirmed by another run already
            return current.model_copy(update={
                "requests_seen": usage.requests_seen, "unbilled_requests": usage.remainder,
                "last_metered": usage.timestamp, "pending": None,
            })

        try:
            self.records.update(tenant, commit)
        except OnboardingError as err:  # stays pending: resent (identically, so not billed twice) next run
            report.errors.append(str(err))
        report.metered.append(Metered(tenant, usage.timestamp, usage.quantity, status))


def _utc(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
