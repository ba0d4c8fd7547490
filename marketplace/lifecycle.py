"""Making a marketplace tenant match what its buyer is entitled to now, for every cloud.

Each cloud works out the plan a purchase is entitled to (AWS: GetEntitlements; Azure: the subscription's
status and plan) and hands it here; `None` means nothing. Events only say when to look: applying the
marketplace's current answer is idempotent, so lost, repeated or reordered events cannot leave a tenant wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Generic

from marketplace.metering import UsageMeter
from marketplace.records import PurchaseRecords, RecordT, Subscription
from onboarding.tenants import Onboarder

log = logging.getLogger(__name__)


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
            final = self.meter.run(tenants=[tenant], final=True)  # inside the marketplace's final window
            if final.errors:
                log.error("final metering of %s: %s (left pending; `meter` retries it)", tenant, final.errors)
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

    def _set(self, tenant: str, **changes: Any) -> None:
        self.records.update(tenant, lambda r: r.model_copy(update=changes))
