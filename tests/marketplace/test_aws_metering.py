"""Metering: the real service's read counters become BatchMeterUsage records, each hour billed exactly once
through failures, crashes, unprocessed records and service restarts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from marketplace.aws.events import Reconciler
from marketplace.aws.fulfilment import AwsMarketplace, Registration
from marketplace.aws.metering import BatchMeterUsage, Metering
from marketplace.aws.records import CLOUD, CustomerRecord
from marketplace.metering import UsageMeter
from marketplace.records import PendingUsage, PurchaseRecords, Subscription
from tests.marketplace.aws_fake import ApiError, MarketplaceFake
from tests.marketplace.conftest import Deployment

HOUR = dt.timedelta(hours=1)


def reads(deployment: Deployment, registration: Registration, count: int) -> None:
    """`count` GETs on the tenant (misses count as reads too)."""
    assert registration.key is not None
    pipe = deployment.redis(registration.key.secret).pipeline(transaction=False)
    for i in range(count):
        pipe.get(f"k{i % 7}")
    pipe.execute()


@pytest.fixture
def bought(marketplace: AwsMarketplace, fake: MarketplaceFake) -> tuple[Registration, str]:
    token, license_arn = fake.purchase("111122223333", "pro")
    return marketplace.register(token), license_arn


def registered_hours_ago(fake: MarketplaceFake, marketplace: AwsMarketplace, tenant: str, hours: int,
                         hour: dt.datetime) -> None:
    """Move a purchase (its record and its license's activation) back to `hours` before `hour`, so runs at earlier
    hours (which AWS still accepts) have slots to fill. `hour` is the test's one reading of the clock: read again,
    it may have moved on to the next hour."""
    record = marketplace.records.update(tenant, lambda r: r.model_copy(update={"registered": hour - hours * HOUR}))
    fake.purchases[record.license_arn].activated = hour - hours * HOUR


def this_hour() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


def test_reads_become_whole_units_and_the_remainder_carries_over(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str]
) -> None:
    registration, license_arn = bought
    hour = this_hour()
    registered_hours_ago(fake, marketplace, registration.tenant, 3, hour)
    metering = Metering(marketplace)
    reads(deployment, registration, 250)
    first = metering.run(now=hour - 2 * HOUR + dt.timedelta(minutes=5), tenants=[registration.tenant])
    assert [(m.quantity, m.status, m.timestamp) for m in first.metered] == [(2, "Success", hour - 3 * HOUR)]

    again = metering.run(now=hour - 2 * HOUR + dt.timedelta(minutes=50), tenants=[registration.tenant])
    assert again.metered == [] and "already metered" in again.skipped[registration.tenant]

    reads(deployment, registration, 60)  # 50 carried + 60 = 1 unit, 10 carried
    later = metering.run(now=hour + dt.timedelta(minutes=1), tenants=[registration.tenant])
    assert [m.timestamp for m in later.metered] == [hour - HOUR]  # the hour that just ended
    assert fake.usage(license_arn) == [2, 1]
    sent = [r for op, req in fake.calls if op == "BatchMeterUsage" for r in req["UsageRecords"]]
    assert {r["CustomerAWSAccountId"] for r in sent} == {"111122223333"}
    assert {r["LicenseArn"] for r in sent} == {license_arn} and {r["Dimension"] for r in sent} == {"requests"}
    assert "CustomerIdentifier" not in sent[0]
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.unbilled_requests == 10 and record.pending is None


def test_a_failed_call_leaves_the_record_pending_and_it_is_resent_unchanged(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str]
) -> None:
    registration, license_arn = bought
    metering = Metering(marketplace)
    reads(deployment, registration, 300)
    fake.fail_next.append(ApiError("DisabledApiException", "metering is disabled"))  # not retried by botocore
    failed = metering.run(tenants=[registration.tenant])
    assert failed.errors and "DisabledApiException" in failed.errors[0]
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.pending is not None and record.pending.quantity == 3

    reads(deployment, registration, 500)  # new reads wait for the next record; the pending one goes as it was
    resent = metering.run(tenants=[registration.tenant])
    assert [(m.quantity, m.status) for m in resent.metered] == [(3, "Success")]
    assert fake.usage(license_arn) == [3]


def test_a_crash_after_sending_does_not_bill_the_hour_twice(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str]
) -> None:
    registration, license_arn = bought
    metering = Metering(marketplace)
    reads(deployment, registration, 400)
    metering.run(tenants=[registration.tenant])
    confirmed = marketplace.records.get(registration.tenant)
    assert confirmed is not None and confirmed.last_metered is not None
    lost = PendingUsage(timestamp=confirmed.last_metered, quantity=4, requests_seen=confirmed.requests_seen,
                        remainder=confirmed.unbilled_requests)
    marketplace.records.update(registration.tenant, lambda r: r.model_copy(update={"pending": lost}))  # the crash

    report = metering.run(tenants=[registration.tenant])
    assert [m.status for m in report.metered] == ["Success"]  # AWS: identical record, idempotent
    assert fake.usage(license_arn) == [4]
    assert len([op for op, _ in fake.calls if op == "BatchMeterUsage"]) == 2


def test_unprocessed_records_are_resent_next_run(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str]
) -> None:
    registration, license_arn = bought
    metering = Metering(marketplace)
    reads(deployment, registration, 100)
    fake.unprocessed_next = 1
    unprocessed = metering.run(tenants=[registration.tenant])
    assert [m.status for m in unprocessed.metered] == ["Unprocessed"]
    assert [e for e in unprocessed.errors if registration.tenant in e and "stays pending" in e]  # meter exits 6
    assert fake.usage(license_arn) == []
    assert [m.status for m in metering.run(tenants=[registration.tenant]).metered] == ["Success"]
    assert fake.usage(license_arn) == [1]


@pytest.mark.parametrize("pending_hours", [7, 26])  # AWS takes records for 6 hours
def test_a_record_too_old_for_aws_is_settled_as_lost_and_does_not_block_its_batch(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, caplog: pytest.LogCaptureFixture,
    pending_hours: int,
) -> None:
    (stale_token, _), (healthy_token, healthy_arn) = fake.purchase("111122223333", "pro"), fake.purchase(
        "444455556666", "pro")
    stale, healthy = marketplace.register(stale_token), marketplace.register(healthy_token)
    hour = this_hour()
    registered_hours_ago(fake, marketplace, stale.tenant, 30, hour)
    registered_hours_ago(fake, marketplace, healthy.tenant, 3, hour)
    metering = Metering(marketplace)
    reads(deployment, stale, 300)
    fake.fail_next.append(ApiError("DisabledApiException", "outage"))  # stays pending past AWS's window
    metering.run(now=hour - pending_hours * HOUR + dt.timedelta(minutes=5), tenants=[stale.tenant])
    reads(deployment, healthy, 200)

    with caplog.at_level("ERROR", logger="marketplace.metering"):
        report = metering.run(tenants=[stale.tenant, healthy.tenant])  # one batch: AWS refuses it as a whole
    assert {(m.tenant, m.status) for m in report.metered} == {
        (stale.tenant, "TimestampOutOfBoundsException"), (healthy.tenant, "Success")}
    assert fake.usage(healthy_arn) == [2]
    lost_hour = f"{hour - (pending_hours + 1) * HOUR:%Y-%m-%d %H:%M}"
    assert [e for e in report.errors if stale.tenant in e and lost_hour in e and "3 units" in e and "lost" in e]
    assert [r for r in caplog.records if r.levelname == "ERROR" and stale.tenant in r.getMessage()
            and lost_hour in r.getMessage() and "3 units" in r.getMessage()]
    record = marketplace.records.get(stale.tenant)
    assert record is not None and record.pending is None  # settled: later runs meter the tenant again
    reads(deployment, stale, 100)
    assert [m.status for m in metering.run(tenants=[stale.tenant]).metered] == ["Success"]


def test_a_run_that_overlaps_the_final_run_does_not_bill_the_same_reads_again(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str]
) -> None:
    registration, license_arn = bought
    before = this_hour()
    registered_hours_ago(fake, marketplace, registration.tenant, 3, before)
    reads(deployment, registration, 300)

    class EndedMeanwhile(PurchaseRecords[CustomerRecord]):
        """The license ends (and the final run meters these reads) after the regular run read the record."""

        def update(self, tenant: str, change: Callable[[CustomerRecord], CustomerRecord]) -> CustomerRecord:
            if fake.purchases[license_arn].entitlements:
                fake.deprovision(license_arn)
                assert Reconciler(marketplace, Metering(marketplace)).reconcile(tenant).action == "ended"
            return super().update(tenant, change)

    records = EndedMeanwhile(marketplace.onboarder.key_admin, CLOUD, CustomerRecord)
    regular = UsageMeter(records, marketplace.onboarder, marketplace.settings.requests_per_unit,
                         BatchMeterUsage(marketplace))
    report = regular.run(tenants=[registration.tenant])
    after = this_hour()  # the reconciler's final run reads the clock itself, somewhere between the two
    assert report.metered == [] and report.skipped[registration.tenant] == "subscription ended"
    assert fake.usage(license_arn) == [3]  # by the final run alone
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.subscription is Subscription.ENDED and record.pending is None
    assert record.last_metered in {before, after}  # the final slot: not moved back to the regular one


def test_a_service_restart_counts_the_new_counter_as_new_usage(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str]
) -> None:
    registration, license_arn = bought
    marketplace.records.update(registration.tenant, lambda r: r.model_copy(update={"requests_seen": 10**9}))
    reads(deployment, registration, 200)  # the counter (200) is below what was seen: the service restarted
    Metering(marketplace).run(tenants=[registration.tenant])
    assert fake.usage(license_arn) == [2]


def test_a_restarted_counter_that_passed_the_old_value_is_all_new_usage(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str]
) -> None:
    """The last record saw 100 reads of an earlier service process; this one has counted 200 since it started.
    Growth from 100 would bill 100 of them; the service says its counter started anew, so all 200 are billed."""
    registration, license_arn = bought
    marketplace.records.update(registration.tenant, lambda r: r.model_copy(
        update={"requests_seen": 100, "counting_since": 1.0}))  # an earlier process's counter
    reads(deployment, registration, 200)
    Metering(marketplace).run(tenants=[registration.tenant])
    assert fake.usage(license_arn) == [2]
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.counting_since not in (None, 1.0)  # this process's, for the next run


def test_many_purchases_go_in_batches_of_25(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment
) -> None:
    tenants = []
    for _ in range(27):
        token, _ = fake.purchase("222233334444", "starter")
        tenants.append(marketplace.register(token).tenant)
    report = Metering(marketplace).run(tenants=tenants)
    assert len([m for m in report.metered if m.status == "Success"]) == 27
    sizes = [len(req["UsageRecords"]) for op, req in fake.calls if op == "BatchMeterUsage"]
    assert sizes == [25, 2]


def test_metering_needs_the_admin_api(deployment: Deployment, settings, aws_session) -> None:
    onboarder = deployment.onboarder()
    onboarder.admin = None
    with pytest.raises(Exception, match="FORESIGHT_ADMIN_URL"):
        Metering(AwsMarketplace(settings, onboarder, aws_session)).run()


def test_the_first_record_is_stamped_no_earlier_than_the_registration(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str]
) -> None:
    """AWS refuses usage before the license's activation (InvalidLicenseException); the purchase's first hour is
    stamped with the registration itself, not the start of its hour."""
    registration, license_arn = bought
    reads(deployment, registration, 200)
    report = Metering(marketplace).run(tenants=[registration.tenant])
    assert [m.status for m in report.metered] == ["Success"] and report.errors == []
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.last_metered == record.registered.replace(microsecond=0)  # its second
    assert fake.usage(license_arn) == [2]


def test_an_answer_echoing_the_timestamp_without_its_seconds_still_settles_the_record(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AWS has documented that it ignores a timestamp's seconds; a first record stamped at its registration's
    second, echoed without them, matched nothing before: it stayed pending and the tenant was never metered again."""
    registration, license_arn = bought
    meter = fake._meter

    def truncating(record: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
        answer = meter(record, now)
        stamp = answer["UsageRecord"]["Timestamp"]
        return {**answer, "UsageRecord": {**answer["UsageRecord"], "Timestamp": stamp.replace(second=0)}}

    monkeypatch.setattr(fake, "_meter", truncating)
    reads(deployment, registration, 200)
    report = Metering(marketplace).run(tenants=[registration.tenant])
    assert [m.status for m in report.metered] == ["Success"] and report.errors == []
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.pending is None and fake.usage(license_arn) == [2]


def test_a_bad_license_is_isolated_and_its_batchmates_are_billed(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment
) -> None:
    purchases = [fake.purchase(f"55556666777{i}", "pro") for i in range(4)]
    registrations = [marketplace.register(token) for token, _ in purchases]
    bad, bad_arn = registrations[1], purchases[1][1]
    fake.purchases[bad_arn].valid = False  # AWS refuses every call holding its record
    for registration in registrations:
        reads(deployment, registration, 100)

    report = Metering(marketplace).run(tenants=[r.tenant for r in registrations])
    assert {m.tenant: m.status for m in report.metered} == {
        **{r.tenant: "Success" for r in registrations if r is not bad}, bad.tenant: "InvalidLicenseException"}
    assert [fake.usage(arn) for _, arn in purchases] == [[1], [], [1], [1]]
    assert [e for e in report.errors if bad.tenant in e and "lost" in e and "InvalidLicenseException" in e]
    assert len(report.errors) == 1
    record = marketplace.records.get(bad.tenant)
    assert record is not None and record.pending is None  # settled: its later hours are metered again


def test_a_refusal_that_isolates_no_record_keeps_it_pending_and_reported(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str]
) -> None:
    """Refused alone with nothing else taken, the fault may be the call's (a dimension, the listing): not lost."""
    registration, license_arn = bought
    fake.purchases[license_arn].valid = False
    reads(deployment, registration, 100)
    report = Metering(marketplace).run(tenants=[registration.tenant])
    assert [e for e in report.errors if registration.tenant in e and "stays pending" in e]
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.pending is not None and record.pending.quantity == 1
    fake.purchases[license_arn].valid = True
    assert [m.status for m in Metering(marketplace).run(tenants=[registration.tenant]).metered] == ["Success"]
    assert fake.usage(license_arn) == [1]


def test_usage_aws_will_not_bill_is_reported(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment, bought: tuple[Registration, str]
) -> None:
    registration, license_arn = bought
    reads(deployment, registration, 100)
    fake.deprovision(license_arn)
    fake.purchases[license_arn].deprovisioned = dt.datetime.now(dt.UTC) - 2 * HOUR  # past the final window
    report = Metering(marketplace).run(tenants=[registration.tenant])
    assert [m.status for m in report.metered] == ["CustomerNotSubscribed"]
    assert [e for e in report.errors if registration.tenant in e and "lost" in e and "CustomerNotSubscribed" in e]


def test_counters_from_another_service_node_are_refused(
    marketplace: AwsMarketplace, fake: MarketplaceFake, deployment: Deployment
) -> None:
    """The last record counted a process that started after the one answering now: another node answered (a
    restart only ever starts later). Its lifetime counter must not be billed as a restart's; the tenant is reported
    and skipped, the run goes on (a final metering must not stop a cancelled tenant's suspension)."""
    token, license_arn = fake.purchase("999988887777", "pro")  # an account no other test reconciles
    registration = marketplace.register(token)
    later = dt.datetime.now(dt.UTC).timestamp() + 3600
    marketplace.records.update(registration.tenant, lambda r: r.model_copy(
        update={"requests_seen": 10, "counting_since": later}))
    reads(deployment, registration, 300)
    report = Metering(marketplace).run(tenants=[registration.tenant])
    [error] = report.errors
    assert error.startswith(f"usage of {registration.tenant} not metered") and "several service nodes" in error
    assert report.metered == []
    assert fake.usage(license_arn) == []
    record = marketplace.records.get(registration.tenant)
    assert record is not None and record.pending is None
    marketplace.records.update(registration.tenant, lambda r: r.model_copy(update={"counting_since": None}))
