"""Marketplace fulfilment against real parts where they run here: OpenBao for tenants and purchase records,
the real service (TLS, Vault key source, admin API) for quotas, keys and usage counters, moto for SQS and
EventBridge, azure-identity and PyJWT as the Azure side's clients. Only the marketplaces' own APIs (and Entra
ID's token and key endpoints) are fakes, built from their published contracts (aws_fake.py, azure_fake.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import hvac
import pytest
import redis

from marketplace.aws.fulfilment import AwsMarketplace
from marketplace.aws.settings import AwsMarketplaceSettings
from marketplace.azure.fulfilment import AzureMarketplace
from marketplace.azure.settings import AzureMarketplaceSettings
from marketplace.gcp.fulfilment import GcpMarketplace
from marketplace.gcp.settings import GcpMarketplaceSettings
from onboarding.admin_client import AdminClient
from onboarding.auditing import OnboardingAudit
from onboarding.context import Endpoints
from onboarding.tenants import Onboarder
from service.security.admin_token import new_admin_token
from service.security.apikeys import hash_key
from service.security.vault_keys import VaultKeyAdmin, service_policy
from tests.marketplace.aws_fake import MarketplaceFake, marketplace_fake
from tests.marketplace.azure_fake import AzureFake, azure_fake
from tests.marketplace.gcp_fake import PRODUCT as GCP_PRODUCT
from tests.marketplace.gcp_fake import GcpFake, gcp_fake
from tests.servers import MotoServer, OpenBao
from tests.service.harness import RunningService, running_service
from tests.tlsutil import PKI, make_pki

MOUNT = "fs-mp"
SERVICE_POLICY = "fs-mp-service"
PRODUCT = "prod-foresight-test"
UNIT = 100  # requests per metered unit in these tests, so a few hundred reads make whole units


@dataclass
class Deployment:
    svc: RunningService
    pki: PKI
    key_admin: VaultKeyAdmin
    admin_url: str
    admin_token: str
    endpoints: Endpoints
    audit_log: Path

    def onboarder(self, admin_url: str | None = None) -> Onboarder:
        admin = AdminClient(admin_url or self.admin_url, self.admin_token, ca_cert=self.pki.ca_cert)
        return Onboarder(self.key_admin, admin, OnboardingAudit(self.audit_log), None, self.endpoints)

    def redis(self, api_key: str) -> redis.Redis:
        return redis.Redis(port=self.svc.resp_port, ssl=True, ssl_ca_certs=str(self.pki.ca_cert), password=api_key)


@dataclass
class Vaulted:
    """What every service node of a deployment shares: the Vault key source, TLS and the admin token."""

    pki: PKI
    key_admin: VaultKeyAdmin
    admin_token: str
    settings: dict[str, Any]
    audit_log: Path


def vaulted(openbao: OpenBao, work: Path) -> Vaulted:
    root: hvac.Client = openbao.client()
    if f"{MOUNT}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
    root.sys.create_or_update_policy(SERVICE_POLICY, service_policy(MOUNT))
    pki = make_pki(work / "pki")
    token_file = work / "vault-token"
    token_file.write_text(root.auth.token.create(policies=[SERVICE_POLICY], ttl="1h")["auth"]["client_token"])
    token_file.chmod(0o600)
    admin_token = new_admin_token()
    settings = {
        "tls_cert_file": pki.cert, "tls_key_file": pki.key, "vault_addr": openbao.addr, "vault_token_file": token_file,
        "vault_kv_mount": MOUNT, "admin_token_hash": hash_key(admin_token), "auth_cache_ttl_s": 0.2,
    }
    return Vaulted(pki, VaultKeyAdmin(root, MOUNT), admin_token, settings, work / "onboarding-audit.log")


@contextmanager
def serving(shared: Vaulted, **extra: Any) -> Iterator[Deployment]:
    """One service node of the deployment, with `extra` settings."""
    with running_service(**shared.settings, **extra) as svc:
        endpoints = Endpoints("localhost", svc.resp_port, svc.endpoints.http_url, shared.pki.ca_cert)
        yield Deployment(svc, shared.pki, shared.key_admin, svc.endpoints.http_url, shared.admin_token, endpoints,
                         shared.audit_log)


@pytest.fixture(scope="module")
def deployment(openbao: OpenBao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with serving(vaulted(openbao, tmp_path_factory.mktemp("marketplace"))) as running:
        yield running


@pytest.fixture
def fake() -> Iterator[MarketplaceFake]:
    with marketplace_fake(PRODUCT, {"starter", "pro", "enterprise", "requests"}) as running:
        yield running


@pytest.fixture
def aws_session() -> boto3.session.Session:
    return boto3.session.Session(region_name="us-east-1", aws_access_key_id="testing",
                                 aws_secret_access_key="testing")


@pytest.fixture
def settings(fake: MarketplaceFake, moto_server: MotoServer) -> AwsMarketplaceSettings:
    return AwsMarketplaceSettings(
        product_code=PRODUCT, metering_endpoint_url=fake.endpoint, entitlement_endpoint_url=fake.endpoint,
        sqs_endpoint_url=moto_server.endpoint, requests_per_unit=UNIT,
    )


@pytest.fixture
def marketplace(
    deployment: Deployment, settings: AwsMarketplaceSettings, aws_session: boto3.session.Session
) -> Iterator[AwsMarketplace]:
    onboarder = deployment.onboarder()
    yield AwsMarketplace(settings, onboarder, aws_session)
    onboarder.close()


AZURE_OFFER = "foresight-saas"


@pytest.fixture
def azure(deployment: Deployment) -> Iterator[AzureFake]:
    with azure_fake(deployment.pki, AZURE_OFFER, {"requests"}) as running:
        yield running


@pytest.fixture
def azure_settings(azure: AzureFake, monkeypatch: pytest.MonkeyPatch) -> AzureMarketplaceSettings:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", azure.client_secret)  # azure-identity's variable, read at connect
    return AzureMarketplaceSettings(
        tenant_id=azure.tenant_id, client_id=azure.client_id, offer_id=AZURE_OFFER, api_url=azure.base,
        authority=azure.base, ca_file=azure.pki.ca_cert, requests_per_unit=UNIT,
    )


@pytest.fixture
def azure_marketplace(deployment: Deployment, azure_settings: AzureMarketplaceSettings) -> Iterator[AzureMarketplace]:
    onboarder = deployment.onboarder()
    marketplace = AzureMarketplace(azure_settings, onboarder)
    yield marketplace
    marketplace.api.close()
    onboarder.close()


GCP_SERVICE = "foresight.endpoints.foresight-partner.cloud.goog"


@pytest.fixture
def gcp(deployment: Deployment) -> Iterator[GcpFake]:
    with gcp_fake(deployment.pki, GCP_SERVICE) as running:
        yield running


@pytest.fixture
def gcp_settings(gcp: GcpFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GcpMarketplaceSettings:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(gcp.key_file(tmp_path)))  # google-auth's own variable
    return GcpMarketplaceSettings(
        provider_id=gcp.provider, signup_audience=gcp.audience, service_name=GCP_SERVICE, product=GCP_PRODUCT,
        subscription="projects/foresight-partner/subscriptions/procurement", requests_per_unit=UNIT,
        procurement_url=gcp.base, pubsub_url=gcp.base, servicecontrol_url=gcp.base, certs_url=gcp.certs_url,
        ca_file=gcp.pki.ca_cert,
    )


@pytest.fixture
def gcp_marketplace(deployment: Deployment, gcp_settings: GcpMarketplaceSettings) -> Iterator[GcpMarketplace]:
    onboarder = deployment.onboarder()
    marketplace = GcpMarketplace(gcp_settings, onboarder)
    yield marketplace
    marketplace.api.close()
    onboarder.close()
