"""Azure's half of metering (`marketplace/metering.py` has the exactly-once rest): the batch usage event API,
25 events a call, one event per subscription, dimension and hour. Azure refuses a quantity of zero, so an hour
without a whole unit is settled without a call (its reads carry over, as any remainder does)."""

from __future__ import annotations

import datetime as dt
import logging

from marketplace.azure.fulfilment import AzureMarketplace
from marketplace.azure.records import SubscriptionRecord
from marketplace.metering import Answer, Batch, UsageMeter, utc_stamp

log = logging.getLogger(__name__)

# Accepted, or already accepted (a resend after a crash: the event of that hour is ours).
_BILLED = ("Accepted", "Duplicate")
# Never will be: over 24 hours old, a subscription gone or not ours, a quantity Azure refuses. The buyer did
# consume that usage, so each is reported as lost. Any other status (InvalidDimension: the offer's dimensions
# are set up wrong; Error) stays pending and reported: fixed, the same event is billed.
_LOST = ("Expired", "ResourceNotFound", "ResourceNotAuthorized", "InvalidQuantity")


class BatchUsageEvent:
    batch_size = 25

    def __init__(self, marketplace: AzureMarketplace) -> None:
        self.marketplace = marketplace

    def send(self, batch: Batch[SubscriptionRecord]) -> dict[str, Answer]:
        answers = {tenant: Answer("NothingToReport", settled=True) for tenant, _, usage in batch if not usage.quantity}
        due = [(tenant, record, usage) for tenant, record, usage in batch if usage.quantity]
        if not due:
            return answers
        tenants: dict[tuple[str, str | None], str] = {
            (record.subscription_id, utc_stamp(usage.timestamp)): tenant for tenant, record, usage in due
        }
        events = [
            {
                "resourceId": record.subscription_id,
                "quantity": usage.quantity,
                "dimension": self.marketplace.settings.usage_dimension,
                "effectiveStartTime": utc_stamp(usage.timestamp),
                "planId": record.plan_id,
            }
            for _, record, usage in due
        ]
        _, reply = self.marketplace.api.call("POST", "/api/batchUsageEvent", "report usage", body={"request": events})
        for result in (reply or {}).get("result", []):
            tenant = tenants.get((result.get("resourceId"), _stamp_text(result.get("effectiveStartTime"))))
            if tenant is None:
                log.error("the usage API answered for an event it was not sent: %s", result.get("resourceId"))
                continue
            status = str(result.get("status"))
            if status != "Accepted":
                log.warning("Azure answered %s for %s's usage at %s", status, tenant, result.get("effectiveStartTime"))
            answers[tenant] = Answer(status, settled=status in _BILLED + _LOST, lost=status in _LOST)
        return answers


class Metering(UsageMeter[SubscriptionRecord]):
    def __init__(self, marketplace: AzureMarketplace) -> None:
        super().__init__(
            marketplace.records,
            marketplace.onboarder,
            marketplace.settings.requests_per_unit,
            BatchUsageEvent(marketplace),
        )


def _stamp_text(text: object) -> str | None:
    """The API echoes the time in its own format; compare as instants."""
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return utc_stamp(moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC))
