"""Google Cloud's half of metering (`marketplace/metering.py` has the exactly-once rest): Service Control
`services.report`, one operation per entitlement and hour, charged to the entitlement's usage reporting id.

Each operation's id is derived from the tenant and the hour, so a resend after a crash is the same operation
(Service Control de-duplicates by operation id) rather than a second charge."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from marketplace.gcp.fulfilment import GcpMarketplace
from marketplace.gcp.records import EntitlementRecord
from marketplace.metering import Answer, Batch, UsageMeter

log = logging.getLogger(__name__)

_OPERATIONS = uuid.UUID("6f1c3d0e-2b7a-4c55-9d1e-3a8f0b6c2e41")  # namespace of the derived operation ids
# Errors that will never succeed (the consumer is gone or no longer entitled): settled, logged.
_FINAL_CODES = (5, 7)  # NOT_FOUND, PERMISSION_DENIED


def operation_id(tenant: str, hour: dt.datetime) -> str:
    return str(uuid.uuid5(_OPERATIONS, f"{tenant}/{hour.astimezone(dt.UTC).isoformat()}"))


class ServiceControlReport:
    batch_size = 100

    def __init__(self, marketplace: GcpMarketplace) -> None:
        self.marketplace = marketplace

    def send(self, batch: Batch[EntitlementRecord]) -> dict[str, Answer]:
        settings = self.marketplace.settings
        ids = {operation_id(tenant, usage.timestamp): tenant for tenant, _, usage in batch}
        operations = [
            {
                "operationId": operation_id(tenant, usage.timestamp),
                "operationName": "foresight.usage",
                "consumerId": f"project:{record.usage_reporting_id}",
                # An instant at the start of the hour: the hour it bills, and the same on every resend.
                "startTime": _stamp(usage.timestamp),
                "endTime": _stamp(usage.timestamp),
                "metricValueSets": [
                    {
                        "metricName": f"{settings.service_name}/{settings.usage_metric}",
                        "metricValues": [{"int64Value": str(usage.quantity)}],
                    }
                ],
            }
            for tenant, record, usage in batch
        ]
        url = f"{settings.servicecontrol_url.rstrip('/')}/v1/services/{settings.service_name}:report"
        reply = self.marketplace.api.call("POST", url, "report usage", body={"operations": operations})
        answers = {tenant: Answer("Reported", settled=True) for tenant in ids.values()}
        for error in reply.get("reportErrors", []):
            tenant = ids.get(error.get("operationId", ""))
            if tenant is None:
                continue
            status = error.get("status", {})
            code = int(status.get("code", 2))
            log.warning("Service Control refused %s's usage: %s", tenant, status.get("message"))
            answers[tenant] = Answer(f"Error {code}", settled=code in _FINAL_CODES)
        return answers


class Metering(UsageMeter[EntitlementRecord]):
    def __init__(self, marketplace: GcpMarketplace) -> None:
        super().__init__(
            marketplace.records,
            marketplace.onboarder,
            marketplace.settings.requests_per_unit,
            ServiceControlReport(marketplace),
        )


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
