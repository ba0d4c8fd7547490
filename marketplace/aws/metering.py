"""AWS's half of metering (`marketplace/metering.py` has the exactly-once rest): BatchMeterUsage, 25 records a
call, each record naming the purchase by `LicenseArn` and `CustomerAWSAccountId`."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from marketplace.aws.fulfilment import AwsMarketplace, api_failure
from marketplace.aws.records import CustomerRecord
from marketplace.metering import Answer, Batch, UsageMeter

log = logging.getLogger(__name__)

# Billed, or already billed (an identical record); CustomerNotSubscribed will never be billed: settled too.
_SETTLED = ("Success", "DuplicateRecord", "CustomerNotSubscribed")
_OUT_OF_BOUNDS = "TimestampOutOfBoundsException"
# A record refused alone for its time and stamped this long ago is too old (not ahead of AWS's clock): lost.
_TOO_OLD = dt.timedelta(hours=1)


class BatchMeterUsage:
    batch_size = 25  # the API's limit per call

    def __init__(self, marketplace: AwsMarketplace) -> None:
        self.marketplace = marketplace

    def send(self, batch: Batch[CustomerRecord]) -> dict[str, Answer]:
        tenants: dict[tuple[str, dt.datetime | None], str] = {
            (record.license_arn, usage.timestamp): tenant for tenant, record, usage in batch
        }
        records = [
            {
                "Timestamp": usage.timestamp,
                "CustomerAWSAccountId": record.aws_account_id,
                "LicenseArn": record.license_arn,
                "Dimension": self.marketplace.settings.usage_dimension,
                "Quantity": usage.quantity,
            }
            for _, record, usage in batch
        ]
        try:
            reply = self.marketplace.metering.batch_meter_usage(UsageRecords=records)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != _OUT_OF_BOUNDS:
                raise api_failure("BatchMeterUsage", err) from None
            return self._out_of_bounds(batch, err)
        except BotoCoreError as err:
            raise api_failure("BatchMeterUsage", err) from None
        answers = {}
        for result in reply.get("Results", []):  # UnprocessedRecords get no answer: resent next run
            sent = result.get("UsageRecord", {})
            tenant = tenants.get((sent.get("LicenseArn"), _utc(sent.get("Timestamp"))))
            if tenant is None:
                log.error("BatchMeterUsage answered for a record it was not sent: %s", sent.get("LicenseArn"))
                continue
            status = str(result.get("Status"))
            if status != "Success":
                log.warning("AWS answered %s for %s's usage at %s", status, tenant, sent.get("Timestamp"))
            answers[tenant] = Answer(status, settled=status in _SETTLED)
        return answers

    def _out_of_bounds(self, batch: Batch[CustomerRecord], err: ClientError) -> dict[str, Answer]:
        """AWS refuses the whole call for one record out of its time window: send each record alone, so the
        others are billed and a record too old to ever be taken is settled as lost instead of blocking them."""
        if len(batch) > 1:
            answers: dict[str, Answer] = {}
            for one in batch:
                answers.update(self.send([one]))
            return answers
        tenant, _, usage = batch[0]
        if dt.datetime.now(dt.UTC) - usage.timestamp < _TOO_OLD:  # ahead of AWS's clock, not too old: resend
            raise api_failure("BatchMeterUsage", err) from None
        return {tenant: Answer(_OUT_OF_BOUNDS, settled=True, lost=True)}


class Metering(UsageMeter[CustomerRecord]):
    def __init__(self, marketplace: AwsMarketplace) -> None:
        super().__init__(
            marketplace.records,
            marketplace.onboarder,
            marketplace.settings.requests_per_unit,
            BatchMeterUsage(marketplace),
        )


def _utc(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
