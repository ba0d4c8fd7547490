"""Google Cloud Marketplace SaaS: a Google-signed sign-up JWT turns the buyer's order into an approved tenant
with a working key; Procurement events from Pub/Sub keep it in step (plan changes approved or rejected,
cancellation metered then suspended); Service Control is charged once per hour. The real google-auth and
PyJWT talk to the contract fake (gcp_fake.py) over HTTPS."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from marketplace.commands import consume
from marketplace.errors import MarketplaceFailure
from marketplace.gcp.events import Reconciler, Subscription
from marketplace.gcp.fulfilment import GcpMarketplace
from marketplace.gcp.landing import create_app
from marketplace.gcp.metering import Metering
from marketplace.gcp.records import tenant_of
from marketplace.gcp.settings import GcpMarketplaceSettings
from marketplace.records import Subscription as State
from marketplace.registration import Registration
from onboarding.errors import InvalidInput
from onboarding.plans import PLANS
from tests.marketplace.conftest import Deployment
from tests.marketplace.gcp_fake import GcpFake
from tests.marketplace.test_aws_events import refused
from tests.servers import wait_until

HOUR = dt.timedelta(hours=1)


def bought(gcp_marketplace: GcpMarketplace, gcp: GcpFake) -> tuple[Registration, str, str]:
    """An order signed up: its registration, entitlement id and API key."""
    token, entitlement_id = gcp.purchase("pro")
    registration = gcp_marketplace.register(token)
    assert registration.key is not None
    return registration, entitlement_id, registration.key.secret


def changed_to_pro(gcp_marketplace: GcpMarketplace, gcp: GcpFake) -> str:
    """A starter order signed up whose plan has since become pro at Google; its entitlement id."""
    token, entitlement_id = gcp.purchase("starter")
    gcp_marketplace.register(token)
    gcp.entitlements[entitlement_id]["plan"] = "pro"
    return entitlement_id


def sign_up(client: TestClient, token: str) -> Any:
    return client.post("/gcp/signup", data={"x-gcp-marketplace-token": token}, headers={"Accept": "application/json"})


@pytest.fixture
def client(gcp_marketplace: GcpMarketplace) -> TestClient:
    return TestClient(create_app(gcp_marketplace))


@pytest.fixture
def events(gcp_marketplace: GcpMarketplace) -> Subscription:
    reconciler = Reconciler(gcp_marketplace, Metering(gcp_marketplace))
    return Subscription(reconciler, "projects/foresight-partner/subscriptions/procurement")


def test_sign_up_approves_the_account_and_order_and_hands_out_a_working_key(
    client: TestClient, gcp: GcpFake, deployment: Deployment
) -> None:
    token, entitlement_id = gcp.purchase("pro")
    reply = sign_up(client, token)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["tenant"] == tenant_of(entitlement_id) and body["plan"] == "pro"
    assert gcp.entitlements[entitlement_id]["state"] == "ENTITLEMENT_ACTIVE"
    account = gcp.entitlements[entitlement_id]["account"].rsplit("/", 1)[-1]
    assert gcp.accounts[account]["state"] == "ACCOUNT_ACTIVE"
    assert deployment.redis(body["api_key"]).ping()
    spec = deployment.key_admin.get_tenant(body["tenant"])
    assert spec is not None and spec.quota.memory_bytes == PLANS["pro"].memory_bytes

    again = sign_up(client, token)
    assert again.status_code == 200 and again.json()["api_key"] is None


def _tampered(token: str) -> str:
    """The token with its signature's end changed: one ending in "AAAA" already gets "BBBB"."""
    return token[:-4] + ("BBBB" if token.endswith("AAAA") else "AAAA")


@pytest.mark.parametrize(
    ("forge", "says"),
    [
        (lambda f, acct: f.signup_token(acct, aud="someone-else.example.com"), "Audience"),
        (lambda f, acct: f.signup_token(acct, iss="https://accounts.google.com"), "issuer"),
        (lambda f, acct: f.signup_token(acct, exp=1), "expired"),
        (lambda f, acct: _tampered(f.signup_token(acct)), "Signature"),
    ],
    ids=["audience", "issuer", "expired", "signature"],
)
def test_sign_up_refuses_tokens_google_did_not_issue_for_this_listing(
    client: TestClient, gcp: GcpFake, deployment: Deployment, forge, says  # type: ignore[no-untyped-def]
) -> None:
    _, entitlement_id = gcp.purchase("pro")
    account = gcp.entitlements[entitlement_id]["account"].rsplit("/", 1)[-1]
    reply = sign_up(client, forge(gcp, account))
    assert reply.status_code == 400 and says.lower() in reply.json()["error"].lower()
    assert gcp.accounts[account]["state"] == "ACCOUNT_ACTIVATION_REQUESTED"  # nothing approved
    assert deployment.key_admin.get_tenant(tenant_of(entitlement_id)) is None


def test_an_unmapped_plan_or_no_order_yet_gets_402(client: TestClient, gcp: GcpFake) -> None:
    token, _ = gcp.purchase("platinum")
    assert sign_up(client, token).status_code == 402
    token, entitlement_id = gcp.purchase("pro")
    gcp.entitlements.pop(entitlement_id)
    reply = sign_up(client, token)
    assert reply.status_code == 402 and "try the sign-up link again" in reply.json()["error"]


def test_a_failed_approval_removes_the_tenant(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, deployment: Deployment
) -> None:
    token, entitlement_id = gcp.purchase("starter")
    original = gcp.api

    def refuse_approval(method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if path.endswith(f"{entitlement_id}:approve"):
            return 503, {"error": {"code": 503, "message": "backend unavailable"}}
        return original(method, path, query, body)

    gcp.api = refuse_approval  # type: ignore[method-assign]
    with pytest.raises(MarketplaceFailure, match="answered 503"):
        gcp_marketplace.register(token)
    tenant = tenant_of(entitlement_id)
    assert deployment.key_admin.get_tenant(tenant) is None and gcp_marketplace.records.get(tenant) is None
    gcp.api = original  # type: ignore[method-assign]
    assert gcp_marketplace.register(token).key is not None


def test_missing_provider_credentials_name_the_variable(
    gcp_settings, deployment: Deployment, monkeypatch: pytest.MonkeyPatch, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(InvalidInput, match="GOOGLE_APPLICATION_CREDENTIALS"):
        GcpMarketplace(gcp_settings, deployment.onboarder())


def test_a_plan_change_is_approved_and_applied(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, events: Subscription, deployment: Deployment
) -> None:
    token, entitlement_id = gcp.purchase("starter")
    tenant = gcp_marketplace.register(token).tenant
    gcp.entitlements[entitlement_id].update(state="ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL", newPendingPlan="pro")
    gcp.publish("ENTITLEMENT_PLAN_CHANGE_REQUESTED", entitlement_id)
    handled = list(events.poll())
    assert [(o.tenant, o.action) for h in handled for o in h.outcomes] == [(tenant, "plan pro")]
    assert gcp.entitlements[entitlement_id]["plan"] == "pro" and not gcp.messages  # acknowledged
    spec = deployment.key_admin.get_tenant(tenant)
    assert spec is not None and spec.quota.memory_bytes == PLANS["pro"].memory_bytes


def test_a_change_to_a_plan_not_offered_is_rejected(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, events: Subscription
) -> None:
    token, entitlement_id = gcp.purchase("starter")
    gcp_marketplace.register(token)
    gcp.entitlements[entitlement_id].update(state="ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL",
                                            newPendingPlan="platinum")
    gcp.publish("ENTITLEMENT_PLAN_CHANGE_REQUESTED", entitlement_id)
    [handled] = events.poll()
    assert "refused" in handled.outcomes[0].action
    assert gcp.entitlements[entitlement_id]["plan"] == "starter"
    assert any(path.endswith(":rejectPlanChange") for _, path, _ in gcp.calls)


def test_cancellation_meters_once_more_then_suspends(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, events: Subscription, deployment: Deployment
) -> None:
    token, entitlement_id = gcp.purchase("pro")
    registration = gcp_marketplace.register(token)
    assert registration.key is not None
    key = registration.key.secret
    deployment.redis(key).mget([f"k{i}" for i in range(230)])
    gcp.entitlements[entitlement_id]["state"] = "ENTITLEMENT_CANCELLED"
    gcp.publish("ENTITLEMENT_CANCELLED", entitlement_id)
    assert [o.action for h in events.poll() for o in h.outcomes] == ["ended"]
    record = gcp_marketplace.records.get(registration.tenant)
    assert record is not None and record.subscription is State.ENDED
    wait_until(lambda: refused(deployment, key), "the cancelled tenant's key refused", timeout=3)


def test_a_failure_leaves_the_event_for_redelivery_and_bad_messages_stay(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, events: Subscription
) -> None:
    entitlement_id = changed_to_pro(gcp_marketplace, gcp)
    gcp.publish("ENTITLEMENT_PLAN_CHANGED", entitlement_id)
    gcp.publish("?", data=b"not json")
    original = gcp.api

    def entitlement_down(method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if path.endswith(entitlement_id) and method == "GET":
            return 503, {"error": {"code": 503, "message": "backend unavailable"}}
        return original(method, path, query, body)

    gcp.api = entitlement_down  # type: ignore[method-assign]
    first = list(events.poll())
    assert all(h.error for h in first) and len(gcp.messages) == 2
    gcp.api = original  # type: ignore[method-assign]
    second = list(events.poll())
    assert [o.action for h in second for o in h.outcomes] == ["plan pro"]
    assert len(gcp.messages) == 1  # the unparseable one waits for the dead-letter policy


def test_metering_charges_each_hour_once_to_the_usage_reporting_id(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, deployment: Deployment
) -> None:
    registration, entitlement_id, key = bought(gcp_marketplace, gcp)
    then = dt.datetime.now(dt.UTC) - 3 * HOUR
    gcp_marketplace.records.update(registration.tenant, lambda r: r.model_copy(update={"registered": then}))
    deployment.redis(key).mget([f"k{i}" for i in range(250)])
    metering = Metering(gcp_marketplace)
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    first = metering.run(now=hour - HOUR + dt.timedelta(minutes=5), tenants=[registration.tenant])
    assert [(m.quantity, m.status) for m in first.metered] == [(2, "Reported")]
    operation = next(iter(gcp.reported.values()))
    assert operation["consumerId"] == gcp.entitlements[entitlement_id]["usageReportingId"]  # as it is
    assert operation["consumerId"].startswith("project_number:")
    assert operation["metricValueSets"][0]["metricName"].endswith("/requests")
    assert gcp.checked == [operation["operationId"]]  # services.check first, with the same operation id

    record = gcp_marketplace.records.get(registration.tenant)
    assert record is not None and record.last_metered is not None
    from marketplace.records import PendingUsage

    again = PendingUsage(timestamp=record.last_metered, quantity=2, requests_seen=record.requests_seen,
                         remainder=record.unbilled_requests)
    gcp_marketplace.records.update(registration.tenant, lambda r: r.model_copy(update={"pending": again}))
    metering.run(tenants=[registration.tenant])  # the resend after a crash: the same operation id
    assert gcp.billed(entitlement_id) == [2]


def test_metering_after_cancellation_is_refused_for_good(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, deployment: Deployment
) -> None:
    token, entitlement_id = gcp.purchase("pro")
    registration = gcp_marketplace.register(token)
    gcp.entitlements[entitlement_id]["state"] = "ENTITLEMENT_CANCELLED"
    report = Metering(gcp_marketplace).run(tenants=[registration.tenant])
    assert [m.status for m in report.metered] == ["SERVICE_NOT_ACTIVATED"]  # services.check refused it
    assert [e for e in report.errors if registration.tenant in e and "lost" in e]  # so `meter` exits 6
    assert not gcp.reported
    record = gcp_marketplace.records.get(registration.tenant)
    assert record is not None and record.pending is None  # settled: never resent


def test_a_second_order_of_the_same_account_gets_its_own_tenant(
    client: TestClient, gcp: GcpFake, deployment: Deployment
) -> None:
    token, first_id = gcp.purchase("starter")
    assert sign_up(client, token).status_code == 201
    account = gcp.entitlements[first_id]["account"]
    _, second_id = gcp.purchase("pro")
    gcp.entitlements[second_id]["account"] = account  # the same buyer orders again
    second = sign_up(client, token)
    assert second.status_code == 201 and second.json()["tenant"] == tenant_of(second_id)
    assert deployment.key_admin.get_tenant(tenant_of(first_id)) is not None


def test_ctrl_c_halfway_through_a_batch_acknowledges_the_events_done(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, events: Subscription, capsys: pytest.CaptureFixture[str]
) -> None:
    token, entitlement_id = gcp.purchase("starter")
    gcp_marketplace.register(token)
    gcp.publish("ENTITLEMENT_PLAN_CHANGED", entitlement_id)
    gcp.publish("ENTITLEMENT_PLAN_CHANGED", entitlement_id)
    reconcile = events.reconciler.reconcile
    calls: list[str] = []

    def interrupted_on_the_second(tenant: str) -> Any:
        calls.append(tenant)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return reconcile(tenant)

    events.reconciler.reconcile = interrupted_on_the_second  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        consume(events.poll, once=False, as_json=True)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(calls) == 2 and [line["event"] for line in lines] == ["ENTITLEMENT_PLAN_CHANGED"]
    assert len(gcp.messages) == 1  # the one done is acknowledged; the interrupted one is delivered again


def test_each_report_covers_the_interval_since_the_previous_one(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, deployment: Deployment
) -> None:
    """startTime is the previous report's endTime (the registration for the first): no instant report, no gap."""
    registration, entitlement_id, key = bought(gcp_marketplace, gcp)
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    registered = hour - 3 * HOUR + dt.timedelta(minutes=20)
    gcp_marketplace.records.update(registration.tenant, lambda r: r.model_copy(update={"registered": registered}))
    metering = Metering(gcp_marketplace)
    for run_at in (hour - 2 * HOUR, hour - HOUR, hour):
        deployment.redis(key).mget([f"k{i}" for i in range(100)])
        metering.run(now=run_at + dt.timedelta(minutes=5), tenants=[registration.tenant])
    consumer = gcp.entitlements[entitlement_id]["usageReportingId"]
    reports = sorted((op for op in gcp.reported.values() if op["consumerId"] == consumer),
                     key=lambda op: op["startTime"])
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    assert [(op["startTime"], op["endTime"]) for op in reports] == [
        (f"{registered:{stamp}}", f"{hour - 2 * HOUR:{stamp}}"),
        (f"{hour - 2 * HOUR:{stamp}}", f"{hour - HOUR:{stamp}}"),
        (f"{hour - HOUR:{stamp}}", f"{hour:{stamp}}"),
    ]
    assert gcp.billed(entitlement_id) == [1, 1, 1]


def test_a_refusal_for_good_ends_and_a_passing_one_stays_pending_both_reported(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, deployment: Deployment
) -> None:
    registration, entitlement_id, key = bought(gcp_marketplace, gcp)
    deployment.redis(key).mget([f"k{i}" for i in range(100)])
    metering = Metering(gcp_marketplace)
    gcp.refuse_next.append(14)  # UNAVAILABLE: sent again next run
    unavailable = metering.run(tenants=[registration.tenant])
    assert [e for e in unavailable.errors if registration.tenant in e and "stays pending" in e]
    record = gcp_marketplace.records.get(registration.tenant)
    assert record is not None and record.pending is not None

    gcp.refuse_next.append(3)  # INVALID_ARGUMENT: will never pass; settled so the tenant's later hours go out
    invalid = metering.run(tenants=[registration.tenant])
    assert [e for e in invalid.errors if registration.tenant in e and "lost" in e and "Error 3" in e]
    record = gcp_marketplace.records.get(registration.tenant)
    assert record is not None and record.pending is None and gcp.billed(entitlement_id) == []


def test_a_malformed_event_is_left_for_the_dead_letter_policy_and_the_rest_are_handled(
    gcp_marketplace: GcpMarketplace, gcp: GcpFake, events: Subscription
) -> None:
    entitlement_id = changed_to_pro(gcp_marketplace, gcp)
    gcp.publish("?", data=json.dumps({"eventId": "e1", "eventType": "ENTITLEMENT_CANCELLED",
                                      "entitlement": "not-an-object"}).encode())
    gcp.publish("?", data=json.dumps(["not", "an", "object"]).encode())
    gcp.publish("ENTITLEMENT_PLAN_CHANGED", entitlement_id)
    handled = list(events.poll())
    assert [h.error is not None for h in handled] == [True, True, False]
    assert [o.action for h in handled for o in h.outcomes] == ["plan pro"]
    assert len(gcp.messages) == 2  # the good one acknowledged; the malformed ones wait for the dead letters


def test_sign_up_finds_this_products_order_on_any_page(
    client: TestClient, gcp: GcpFake, deployment: Deployment
) -> None:
    token, first_id = gcp.purchase("starter")
    account = gcp.entitlements[first_id]["account"]
    gcp.entitlements[first_id].update(productExternalName="another-product", product="another-product")
    _, second_id = gcp.purchase("pro")  # the same buyer's order of this product, a page further on
    gcp.entitlements[second_id]["account"] = account
    reply = sign_up(client, token)
    assert reply.status_code == 201, reply.text
    assert reply.json()["tenant"] == tenant_of(second_id)
    assert gcp.entitlements[first_id]["state"] == "ENTITLEMENT_ACTIVATION_REQUESTED"  # another product's: untouched


def test_sign_up_needs_the_product_setting(
    gcp: GcpFake, gcp_settings: GcpMarketplaceSettings, deployment: Deployment
) -> None:
    token, entitlement_id = gcp.purchase("pro")
    unset = GcpMarketplace(gcp_settings.model_copy(update={"product": None}), deployment.onboarder())
    with pytest.raises(InvalidInput, match="FORESIGHT_GCP_MP_PRODUCT"):
        unset.register(token)
    unset.close()
    account = gcp.entitlements[entitlement_id]["account"].rsplit("/", 1)[-1]
    assert gcp.accounts[account]["state"] == "ACCOUNT_ACTIVATION_REQUESTED"  # refused before anything
