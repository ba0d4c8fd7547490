"""AWS's half of metering (`marketplace/metering.py` has the exactly-once rest): BatchMeterUsage, 25 records a
call, each record naming the purchase by `LicenseArn` and `CustomerAWSAccountId`."""

from __future__ import annotations

import datetime as dt
import logging

from botocore.exceptions import BotoCoreError, ClientError

from marketplace.aws.fulfilment import AwsMarketplace, api_failure
from marketplace.aws.records import CustomerRecord
from marketplace.metering import Answer, Batch, UsageMeter

log = logging.getLogger(__name__)

_BILLED = ("Success",)  # billed now, or already billed for an identical record (idempotent)
# Answered for good without billing: another quantity for the same hour (DuplicateRecord), no subscription.
_NOT_BILLED = ("DuplicateRecord", "CustomerNotSubscribed")
_OUT_OF_BOUNDS = "TimestampOutOfBoundsException"
# Refusals of the whole call that say nothing about its records: resend them all unchanged next run.
_NOT_THE_RECORDS = ("ThrottlingException", "InternalServiceErrorException", "DisabledApiException")
# A record refused alone for its time and stamped this long ago is too old (not ahead of AWS's clock): lost.
_TOO_OLD = dt.timedelta(hours=1)


class BatchMeterUsage:
    batch_size = 25  # the API's limit per call

    def __init__(self, marketplace: AwsMarketplace) -> None:
        self.marketplace = marketplace

    def send(self, batch: Batch[CustomerRecord]) -> dict[str, Answer]:
        """AWS refuses a whole call for one bad record ("if any of the records are outside of the allowed range,
        the entire batch is not processed. You must remove invalid records and try again"), and says not which:
        a refused call is halved until each bad record is alone, so its batchmates are billed. A record refused
        alone is lost once AWS took another record of the batch (the fault is that record's); if it took none,
        the fault may be the call's (a dimension, the credentials), so every record stays pending."""
        answers, refused = self._bisect(batch, whole=True)
        answered = any(a.status in _BILLED + _NOT_BILLED for a in answers.values())
        for tenant, _, usage in batch:
            code = refused.get(tenant)
            if code is None:
                continue
            too_old = code == _OUT_OF_BOUNDS and dt.datetime.now(dt.UTC) - usage.timestamp >= _TOO_OLD
            answers[tenant] = Answer(code, settled=too_old or answered, lost=too_old or answered)
        return answers

    def _bisect(self, batch: Batch[CustomerRecord], whole: bool) -> tuple[dict[str, Answer], dict[str, str]]:
        """The answers AWS gave, and the tenants whose record it refused alone (with the error's code)."""
        try:
            return self._call(batch), {}
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code"))
            if code in _NOT_THE_RECORDS or err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
                if whole:
                    raise api_failure("BatchMeterUsage", err) from None
                return {tenant: Answer(code, settled=False) for tenant, _, _ in batch}, {}
            log.warning("AWS refused BatchMeterUsage of %d records: %s", len(batch), code)
            if len(batch) == 1:
                return {}, {batch[0][0]: code}
        except BotoCoreError as err:
            if whole:
                raise api_failure("BatchMeterUsage", err) from None
            return {tenant: Answer(type(err).__name__, settled=False) for tenant, _, _ in batch}, {}
        half = len(batch) // 2
        answers, refused = self._bisect(batch[:half], whole=False)
        more_answers, more_refused = self._bisect(batch[half:], whole=False)
        return answers | more_answers, refused | more_refused

    def _call(self, batch: Batch[CustomerRecord]) -> dict[str, Answer]:
        # A batch holds at most one record of a purchase, so its LicenseArn names the record. Not the timestamp
        # too: AWS has said it ignores seconds, and a purchase's first record is stamped at its registration's second
        # (`_slot`): an echo without them would match nothing, leaving the record pending and the tenant unmetered.
        tenants = {record.license_arn: tenant for tenant, record, _ in batch}
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
        reply = self.marketplace.metering.batch_meter_usage(UsageRecords=records)
        answers = {}
        for result in reply.get("Results", []):  # UnprocessedRecords get no answer: resent next run
            sent = result.get("UsageRecord", {})
            tenant = tenants.get(str(sent.get("LicenseArn")))
            if tenant is None:
                log.error("BatchMeterUsage answered for a record it was not sent: %s", sent.get("LicenseArn"))
                continue
            status = str(result.get("Status"))
            if status != "Success":
                log.warning("AWS answered %s for %s's usage at %s", status, tenant, sent.get("Timestamp"))
            answers[tenant] = Answer(status, settled=status in _BILLED + _NOT_BILLED, lost=status in _NOT_BILLED)
        return answers


class Metering(UsageMeter[CustomerRecord]):
    def __init__(self, marketplace: AwsMarketplace) -> None:
        super().__init__(
            marketplace.records,
            marketplace.onboarder,
            marketplace.settings.requests_per_unit,
            BatchMeterUsage(marketplace),
        )

