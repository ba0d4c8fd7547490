"""Google Cloud Marketplace lifecycle events, pulled from the Pub/Sub subscription on the partner's
Procurement topic, kept in step by reconciling with the entitlement the event names.

An entitlement waiting for a plan-change approval gets one (or a rejection, for a plan this service does not
offer); everything else re-reads the entitlement and applies its state (`marketplace/lifecycle.py`), so
`foresight marketplace gcp reconcile` also repairs everything after an outage. Account events need nothing:
sign-up approves the account. A message is acknowledged only once handled; one that fails comes back after
the subscription's ack deadline, and one that cannot be parsed is left for its dead-letter policy.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

from marketplace.gcp.fulfilment import GcpMarketplace
from marketplace.gcp.metering import Metering
from marketplace.gcp.records import tenant_of
from marketplace.lifecycle import Handled, Lifecycle, Outcome
from onboarding.errors import OnboardingError

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, marketplace: GcpMarketplace, metering: Metering) -> None:
        self.marketplace = marketplace
        self.lifecycle = Lifecycle(marketplace.records, marketplace.onboarder, metering)

    def reconcile(self, tenant: str) -> Outcome:
        """Make `tenant` match its entitlement now, answering a plan change that waits for us."""
        record = self.marketplace.records.get(tenant)
        if record is None:
            return Outcome(tenant, "no purchase record")
        entitlement = self.marketplace.entitlement(record.entitlement_id)
        if entitlement.get("state") == "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL":
            offered = self.marketplace.plan_of(entitlement.get("newPendingPlan")) is not None
            self.marketplace.approve_plan_change(entitlement, approve=offered)
            if not offered:
                return Outcome(tenant, f"refused: plan {entitlement.get('newPendingPlan')!r} is not offered")
            entitlement = self.marketplace.entitlement(record.entitlement_id)
        outcome = self.lifecycle.apply(tenant, record, self.marketplace.entitled_plan(entitlement))
        plan_id = entitlement.get("plan")
        if plan_id and plan_id != record.plan_id and self.marketplace.plan_of(plan_id):
            self.marketplace.records.update(tenant, lambda r: r.model_copy(update={"plan_id": plan_id}))
        return outcome


class Subscription:
    """Pulls the subscription (Pub/Sub's REST API) and reconciles what each event names."""

    def __init__(self, reconciler: Reconciler, name: str) -> None:
        self.reconciler = reconciler
        self.api = reconciler.marketplace.api
        self.url = f"{reconciler.marketplace.settings.pubsub_url.rstrip('/')}/v1/{name}"

    def poll(self, max_messages: int = 10) -> Iterator[Handled]:
        """Pull a batch and yield each event once it is handled. The handled ones are acknowledged together at the
        end, or when the caller stops early (Ctrl-C): only the unhandled rest is delivered again."""
        reply = self.api.call("POST", f"{self.url}:pull", "pull events", body={"maxMessages": max_messages})
        done: list[str] = []
        try:
            for received in reply.get("receivedMessages", []):
                item = self._handle(received.get("message", {}))
                if item.error is None:
                    done.append(received["ackId"])
                yield item
        finally:
            if done:
                self.api.call("POST", f"{self.url}:acknowledge", "acknowledge events", body={"ackIds": done})

    def _handle(self, message: dict[str, Any]) -> Handled:
        message_id = str(message.get("messageId", "?"))
        try:
            event_type, entitlement_id = _parse(message)
        except ValueError as err:
            log.error("message %s is not a Procurement event (left for the dead-letter policy): %s", message_id, err)
            return Handled(message_id, "?", [], error=f"not a Procurement event: {err}")
        if entitlement_id is None:
            return Handled(message_id, event_type, [])  # account events: sign-up already approved the account
        try:
            outcome = self.reconciler.reconcile(tenant_of(entitlement_id))
        except OnboardingError as err:
            log.error("event %s (%s) not handled, redelivered after the ack deadline: %s", message_id, event_type, err)
            return Handled(message_id, event_type, [], error=str(err))
        log.info("%s: tenant %s %s", event_type, outcome.tenant, outcome.action)
        return Handled(message_id, event_type, [outcome])


def _parse(message: dict[str, Any]) -> tuple[str, str | None]:
    """The event's type and the entitlement it names (None: an account event); ValueError for anything that is
    not the shape Procurement publishes, so that one message cannot stop the consumer."""
    try:
        event = json.loads(base64.b64decode(message.get("data", ""), validate=True))
    except (ValueError, TypeError) as err:
        raise ValueError(f"not base64 JSON ({err})") from None
    if not isinstance(event, dict) or not isinstance(event.get("eventType"), str):
        raise ValueError("no eventType string in a JSON object")
    entitlement = event.get("entitlement")
    if entitlement is None:
        return event["eventType"], None
    if not isinstance(entitlement, dict) or not isinstance(entitlement.get("id"), str) or not entitlement["id"]:
        raise ValueError("its entitlement is not an object with an id string")
    return event["eventType"], entitlement["id"]
