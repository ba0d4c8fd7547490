"""Lifecycle events through real moto EventBridge and SQS: the documented rule routes Marketplace events to the
queue, and each one reconciles its tenant with the entitlements (plan change, end with final metering and
suspension, resumption); failures leave the message on the queue."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis

from marketplace.aws.events import EVENT_PATTERN, EventQueue, Reconciler
from marketplace.aws.fulfilment import AwsMarketplace, Registration
from marketplace.aws.metering import Metering
from marketplace.commands import consume
from marketplace.records import Subscription
from onboarding.plans import PLANS
from tests import servers
from tests.marketplace.aws_fake import ApiError, MarketplaceFake
from tests.marketplace.conftest import Deployment
from tests.marketplace.test_aws_metering import reads, registered_hours_ago, this_hour
from tests.servers import MotoServer


class Bus:
    """A queue fed by an EventBridge rule with the documented pattern, on moto."""

    def __init__(self, session: Any, moto: MotoServer) -> None:
        self.events = session.client("events", endpoint_url=moto.endpoint)
        self.sqs = session.client("sqs", endpoint_url=moto.endpoint)
        name = f"fs-mp-{uuid.uuid4().hex[:8]}"
        self.queue_url = self.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"]
        self.events.put_rule(Name=name, EventPattern=json.dumps(EVENT_PATTERN))
        self.events.put_targets(Rule=name, Targets=[{"Id": "fulfilment", "Arn": arn}])

    def publish(self, detail_type: str, detail: dict[str, Any], source: str = "aws.marketplace") -> None:
        reply = self.events.put_events(Entries=[{"Source": source, "DetailType": detail_type,
                                                 "Detail": json.dumps(detail)}])
        assert reply["FailedEntryCount"] == 0

    def depth(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages",
                                                     "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def bus(aws_session: Any, moto_server: MotoServer) -> Bus:
    return Bus(aws_session, moto_server)


@pytest.fixture
def queue(marketplace: AwsMarketplace, bus: Bus) -> EventQueue:
    return EventQueue(Reconciler(marketplace, Metering(marketplace)), bus.sqs, bus.queue_url)


@pytest.fixture
def bought(marketplace: AwsMarketplace, fake: MarketplaceFake) -> tuple[Registration, str]:
    token, license_arn = fake.purchase("111122223333", "starter")
    return marketplace.register(token), license_arn


def refused(deployment: Deployment, api_key: str) -> bool:
    try:
        deployment.redis(api_key).ping()
    except redis.AuthenticationError:
        return True
    return False


def license_event(license_arn: str) -> dict[str, Any]:
    return {"license": {"licenseArn": license_arn}, "product": {"code": "prod-foresight-test"}}


def test_a_plan_change_event_moves_the_tenant_to_the_new_quota(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bus: Bus, queue: EventQueue,
    bought: tuple[Registration, str],
) -> None:
    registration, license_arn = bought
    fake.entitle(license_arn, "enterprise")
    bus.publish("License Updated - Manufacturer", license_event(license_arn))

    handled = list(queue.poll(wait_seconds=1))
    assert [(o.tenant, o.action) for h in handled for o in h.outcomes] == [(registration.tenant, "plan enterprise")]
    spec = deployment.key_admin.get_tenant(registration.tenant)
    assert spec is not None and spec.quota.memory_bytes == PLANS["enterprise"].memory_bytes
    served = {t["name"]: t for t in marketplace.onboarder.admin.list_tenants()}  # type: ignore[union-attr]
    assert served[registration.tenant]["budget_bytes"] == PLANS["enterprise"].memory_bytes
    assert bus.depth() == 0  # handled, so deleted


def test_an_ended_license_is_metered_one_last_time_then_suspended_and_can_come_back(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bus: Bus, queue: EventQueue,
    bought: tuple[Registration, str],
) -> None:
    registration, license_arn = bought
    assert registration.key is not None
    registered_hours_ago(fake, marketplace, registration.tenant, 2, this_hour())
    Metering(marketplace).run(tenants=[registration.tenant])  # the last hour's record went out already
    reads(deployment, registration, 120)
    fake.deprovision(license_arn)
    bus.publish("License Deprovisioned - Manufacturer", license_event(license_arn))

    assert [o.action for h in queue.poll(wait_seconds=1) for o in h.outcomes] == ["ended"]
    assert fake.usage(license_arn)[-1] == 1  # the final record, inside AWS's one-hour window
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.subscription is Subscription.ENDED
    key = registration.key.secret
    servers.wait_until(lambda: refused(deployment, key), "the suspended key refused",
                       timeout=3)  # within the service's auth cache TTL

    fake.entitle(license_arn, "pro")  # the buyer subscribes again
    bus.publish("Purchase Agreement Created - Manufacturer", license_event(license_arn))
    assert [o.action for h in queue.poll(wait_seconds=1) for o in h.outcomes] == ["plan pro, resumed"]
    assert deployment.redis(key).ping()


def test_the_final_metering_bills_the_usage_after_an_older_pending_record(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment
) -> None:
    token, license_arn = fake.purchase("111122223333", "pro")
    registration = marketplace.register(token)
    registered_hours_ago(fake, marketplace, registration.tenant, 3, this_hour())
    metering = Metering(marketplace)
    reads(deployment, registration, 300)
    fake.fail_next.append(ApiError("DisabledApiException", "blip"))
    metering.run(tenants=[registration.tenant])  # the last hour's 3 units stay pending
    reads(deployment, registration, 500)  # used before the license ended
    fake.deprovision(license_arn)

    assert Reconciler(marketplace, metering).reconcile(registration.tenant).action == "ended"
    assert fake.usage(license_arn) == [3, 5]  # the older record, then the final hour's
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.subscription is Subscription.ENDED and record.pending is None
    assert record.requests_seen == 800


def test_an_agreement_event_without_a_license_finds_the_buyer_by_account(
    marketplace: AwsMarketplace, fake: MarketplaceFake, bus: Bus, queue: EventQueue, bought: tuple[Registration, str]
) -> None:
    registration, license_arn = bought
    fake.entitle(license_arn, "pro")
    detail = {"agreement": {"id": "agmt-1", "acceptor": {"accountId": "111122223333"}}}
    bus.publish("Purchase Agreement Amended - Proposer", detail, source="aws.agreement-marketplace")
    outcomes = {o.tenant: o.action for h in queue.poll(wait_seconds=1) for o in h.outcomes}
    assert outcomes[registration.tenant] == "plan pro"


def test_the_rule_ignores_other_events_and_unknown_licenses_are_acknowledged(
    marketplace: AwsMarketplace, bus: Bus, queue: EventQueue
) -> None:
    bus.publish("Offer Released", {"offer": {"id": "offer-1"}})  # not a fulfilment event: the rule drops it
    assert bus.depth() == 0
    bus.publish("License Updated - Manufacturer", license_event("arn:aws:license-manager::1:license:l-unknown"))
    handled = list(queue.poll(wait_seconds=1))
    assert len(handled) == 1 and handled[0].outcomes == [] and handled[0].error is None
    assert bus.depth() == 0


def test_a_failure_leaves_the_event_on_the_queue_for_a_retry(
    marketplace: AwsMarketplace, fake: MarketplaceFake, bus: Bus, queue: EventQueue, bought: tuple[Registration, str]
) -> None:
    _, license_arn = bought
    fake.entitle(license_arn, "pro")
    fake.fail_next.append(ApiError("DisabledApiException", "entitlement API disabled"))
    bus.publish("License Updated - Manufacturer", license_event(license_arn))
    first = list(queue.poll(wait_seconds=1))
    assert first[0].error is not None and "DisabledApiException" in first[0].error
    assert bus.depth() == 1

    retried = list(queue.poll(wait_seconds=5))  # back after the one-second visibility timeout
    assert [o.action for h in retried for o in h.outcomes] == ["plan pro"]
    assert bus.depth() == 0


def test_a_message_that_is_not_an_event_is_left_for_the_dead_letter_queue(bus: Bus, queue: EventQueue) -> None:
    bus.sqs.send_message(QueueUrl=bus.queue_url, MessageBody="not json")
    handled = list(queue.poll(wait_seconds=1))
    assert handled[0].error is not None and "not JSON" in handled[0].error
    assert bus.depth() == 1


def test_reconcile_repairs_a_missed_event(
    marketplace: AwsMarketplace, fake: MarketplaceFake, bought: tuple[Registration, str]
) -> None:
    registration, license_arn = bought
    fake.entitle(license_arn, "pro")  # no event arrives
    reconciler = Reconciler(marketplace, Metering(marketplace))
    assert reconciler.reconcile(registration.tenant).action == "plan pro"
    assert reconciler.reconcile(registration.tenant).action == "unchanged"


def test_ctrl_c_halfway_through_a_batch_keeps_the_line_of_each_event_done(
    bus: Bus, queue: EventQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(2):
        bus.sqs.send_message(QueueUrl=bus.queue_url, MessageBody=json.dumps(
            {"source": "aws.marketplace", "detail-type": "License Updated - Manufacturer",
             "detail": license_event(f"arn:l-{n}")}))
    named = queue.reconciler.tenants_named_by
    calls: list[int] = []

    def interrupted_on_the_second(event: dict[str, Any]) -> list[str]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return named(event)

    queue.reconciler.tenants_named_by = interrupted_on_the_second  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        consume(lambda: queue.poll(wait_seconds=1), once=False, as_json=True)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(calls) == 2, "both messages arrived in one batch"
    assert [line["event"] for line in lines] == ["License Updated - Manufacturer"]  # deleted, and said so
    assert bus.depth() == 1  # the interrupted one comes back
