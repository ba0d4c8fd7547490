"""Registration: a purchase's token becomes a tenant with its entitled plan and a key that works on the real
service; bad tokens, other products and unpaid purchases are refused with nothing left behind."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import subprocess
import sys
import threading

import pytest
from fastapi.testclient import TestClient

from marketplace.aws.fulfilment import AwsMarketplace
from marketplace.aws.landing import create_app
from marketplace.aws.records import CLOUD, CustomerRecord, tenant_of
from marketplace.errors import MarketplaceFailure, NotEntitled
from marketplace.records import PurchaseRecords
from marketplace.registration import Registration, register_purchase
from onboarding.errors import InvalidInput, ServiceFailure
from onboarding.journal import Journal
from onboarding.plans import PLANS
from onboarding.tenants import Onboarder
from service.security.vault_keys import VaultKeyAdmin
from service.tenancy import TenantSpec
from tests.marketplace.aws_fake import ApiError, MarketplaceFake
from tests.marketplace.conftest import Deployment


def test_a_purchase_becomes_a_tenant_with_its_plan_and_a_working_key(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment
) -> None:
    token, license_arn = fake.purchase("111122223333", "pro")
    registration = marketplace.register(token)

    assert registration.tenant == tenant_of(license_arn)
    assert registration.plan == "pro"
    assert registration.purchase == {"license_arn": license_arn, "aws_account_id": "111122223333"}
    assert registration.key is not None
    spec = deployment.key_admin.get_tenant(registration.tenant)
    assert spec is not None and spec.quota.memory_bytes == PLANS["pro"].memory_bytes
    client = deployment.redis(registration.key.secret)
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.license_arn == license_arn and record.plan == "pro"
    stored = deployment.key_admin.read_record(marketplace.records.path(registration.tenant))
    assert stored is not None and registration.key.secret not in str(stored)


def test_registering_the_same_purchase_again_issues_no_second_key(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment
) -> None:
    token, license_arn = fake.purchase("111122223333", "starter")
    first = marketplace.register(token)
    fake.tokens["regtoken-again"] = license_arn  # the buyer follows the setup link a second time
    again = marketplace.register("regtoken-again")

    assert again.tenant == first.tenant and again.key is None
    assert "already set up" in again.warnings[0]
    assert len(deployment.key_admin.list_keys(first.tenant)) == 1


def test_the_highest_entitled_plan_wins_across_pages(marketplace: AwsMarketplace, fake: MarketplaceFake) -> None:
    token, license_arn = fake.purchase("111122223333", "starter")
    fake.purchases[license_arn].entitlements += [
        {"Dimension": "enterprise", "Value": {"IntegerValue": 1},
         "ExpirationDate": dt.datetime.now(dt.UTC) - dt.timedelta(days=1)},  # expired: ignored
        {"Dimension": "pro", "Value": {"IntegerValue": 1}, "ExpirationDate": dt.datetime.now(dt.UTC)
         + dt.timedelta(days=30)},
        {"Dimension": "unmapped", "Value": {"IntegerValue": 5}},
    ]
    assert marketplace.register(token).plan == "pro"  # the fake pages one entitlement at a time


@pytest.mark.parametrize(
    ("setup", "error", "says"),
    [
        (lambda f, t: None, InvalidInput, "InvalidTokenException"),
        (lambda f, t: f.expired_tokens.add(t), InvalidInput, "ExpiredTokenException"),
        (lambda f, t: setattr(f.purchases[f.tokens[t]], "product_code", "prod-other"), InvalidInput,
         "not this listing's"),
        (lambda f, t: f.purchases[f.tokens[t]].entitlements.clear(), NotEntitled, "no entitlement"),
        (lambda f, t: f.fail_next.append(ApiError("DisabledApiException", "API disabled")), MarketplaceFailure,
         "DisabledApiException"),
    ],
    ids=["unknown-token", "expired-token", "other-product", "not-entitled", "api-refuses"],
)
def test_refused_registrations_leave_nothing_behind(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, setup, error, says
) -> None:
    token, license_arn = fake.purchase("444455556666", "pro")
    used = "regtoken-unknown" if says == "InvalidTokenException" else token
    setup(fake, used)
    with pytest.raises(error, match=says):
        marketplace.register(used)
    tenant = tenant_of(license_arn)
    assert marketplace.records.get(tenant) is None
    assert deployment.key_admin.get_tenant(tenant) is None


def test_a_double_submitted_registration_never_undoes_what_the_other_one_made(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment
) -> None:
    """B finds A's purchase record but no tenant yet, and reaches Vault's create_tenant before A creates it;
    B's activation then fails. B must not hand A's tenant a second key, nor delete what A made and showed."""
    token, license_arn = fake.purchase("111122223333", "pro")
    purchase, tenant = marketplace.resolve(token), tenant_of(license_arn)
    a_recorded, b_creating, a_done = threading.Event(), threading.Event(), threading.Event()

    class RecordsA(PurchaseRecords[CustomerRecord]):
        def create(self, tenant: str, record: CustomerRecord) -> bool:
            made = super().create(tenant, record)
            a_recorded.set()
            b_creating.wait(10)
            return made

    class KeyAdminB(VaultKeyAdmin):
        def create_tenant(self, spec: TenantSpec, *, exclusive: bool = False) -> TenantSpec:
            b_creating.set()
            a_done.wait(10)
            return super().create_tenant(spec, exclusive=exclusive)

    def record() -> CustomerRecord:
        return CustomerRecord(license_arn=license_arn, aws_account_id="111122223333",
                              product_code=purchase.product_code, plan="pro", registered=dt.datetime.now(dt.UTC))

    onboarder = marketplace.onboarder
    onboarder_b = Onboarder(KeyAdminB(deployment.key_admin.client, deployment.key_admin.mount), onboarder.admin,
                            onboarder.audit, None, onboarder.endpoints)
    results: dict[str, Registration | Exception] = {}

    def register_a() -> None:
        records = RecordsA(deployment.key_admin, CLOUD, CustomerRecord)
        results["a"] = register_purchase(records, onboarder, tenant, record(), purchase.ids())
        a_done.set()

    def register_b() -> None:
        def activation_fails() -> None:
            raise MarketplaceFailure("activate", "AWS is away")
        a_recorded.wait(10)
        try:
            results["b"] = register_purchase(marketplace.records, onboarder_b, tenant, record(), purchase.ids(),
                                             activate=activation_fails)
        except MarketplaceFailure as err:
            results["b"] = err

    threads = [threading.Thread(target=register_a), threading.Thread(target=register_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    a, b = results["a"], results["b"]
    assert isinstance(a, Registration) and a.key is not None
    assert isinstance(b, Registration) and b.key is None  # B saw A's tenant appear: "already set up", no activation
    assert [k.key_id for k in deployment.key_admin.list_keys(tenant)] == [a.key.key_id]  # never a second key
    assert deployment.key_admin.get_tenant(tenant) is not None  # the key handed to the buyer keeps working
    assert marketplace.records.get(tenant) is not None  # A's purchase record: not B's to delete
    assert marketplace.register(token).key is None  # following the link again: already set up


def test_a_service_failure_half_way_rolls_the_purchase_back(
    deployment: Deployment, fake: MarketplaceFake, settings, aws_session
) -> None:
    onboarder = deployment.onboarder(admin_url="https://127.0.0.1:1")  # the service cannot be told
    marketplace = AwsMarketplace(settings, onboarder, aws_session)
    token, license_arn = fake.purchase("777788889999", "pro")
    with pytest.raises(ServiceFailure):
        marketplace.register(token)
    tenant = tenant_of(license_arn)
    assert marketplace.records.get(tenant) is None
    assert deployment.key_admin.get_tenant(tenant) is None

    retry = AwsMarketplace(settings, deployment.onboarder(), aws_session)  # the buyer tries again: it works
    assert retry.register(token).key is not None


def test_a_registration_retried_after_its_process_died_half_way_gets_a_key(
    deployment: Deployment, fake: MarketplaceFake, settings, aws_session, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    """The first attempt recorded the purchase and created the tenant, then its process died before issuing the
    key. The retry must not answer "already set up" (no key was ever shown): the half-made tenant is rolled
    back, as the journal says, and made again with its key."""
    journal = Journal(tmp_path / "pending.json", str(deployment.key_admin.client.url))
    base = deployment.onboarder()
    onboarder = Onboarder(base.key_admin, base.admin, base.audit, journal, base.endpoints)
    marketplace = AwsMarketplace(settings, onboarder, aws_session)
    token, license_arn = fake.purchase("111122223333", "pro")
    tenant = tenant_of(license_arn)
    marketplace.records.create(tenant, CustomerRecord(
        license_arn=license_arn, aws_account_id="111122223333", product_code=fake.product_code, plan="pro",
        registered=dt.datetime.now(dt.UTC)))
    journal.begin(tenant)
    deployment.key_admin.create_tenant(TenantSpec(name=tenant))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    entries = json.loads(journal.path.read_text())
    entries[-1]["pid"], entries[-1]["start_time"] = int(dead.stdout), None
    journal.path.write_text(json.dumps(entries))

    retry = marketplace.register(token)
    assert retry.key is not None and not retry.warnings
    assert [k.key_id for k in deployment.key_admin.list_keys(tenant)] == [retry.key.key_id]
    assert journal.pending() == []


def test_the_key_never_reaches_the_logs(
    marketplace: AwsMarketplace, fake: MarketplaceFake, caplog: pytest.LogCaptureFixture
) -> None:
    token, _ = fake.purchase("111122223333", "pro")
    caplog.set_level(logging.DEBUG, logger="marketplace")
    with caplog.at_level(logging.INFO):  # botocore's own DEBUG log prints request bodies; the service runs at INFO
        registration = marketplace.register(token)
    assert registration.key is not None
    assert registration.key.secret not in caplog.text
    assert token not in caplog.text


def test_the_landing_page_shows_the_key_once_and_is_never_cached(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment
) -> None:
    client = TestClient(create_app(marketplace))
    token, _ = fake.purchase("111122223333", "pro")
    form = {"x-amzn-marketplace-token": token}

    page = client.post("/aws/register", data=form)
    assert page.status_code == 201
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    shown = re.findall(r"fsk_[A-Za-z0-9]{12}_[A-Za-z0-9_-]+", page.text)
    assert "shown once" in page.text and len(shown) >= 1
    assert deployment.redis(shown[0]).ping()  # the key on the page is the tenant's working key

    again = client.post("/aws/register", data=form, headers={"Accept": "application/json"})
    assert again.status_code == 200 and again.json()["api_key"] is None


@pytest.mark.parametrize(
    ("request_kwargs", "status", "says"),
    [
        ({"data": {"x-amzn-marketplace-token": "regtoken-nope"}}, 400, "InvalidTokenException"),
        ({"data": {"other": "x"}}, 400, "exactly one x-amzn-marketplace-token"),
        ({"json": {"x-amzn-marketplace-token": "t"}}, 400, "x-www-form-urlencoded"),
    ],
    ids=["bad-token", "no-token", "not-a-form"],
)
def test_the_landing_page_explains_bad_requests(
    marketplace: AwsMarketplace, request_kwargs, status, says
) -> None:
    reply = TestClient(create_app(marketplace)).post(
        "/aws/register", headers={"Accept": "application/json"}, **request_kwargs
    )
    assert reply.status_code == status
    assert says in reply.json()["error"]


def test_an_unpaid_purchase_gets_402_with_a_retry_hint(marketplace: AwsMarketplace, fake: MarketplaceFake) -> None:
    token, license_arn = fake.purchase("111122223333", "pro")
    fake.purchases[license_arn].entitlements.clear()
    reply = TestClient(create_app(marketplace)).post("/aws/register", data={"x-amzn-marketplace-token": token})
    assert reply.status_code == 402
    assert "try the setup link again" in reply.text
