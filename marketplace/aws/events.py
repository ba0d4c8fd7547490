"""AWS Marketplace lifecycle events, from the SQS queue an EventBridge rule feeds, kept in step by reconciling.

An event is a hint, not the truth: it names a license (or the buyer's account), and `reconcile` re-reads that
license's entitlements and applies them (`marketplace/lifecycle.py`), so `foresight marketplace aws reconcile`
also repairs everything after an outage.

A message is deleted only once handled; one that fails (Vault or AWS down) comes back after the queue's
visibility timeout, and one that cannot be parsed is left for the queue's dead-letter redrive.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from marketplace.aws.fulfilment import AwsMarketplace, api_failure
from marketplace.aws.metering import Metering
from marketplace.lifecycle import Handled, Lifecycle, Outcome
from onboarding.errors import OnboardingError

log = logging.getLogger(__name__)

SOURCES = ("aws.marketplace", "aws.agreement-marketplace")
# The EventBridge rule that feeds the queue (documented in docs/marketplace-aws.md; tested against moto).
EVENT_PATTERN = {
    "source": list(SOURCES),
    "detail-type": [
        {"prefix": "Purchase Agreement Created"},
        {"prefix": "Purchase Agreement Amended"},
        {"prefix": "Purchase Agreement Ended"},
        {"prefix": "License Updated"},
        {"prefix": "License Deprovisioned"},
    ],
}
_LICENSE_ARN = re.compile(r"^arn:aws[a-z-]*:license-manager:")


class Reconciler:
    def __init__(self, marketplace: AwsMarketplace, metering: Metering) -> None:
        self.marketplace = marketplace
        self.lifecycle = Lifecycle(marketplace.records, marketplace.onboarder, metering)

    def reconcile(self, tenant: str) -> Outcome:
        """Make `tenant` match its license's entitlements now."""
        record = self.marketplace.records.get(tenant)
        if record is None:
            return Outcome(tenant, "no purchase record")
        return self.lifecycle.apply(tenant, record, self.marketplace.entitled_plan(record.license_arn))

    def tenants_named_by(self, event: dict[str, Any]) -> list[str]:
        """The tenants an event is about: by license ARN, else by the buyer's account id."""
        records = self.marketplace.records
        known = {t: records.get(t) for t in records.tenants()}
        licenses = {s for s in _strings([event.get("resources", []), event.get("detail", {})]) if _LICENSE_ARN.match(s)}
        named = [t for t, r in known.items() if r is not None and r.license_arn in licenses]
        if named or licenses:
            return named
        accounts = set(_acceptor_accounts(event.get("detail", {})))
        return [t for t, r in known.items() if r is not None and r.aws_account_id in accounts]


class EventQueue:
    """Long-polls the queue and reconciles what each event names."""

    def __init__(self, reconciler: Reconciler, sqs: Any, queue_url: str) -> None:
        self.reconciler = reconciler
        self.sqs = sqs
        self.queue_url = queue_url

    def poll(self, wait_seconds: int = 20) -> Iterator[Handled]:
        """Receive a batch and yield each event once it is handled (and deleted): a caller that reports each as
        it comes loses no line when it is interrupted halfway through the batch."""
        try:
            reply = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
            )
        except (ClientError, BotoCoreError) as err:
            raise api_failure(f"receive from {self.queue_url}", err) from None
        for message in reply.get("Messages", []):
            yield self._handle(message)

    def _handle(self, message: dict[str, Any]) -> Handled:
        message_id = message.get("MessageId", "?")
        try:
            event = parse(message.get("Body", ""))
        except ValueError as err:
            log.error("message %s is not a Marketplace event (left for the dead-letter queue): %s", message_id, err)
            return Handled(message_id, "?", [], error=str(err))
        detail_type = str(event.get("detail-type"))
        try:
            outcomes = [self.reconciler.reconcile(t) for t in self.reconciler.tenants_named_by(event)]
        except OnboardingError as err:
            log.error(
                "event %s (%s) not handled, retried after the visibility timeout: %s", message_id, detail_type, err
            )
            return Handled(message_id, detail_type, [], error=str(err))
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        except (ClientError, BotoCoreError) as err:  # handled, but it comes back: reconciling again is harmless
            log.warning("could not delete message %s: %s", message_id, err)
        for outcome in outcomes:
            log.info("%s: tenant %s %s", detail_type, outcome.tenant, outcome.action)
        return Handled(message_id, detail_type, outcomes)


def parse(body: str) -> dict[str, Any]:
    """The EventBridge event in a queue message body (unwrapping an SNS envelope if one is in between)."""
    try:
        event = json.loads(body)
        if isinstance(event, dict) and event.get("Type") == "Notification" and "Message" in event:
            event = json.loads(event["Message"])
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(event, dict) or event.get("source") not in SOURCES or "detail-type" not in event:
        raise ValueError(f"not an event from {' or '.join(SOURCES)}")
    return event


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _acceptor_accounts(detail: Any) -> Iterator[str]:
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "acceptor" and isinstance(value, dict) and isinstance(value.get("accountId"), str):
                yield value["accountId"]
            else:
                yield from _acceptor_accounts(value)
    elif isinstance(detail, list):
        for item in detail:
            yield from _acceptor_accounts(item)
