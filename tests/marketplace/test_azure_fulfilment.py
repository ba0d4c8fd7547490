"""Azure Marketplace SaaS: the landing page turns a purchase into an activated tenant with a working key; the
webhook accepts only the Marketplace's signed calls and keeps the tenant in step; usage is billed once per
hour. The real azure-identity and PyJWT talk to the contract fake (azure_fake.py) over HTTPS."""

from __future__ import annotations

import datetime as dt
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from marketplace.azure.fulfilment import AzureMarketplace
from marketplace.azure.landing import create_app
from marketplace.azure.metering import Metering
from marketplace.azure.records import tenant_of
from marketplace.azure.webhook import TokenVerifier, Webhook
from marketplace.errors import MarketplaceFailure
from marketplace.records import PendingUsage, Subscription
from onboarding.errors import InvalidInput, ServiceFailure
from onboarding.plans import PLANS
from tests.marketplace.azure_fake import AzureFake
from tests.marketplace.conftest import Deployment
from tests.marketplace.test_aws_events import refused
from tests.servers import wait_until

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def client(azure_marketplace: AzureMarketplace) -> TestClient:
    webhook = Webhook(azure_marketplace, Metering(azure_marketplace))
    return TestClient(create_app(azure_marketplace, webhook, TokenVerifier(azure_marketplace.settings)))


def land(client: TestClient, token: str) -> Any:
    return client.get("/azure/landing", params={"token": token}, headers={"Accept": "application/json"})


def notify(client: TestClient, azure: AzureFake, notification: dict[str, Any], token: str | None = None) -> Any:
    return client.post("/azure/webhook", json=notification,
                       headers={"Authorization": f"Bearer {token or azure.webhook_token()}"})


def test_landing_creates_an_activated_tenant_with_a_working_key(
    client: TestClient, azure: AzureFake, deployment: Deployment
) -> None:
    token, subscription_id = azure.purchase("pro")
    reply = land(client, token)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["tenant"] == tenant_of(subscription_id) and body["plan"] == "pro"
    assert body["subscription_id"] == subscription_id
    assert azure.subscriptions[subscription_id]["saasSubscriptionStatus"] == "Subscribed"  # activated
    assert deployment.redis(body["api_key"]).ping()
    spec = deployment.key_admin.get_tenant(body["tenant"])
    assert spec is not None and spec.quota.memory_bytes == PLANS["pro"].memory_bytes
    assert reply.headers["cache-control"] == "no-store"

    again = land(client, token)  # the buyer opens the landing page again
    assert again.status_code == 200 and again.json()["api_key"] is None


@pytest.mark.parametrize(
    ("purchase", "status", "says"),
    [
        (lambda a: ("not-a-token", None), 400, "could not identify this purchase"),
        (lambda a: a.purchase("pro", offer_id="someone-elses"), 400, "not 'foresight-saas'"),
        (lambda a: a.purchase("platinum"), 402, "not offered here"),
    ],
    ids=["unknown-token", "other-offer", "unmapped-plan"],
)
def test_refused_purchases_leave_nothing_behind(
    client: TestClient, azure: AzureFake, deployment: Deployment, purchase, status, says  # type: ignore[no-untyped-def]
) -> None:
    token, subscription_id = purchase(azure)
    reply = land(client, token)
    assert reply.status_code == status and says in reply.json()["error"]
    if subscription_id:
        assert deployment.key_admin.get_tenant(tenant_of(subscription_id)) is None
        assert azure.subscriptions[subscription_id]["saasSubscriptionStatus"] == "PendingFulfillmentStart"


def test_a_failed_activation_removes_the_tenant_so_the_buyer_can_retry(
    azure_marketplace: AzureMarketplace, azure: AzureFake, deployment: Deployment
) -> None:
    token, subscription_id = azure.purchase("starter")
    original = azure.api

    def refuse_activation(method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if path.endswith("/activate"):
            return 500, {"error": {"code": "InternalServerError", "message": "activation failed"}}
        return original(method, path, headers, body)

    azure.api = refuse_activation  # type: ignore[method-assign]
    with pytest.raises(MarketplaceFailure, match="answered 500"):
        azure_marketplace.register(token)
    tenant = tenant_of(subscription_id)
    assert deployment.key_admin.get_tenant(tenant) is None and azure_marketplace.records.get(tenant) is None

    azure.api = original  # type: ignore[method-assign]
    assert azure_marketplace.register(token).key is not None


def test_the_publisher_credential_comes_from_azure_identity(
    azure_marketplace: AzureMarketplace, azure: AzureFake, monkeypatch: pytest.MonkeyPatch, azure_settings  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "wrong")
    wrong = AzureMarketplace(azure_settings, azure_marketplace.onboarder)
    with pytest.raises(MarketplaceFailure, match="no token from Entra ID"):
        wrong.register(azure.purchase("pro")[0])
    monkeypatch.delenv("AZURE_CLIENT_SECRET")
    with pytest.raises(InvalidInput, match="AZURE_CLIENT_SECRET"):
        AzureMarketplace(azure_settings, azure_marketplace.onboarder)


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({"aud": "another-app"}, "Audience"),
        ({"appid": "00000000-0000-0000-0000-000000000000"}, "not issued to the Marketplace"),
        ({"tid": "another-tenant"}, "tid"),
        ({"iss": "https://sts.windows.net/another-tenant/"}, "issuer"),
        ({"exp": 1}, "expired"),
    ],
    ids=["audience", "appid", "tid", "issuer", "expired"],
)
def test_the_webhook_refuses_tokens_that_are_not_the_marketplaces(
    client: TestClient, azure: AzureFake, azure_marketplace: AzureMarketplace, claims: dict[str, Any], says: str
) -> None:
    token, subscription_id = azure.purchase("pro")
    azure_marketplace.register(token)
    notification = azure.operation(subscription_id, "Suspend", status="Success")
    reply = notify(client, azure, notification, token=azure.webhook_token(**claims))
    assert reply.status_code == 401 and says in reply.json()["error"]
    record = azure_marketplace.records.get(tenant_of(subscription_id))
    assert record is not None and record.subscription is Subscription.ACTIVE  # nothing changed


def test_a_token_signed_with_another_key_is_refused(client: TestClient, azure: AzureFake) -> None:
    forged = jwt.encode(jwt.decode(azure.webhook_token(), options={"verify_signature": False}),
                        rsa.generate_private_key(65537, 2048), algorithm="RS256", headers={"kid": azure.key_id})
    assert notify(client, azure, {"id": "x"}, token=forged).status_code == 401
    assert client.post("/azure/webhook", json={}).status_code == 401  # no token at all


def test_a_notification_for_an_operation_the_marketplace_does_not_know_is_refused(
    client: TestClient, azure: AzureFake, azure_marketplace: AzureMarketplace
) -> None:
    token, subscription_id = azure.purchase("pro")
    azure_marketplace.register(token)
    forged = {"id": "00000000-0000-0000-0000-000000000001", "subscriptionId": subscription_id,
              "offerId": "foresight-saas", "action": "Unsubscribe", "status": "Success"}
    reply = notify(client, azure, forged)
    assert reply.status_code == 400 and "knows no operation" in reply.json()["error"]


def test_change_plan_is_applied_then_answered_success(
    client: TestClient, azure: AzureFake, azure_marketplace: AzureMarketplace, deployment: Deployment
) -> None:
    token, subscription_id = azure.purchase("starter")
    tenant = azure_marketplace.register(token).tenant
    operation = azure.operation(subscription_id, "ChangePlan", plan_id="enterprise")
    reply = notify(client, azure, operation)
    assert reply.status_code == 200 and reply.json() == {"tenant": tenant, "action": "plan enterprise"}
    assert azure.operations[operation["id"]]["status"] == "Succeeded"
    assert azure.subscriptions[subscription_id]["planId"] == "enterprise"
    spec = deployment.key_admin.get_tenant(tenant)
    assert spec is not None and spec.quota.memory_bytes == PLANS["enterprise"].memory_bytes


def test_a_change_to_a_plan_not_offered_is_answered_failure(
    client: TestClient, azure: AzureFake, azure_marketplace: AzureMarketplace
) -> None:
    token, subscription_id = azure.purchase("starter")
    azure_marketplace.register(token)
    operation = azure.operation(subscription_id, "ChangePlan", plan_id="platinum")
    assert "refused" in notify(client, azure, operation).json()["action"]
    assert azure.operations[operation["id"]]["status"] == "Failed"
    assert azure.subscriptions[subscription_id]["planId"] == "starter"


def test_suspend_meters_then_suspends_and_reinstate_resumes(
    client: TestClient, azure: AzureFake, azure_marketplace: AzureMarketplace, deployment: Deployment
) -> None:
    token, subscription_id = azure.purchase("pro")
    registration = azure_marketplace.register(token)
    assert registration.key is not None
    key = registration.key.secret
    deployment.redis(key).mget([f"k{i}" for i in range(150)])  # 150 reads: one unit of 100

    suspend = azure.operation(subscription_id, "Suspend", status="Success")
    assert notify(client, azure, suspend).json()["action"] == "ended"
    assert azure.billed(subscription_id) == [1]  # the final record, before the tenant stops
    wait_until(lambda: refused(deployment, key), "the suspended key refused", timeout=3)

    reinstate = azure.operation(subscription_id, "Reinstate")
    assert notify(client, azure, reinstate).json()["action"] == "resumed"
    assert not [c for c in azure.calls if c[0] == "PATCH"]  # Reinstate takes no answer ("Not applicable")
    assert deployment.redis(key).ping()


def test_change_plan_is_answered_before_it_is_applied_and_applied_on_redelivery(
    client: TestClient, azure: AzureFake, azure_marketplace: AzureMarketplace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Microsoft auto-accepts a ChangePlan 10 seconds on: the answer goes before the slow work (Vault, the
    service), and a failure of that work is a 503, so the Marketplace delivers the notification again."""
    token, subscription_id = azure.purchase("starter")
    tenant = azure_marketplace.register(token).tenant
    operation = azure.operation(subscription_id, "ChangePlan", plan_id="enterprise")
    set_plan = azure_marketplace.onboarder.set_plan

    def service_down(*args: Any, **kwargs: Any) -> None:
        raise ServiceFailure("set the plan", "the service is down")

    monkeypatch.setattr(azure_marketplace.onboarder, "set_plan", service_down)
    assert notify(client, azure, operation).status_code == 503
    assert azure.operations[operation["id"]]["status"] == "Succeeded"  # answered first
    monkeypatch.setattr(azure_marketplace.onboarder, "set_plan", set_plan)
    assert notify(client, azure, operation).json() == {"tenant": tenant, "action": "plan enterprise"}
    record = azure_marketplace.records.get(tenant)
    assert record is not None and record.plan == "enterprise" and record.plan_id == "enterprise"


def test_unsubscribe_ends_the_tenant(client: TestClient, azure: AzureFake, azure_marketplace: AzureMarketplace) -> None:
    token, subscription_id = azure.purchase("pro")
    tenant = azure_marketplace.register(token).tenant
    assert notify(client, azure, azure.operation(subscription_id, "Unsubscribe", status="Success")).json() == {
        "tenant": tenant, "action": "ended"}
    record = azure_marketplace.records.get(tenant)
    assert record is not None and record.subscription is Subscription.ENDED


def test_metering_reports_whole_units_once_per_hour_and_skips_empty_hours(
    azure_marketplace: AzureMarketplace, azure: AzureFake, deployment: Deployment
) -> None:
    token, subscription_id = azure.purchase("pro")
    registration = azure_marketplace.register(token)
    assert registration.key is not None
    then = dt.datetime.now(dt.UTC) - 3 * HOUR
    azure_marketplace.records.update(registration.tenant, lambda r: r.model_copy(update={"registered": then}))
    metering = Metering(azure_marketplace)
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)

    empty = metering.run(now=hour - 2 * HOUR + dt.timedelta(minutes=5), tenants=[registration.tenant])
    assert [m.status for m in empty.metered] == ["NothingToReport"]  # Azure refuses quantity 0: no call
    assert not [c for c in azure.calls if c[1] == "/api/batchUsageEvent"]

    deployment.redis(registration.key.secret).mget([f"k{i}" for i in range(250)])
    first = metering.run(now=hour - HOUR + dt.timedelta(minutes=5), tenants=[registration.tenant])
    assert [(m.quantity, m.status) for m in first.metered] == [(2, "Accepted")]
    sent = [e for c in azure.calls if c[1] == "/api/batchUsageEvent" for e in c[2]["request"]]
    assert sent[0]["resourceId"] == subscription_id and sent[0]["planId"] == "pro"
    assert sent[0]["dimension"] == "requests" and sent[0]["effectiveStartTime"].endswith(":00:00Z")

    record = azure_marketplace.records.get(registration.tenant)
    assert record is not None and record.unbilled_requests == 50 and record.last_metered is not None
    # A crash after sending: the same record again is a Duplicate for Azure, and settled, not billed twice.
    again = PendingUsage(timestamp=record.last_metered, quantity=2, requests_seen=record.requests_seen,
                         remainder=50)
    azure_marketplace.records.update(registration.tenant, lambda r: r.model_copy(update={"pending": again}))
    assert [m.status for m in metering.run(tenants=[registration.tenant]).metered] == ["Duplicate"]
    assert azure.billed(subscription_id) == [2]


def test_metering_keeps_the_record_pending_through_an_api_outage(
    azure_marketplace: AzureMarketplace, azure: AzureFake, deployment: Deployment
) -> None:
    token, subscription_id = azure.purchase("pro")
    registration = azure_marketplace.register(token)
    assert registration.key is not None
    deployment.redis(registration.key.secret).mget([f"k{i}" for i in range(100)])
    azure.fail_next.append(503)
    report = Metering(azure_marketplace).run(tenants=[registration.tenant])
    assert report.errors and "answered 503" in report.errors[0]
    assert azure.billed(subscription_id) == []
    assert [m.status for m in Metering(azure_marketplace).run(tenants=[registration.tenant]).metered] == ["Accepted"]
    assert azure.billed(subscription_id) == [1]


def test_an_expired_usage_event_is_settled_as_lost_and_reported(
    azure_marketplace: AzureMarketplace, azure: AzureFake, deployment: Deployment
) -> None:
    token, subscription_id = azure.purchase("pro")
    registration = azure_marketplace.register(token)
    old = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - 27 * HOUR
    stale = PendingUsage(timestamp=old, quantity=3, requests_seen=0, remainder=0)  # left by a long outage
    azure_marketplace.records.update(registration.tenant, lambda r: r.model_copy(update={"pending": stale}))
    report = Metering(azure_marketplace).run(tenants=[registration.tenant])
    assert [m.status for m in report.metered] == ["Expired"] and azure.billed(subscription_id) == []
    assert [e for e in report.errors if registration.tenant in e and "3 units" in e and "lost" in e]
    record = azure_marketplace.records.get(registration.tenant)
    assert record is not None and record.pending is None


def test_reconcile_repairs_a_missed_notification(azure_marketplace: AzureMarketplace, azure: AzureFake) -> None:
    token, subscription_id = azure.purchase("pro")
    tenant = azure_marketplace.register(token).tenant
    azure.subscriptions[subscription_id]["saasSubscriptionStatus"] = "Unsubscribed"  # the webhook never came
    webhook = Webhook(azure_marketplace, Metering(azure_marketplace))
    assert webhook.reconcile(tenant).action == "ended"
    assert webhook.reconcile(tenant).action == "unchanged"



def test_usage_azure_refuses_is_reported_and_ends_or_stays_pending(
    azure_marketplace: AzureMarketplace, azure: AzureFake, deployment: Deployment
) -> None:
    """A subscription Azure no longer knows is lost (reported); a dimension the offer lacks is the publisher's
    setup: the event stays pending (reported) and is billed once that is fixed."""
    token, gone_id = azure.purchase("pro")
    gone = azure_marketplace.register(token)
    token, subscription_id = azure.purchase("pro")
    registration = azure_marketplace.register(token)
    for bought in (gone, registration):
        assert bought.key is not None
        deployment.redis(bought.key.secret).mget([f"k{i}" for i in range(100)])
    azure.subscriptions.pop(gone_id)
    azure.dimensions.discard("requests")
    report = Metering(azure_marketplace).run(tenants=[gone.tenant, registration.tenant])
    assert {m.tenant: m.status for m in report.metered} == {
        gone.tenant: "ResourceNotFound", registration.tenant: "InvalidDimension"}
    assert [e for e in report.errors if gone.tenant in e and "lost" in e and "ResourceNotFound" in e]
    assert [e for e in report.errors if registration.tenant in e and "stays pending" in e and "InvalidDimension" in e]
    record = azure_marketplace.records.get(gone.tenant)
    assert record is not None and record.pending is None

    azure.dimensions.add("requests")
    again = Metering(azure_marketplace).run(tenants=[registration.tenant])
    assert [m.status for m in again.metered] == ["Accepted"] and again.errors == []
    assert azure.billed(subscription_id) == [1]
