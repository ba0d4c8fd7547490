"""Making a marketplace tenant match what its buyer is entitled to now, for every cloud.

Each cloud works out the plan a purchase is entitled to (AWS: GetEntitlements; Azure: the subscription's
status and plan) and hands it here; `None` means nothing. Events only say when to look: applying the
marketplace's current answer is idempotent, so lost, repeated or reordered events cannot leave a tenant wrong.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Generic

from marketplace.metering import UsageMeter
from marketplace.records import PurchaseRecords, RecordT, Subscription
from onboarding.tenants import Onboarder

log = logging.getLogger(__name__)

_FINAL_RUNS = 3  # at most one older record can be pending, so two runs reach the final hour; one to spare


@dataclass(frozen=True)
class Outcome:
    tenant: str
    action: str  # unchanged, plan <p>, resumed, ended, or a combination


@dataclass(frozen=True)
class Handled:
    """One lifecycle message: what it was, what reconciling it did, or why it was left for redelivery."""

    message_id: str
    event: str  # the marketplace's event type
    outcomes: list[Outcome]
    error: str | None = None


class Lifecycle(Generic[RecordT]):
    def __init__(self, records: PurchaseRecords[RecordT], onboarder: Onboarder, meter: UsageMeter[RecordT]) -> None:
        self.records = records
        self.onboarder = onboarder
        self.meter = meter

    def apply(self, tenant: str, record: RecordT, plan: str | None) -> Outcome:
        """Entitled to `plan` (None: to nothing): change the plan, resume, or meter one last time and suspend."""
        if plan is None:
            if record.subscription is Subscription.ENDED:
                return Outcome(tenant, "unchanged")
            self._meter_final(tenant)
            self.onboarder.set_suspended(tenant, True)
            self._set(tenant, subscription=Subscription.ENDED)
            return Outcome(tenant, "ended")
        actions = []
        if plan != record.plan:
            self.onboarder.set_plan(tenant, plan)
            actions.append(f"plan {plan}")
        if record.subscription is Subscription.ENDED:
            self.onboarder.set_suspended(tenant, False)
            actions.append("resumed")
        if actions:
            self._set(tenant, plan=plan, subscription=Subscription.ACTIVE)
        return Outcome(tenant, ", ".join(actions) or "unchanged")

    def _meter_final(self, tenant: str) -> None:
        """Meter up to the end, inside the marketplace's final window. A run that finds an older record still
        pending only resends that one; once it is settled, run again for the final hour itself, or the usage
        after it would never be billed (no regular run meters an ended purchase)."""
        now = dt.datetime.now(dt.UTC)
        final_slot = now.replace(minute=0, second=0, microsecond=0)
        for _ in range(_FINAL_RUNS):
            report = self.meter.run(now=now, tenants=[tenant], final=True)
            record = self.records.get(tenant)
            if record is None or record.pending is not None:
                log.error("final metering of %s: %s (left pending; `meter` retries it)", tenant,
                          report.errors or "not confirmed")
                return
            if report.errors:  # settled all the same (a record too old to bill, already logged): go on
                log.error("final metering of %s: %s", tenant, report.errors)
            if not report.metered or (record.last_metered is not None and record.last_metered >= final_slot):
                return  # the final hour is metered, or there was nothing to meter
        log.error("final metering of %s did not reach the hour from %s", tenant, f"{final_slot:%H:%M}")

    def _set(self, tenant: str, **changes: Any) -> None:
        self.records.update(tenant, lambda r: r.model_copy(update=changes))
