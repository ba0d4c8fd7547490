"""Metering a scale-out deployment: two real service nodes on one real redis-server as their shared tier, the
admin API reached through either node (as a load balancer picks), AWS BatchMeterUsage (the fake) billing every
node's reads exactly once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import boto3
import pytest
import redis

from marketplace.aws.fulfilment import AwsMarketplace
from marketplace.aws.metering import Metering
from marketplace.aws.settings import AwsMarketplaceSettings
from service.tier_usage import usage_key
from tests import servers
from tests.marketplace.aws_fake import MarketplaceFake
from tests.marketplace.conftest import Deployment, serving, vaulted
from tests.marketplace.test_aws_metering import HOUR, reads, registered_hours_ago, this_hour
from tests.servers import OpenBao
from tests.service.test_shared_tier import PASSWORD, eventually


@pytest.fixture(scope="module")
def nodes(openbao: OpenBao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Deployment]]:
    work = tmp_path_factory.mktemp("scale-out")
    shared = vaulted(openbao, work)
    password_file = work / "tier-password"
    password_file.write_text(PASSWORD)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("service.shared_tier.REPORT_EVERY_S", 0.1)  # each node writes its reads 10 times a second
        with servers.redis_server(tls=(shared.pki.ca_cert, shared.pki.cert, shared.pki.key), password=PASSWORD) as tier:
            tier_settings = {"shared_tier_url": f"rediss://localhost:{tier.port}",
                             "shared_tier_password_file": password_file, "shared_tier_ca_file": shared.pki.ca_cert}
            with serving(shared, **tier_settings) as a, serving(shared, **tier_settings) as b:
                yield a, b


def tier_total(node: Deployment, tenant: str) -> int:
    url = node.svc.service.settings.shared_tier_url
    with redis.Redis.from_url(url, ssl_ca_certs=str(node.pki.ca_cert), password=PASSWORD) as tier:
        fields = tier.hgetall(usage_key(f"{tenant}.{node.svc.state.tenants.get(tenant).incarnation}"))
    return sum(int(v) for k, v in fields.items() if k.startswith(b"n:"))


def test_every_nodes_reads_are_billed_once_whichever_node_answers(
    nodes: tuple[Deployment, Deployment], fake: MarketplaceFake, settings: AwsMarketplaceSettings,
    aws_session: boto3.session.Session,
) -> None:
    a, b = nodes
    via_a, via_b = (AwsMarketplace(settings, node.onboarder(), aws_session) for node in nodes)
    token, license_arn = fake.purchase("444455556666", "pro")
    registration = via_a.register(token)
    tenant = registration.tenant
    assert via_b.onboarder.admin is not None and via_b.onboarder.admin.refresh_tenant(tenant)  # b serves it now too
    hour = this_hour()
    registered_hours_ago(fake, via_a, tenant, 3, hour)

    reads(a, registration, 150)
    reads(b, registration, 250)
    eventually(lambda: tier_total(a, tenant) == 400, "both nodes' reads in the tier")
    first = Metering(via_b).run(now=hour - 2 * HOUR + dt.timedelta(minutes=5), tenants=[tenant])
    assert (first.errors, [m.quantity for m in first.metered]) == ([], [4])

    reads(a, registration, 100)  # the node the balancer picks next started before the one that answered last
    second = Metering(via_a).run(now=hour - HOUR + dt.timedelta(minutes=5), tenants=[tenant])
    assert (second.errors, [m.quantity for m in second.metered]) == ([], [1])

    third = Metering(via_b).run(now=hour + dt.timedelta(minutes=5), tenants=[tenant])
    assert (third.errors, [m.quantity for m in third.metered]) == ([], [0])
    assert fake.usage(license_arn) == [4, 1, 0]
    record = via_a.records.get(tenant)
    assert record is not None and record.requests_seen == 500 and record.unbilled_requests == 0
    for marketplace in (via_a, via_b):
        marketplace.onboarder.close()


def _tier(node: Deployment) -> redis.Redis:
    return redis.Redis.from_url(node.svc.service.settings.shared_tier_url, ssl_ca_certs=str(node.pki.ca_cert),
                                password=PASSWORD)


def test_a_deployment_counter_that_goes_down_or_began_earlier_is_not_billed(
    nodes: tuple[Deployment, Deployment], fake: MarketplaceFake, settings: AwsMarketplaceSettings,
    aws_session: boto3.session.Session,
) -> None:
    """Billed as a restart, a counter that went down (writes a failover lost) would bill every read again, and one
    that began before the counted one (a node still serving an earlier tenant of the name) would bill that
    tenant's reads too. Both are reported and wait for a later run."""
    a, _ = nodes
    market = AwsMarketplace(settings, a.onboarder(), aws_session)
    token, license_arn = fake.purchase("555566667777", "pro")
    registration = market.register(token)
    tenant = registration.tenant
    hour = this_hour()
    registered_hours_ago(fake, market, tenant, 4, hour)
    reads(a, registration, 300)
    key = usage_key(f"{tenant}.{a.svc.state.tenants.get(tenant).incarnation}")
    with _tier(a) as tier:
        eventually(lambda: tier.hget(key, "since"), "a's first write")
        since = tier.hget(key, "since")
        tier.hset(key, b"n:gone.1@" + since, 100)  # a node that served 100 reads, then stopped
        first = Metering(market).run(now=hour - 3 * HOUR + dt.timedelta(minutes=5), tenants=[tenant])
        assert (first.errors, [m.quantity for m in first.metered]) == ([], [4])
        tier.hdel(key, b"n:gone.1@" + since)  # a failover lost its last write: the sum is 100 below what was billed
        down = Metering(market).run(now=hour - 2 * HOUR + dt.timedelta(minutes=5), tenants=[tenant])
        assert down.metered == [] and "counter went down (300 reads, 400 billed already)" in down.errors[0]

    market.records.update(tenant, lambda r: r.model_copy(update={"counting_since": r.counting_since + 3600}))
    earlier = Metering(market).run(now=hour - 2 * HOUR + dt.timedelta(minutes=6), tenants=[tenant])
    assert earlier.metered == [] and "before the one its last record counted" in earlier.errors[0]
    market.records.update(tenant, lambda r: r.model_copy(update={"counting_since": r.counting_since - 3600}))

    reads(a, registration, 200)  # past what was billed: the 100 beyond it are new
    later = Metering(market).run(now=hour - HOUR + dt.timedelta(minutes=5), tenants=[tenant])
    assert (later.errors, [m.quantity for m in later.metered]) == ([], [1])
    assert fake.usage(license_arn) == [4, 1]
    market.onboarder.close()
