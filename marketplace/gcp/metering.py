"""Google Cloud's half of metering (`marketplace/metering.py` has the exactly-once rest): Service Control, one
operation per entitlement and hour, charged to the entitlement's usage reporting id. Each operation is first
checked (`services.check`), as Google's usage-reporting guide asks, and only reported (`services.report`) if
the check finds nothing wrong.

Each operation's id is derived from the tenant and the hour, so a resend after a crash is the same operation
(Service Control de-duplicates by operation id) rather than a second charge."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from marketplace.gcp.fulfilment import GcpMarketplace
from marketplace.gcp.records import EntitlementRecord
from marketplace.metering import Answer, Batch, UsageMeter, utc_stamp
from marketplace.records import PendingUsage

log = logging.getLogger(__name__)

_OPERATIONS = uuid.UUID("6f1c3d0e-2b7a-4c55-9d1e-3a8f0b6c2e41")  # namespace of the derived operation ids
# Refusals that may pass (gRPC codes of a report error; check errors of a backend unavailable or a quota): the
# operation stays pending and is sent again. Every other refusal is for good: settled, reported as lost.
_RETRIED_CODES = (4, 8, 10, 13, 14)  # DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE
_RETRIED_CHECKS = ("RESOURCE_EXHAUSTED", "NAMESPACE_LOOKUP_UNAVAILABLE", "SERVICE_STATUS_UNAVAILABLE",
                   "BILLING_STATUS_UNAVAILABLE", "CLOUD_RESOURCE_MANAGER_BACKEND_UNAVAILABLE")


def operation_id(tenant: str, hour: dt.datetime) -> str:
    return str(uuid.uuid5(_OPERATIONS, f"{tenant}/{hour.astimezone(dt.UTC).isoformat()}"))


class ServiceControlReport:
    batch_size = 100

    def __init__(self, marketplace: GcpMarketplace) -> None:
        self.marketplace = marketplace

    def send(self, batch: Batch[EntitlementRecord]) -> dict[str, Answer]:
        settings = self.marketplace.settings
        service = f"{settings.servicecontrol_url.rstrip('/')}/v1/services/{settings.service_name}"
        answers: dict[str, Answer] = {}
        checked: dict[str, tuple[str, dict[str, Any]]] = {}  # operation id -> (tenant, operation)
        for tenant, record, usage in batch:
            operation = self._operation(tenant, record, usage)
            reply = self.marketplace.api.call("POST", f"{service}:check", "check usage",
                                              body={"operation": operation})
            codes = [str(error.get("code")) for error in reply.get("checkErrors", [])]
            if codes:
                log.warning("Service Control's check refused %s's usage: %s", tenant, ", ".join(codes))
                final = not set(codes) <= set(_RETRIED_CHECKS)
                answers[tenant] = Answer(", ".join(codes), settled=final, lost=final)
            else:
                checked[operation["operationId"]] = (tenant, operation)
        if not checked:
            return answers
        reply = self.marketplace.api.call("POST", f"{service}:report", "report usage",
                                          body={"operations": [op for _, op in checked.values()]})
        answers.update({tenant: Answer("Reported", settled=True) for tenant, _ in checked.values()})
        for error in reply.get("reportErrors", []):
            tenant = checked.get(error.get("operationId", ""), ("", {}))[0]
            if not tenant:
                continue
            status = error.get("status", {})
            code = int(status.get("code", 2))
            log.warning("Service Control refused %s's usage: %s", tenant, status.get("message"))
            answers[tenant] = Answer(f"Error {code}", settled=code not in _RETRIED_CODES,
                                     lost=code not in _RETRIED_CODES)
        return answers

    def _operation(self, tenant: str, record: EntitlementRecord, usage: PendingUsage) -> dict[str, Any]:
        """The same operation for the same pending record, so a resend is one Google already counted."""
        settings = self.marketplace.settings
        return {
            "operationId": operation_id(tenant, usage.timestamp),
            "operationName": "foresight.usage",
            "consumerId": record.usage_reporting_id,  # the entitlement's id as it is ("project_number:...")
            # [the previous report's end, this one's end): "In most cases, the startTime of a report Operation
            # should have the same value as the endTime of the previous report Operation."
            "startTime": utc_stamp(usage.start or usage.timestamp),
            "endTime": utc_stamp(usage.end or usage.timestamp + dt.timedelta(hours=1)),
            "metricValueSets": [
                {
                    "metricName": f"{settings.service_name}/{settings.usage_metric}",
                    "metricValues": [{"int64Value": str(usage.quantity)}],
                }
            ],
        }


class Metering(UsageMeter[EntitlementRecord]):
    def __init__(self, marketplace: GcpMarketplace) -> None:
        super().__init__(
            marketplace.records,
            marketplace.onboarder,
            marketplace.settings.requests_per_unit,
            ServiceControlReport(marketplace),
        )
