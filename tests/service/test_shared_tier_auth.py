"""The shared tier's credentials: each cloud's identity flow run for real (botocore's SigV4, google-auth against a
metadata server, azure-identity's workload identity flow against a token endpoint built from Entra's published
contract), then used to log in to a real redis-server whose ACL allows only what the service needs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from botocore.credentials import Credentials

from service.cache import TenantRegistry
from service.config import ConfigError, Settings
from service.shared_tier import SharedTier
from service.shared_tier_auth import (
    AZURE_REDIS_SCOPE,
    ElastiCacheIam,
    EntraToken,
    GoogleAccessToken,
    PasswordFile,
    TierAuthError,
    TierCredentials,
    tier_credentials,
)
from tests import servers
from tests.service.test_shared_tier import PASSWORD
from tests.tlsutil import PKI

# Exactly what service/shared_tier.py sends, on its key prefix and channel: the access string the stacks give the
# pods' tier user (ElastiCache user, Azure access policy) must allow no less.
ACL = ["on", "~fs:*", "resetchannels", "&foresight:invalidate", "-@all", "+ping", "+get", "+pttl", "+set", "+del",
       "+unlink", "+scan", "+publish", "+subscribe", "+hsetnx", "+hget", "+hset", "+expire", "+hgetall"]


@pytest.fixture(scope="module")
def tier(pki: PKI) -> Iterator[servers.RedisServer]:
    with servers.redis_server(tls=(pki.ca_cert, pki.cert, pki.key), password=PASSWORD) as server:
        yield server


@pytest.fixture
def admin(tier: servers.RedisServer, pki: PKI) -> Iterator[redis.Redis]:
    """A user of the test's own, so the tests may restrict `default` (Memorystore's IAM user) and restore it."""
    options: dict[str, Any] = {"host": "localhost", "port": tier.port, "ssl": True, "ssl_ca_certs": str(pki.ca_cert)}
    with redis.Redis(**options, password=PASSWORD) as bootstrap:
        bootstrap.acl_setuser("admin", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"],
                              commands=["+@all"])
    client = redis.Redis(**options, username="admin", password=PASSWORD)
    client.flushall()
    yield client
    client.acl_setuser("default", reset=True, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"],
                       commands=["+@all"])
    client.close()


def settings_for(tier: servers.RedisServer, pki: PKI, **extra: Any) -> Settings:
    return Settings(shared_tier_url=f"rediss://localhost:{tier.port}", shared_tier_ca_file=pki.ca_cert, **extra)


async def _round_trip(settings: Settings, credentials: TierCredentials) -> tuple[bool, tuple[bytes, int] | None]:
    """Start a tier with these credentials, write one key through a tenant and read it back."""
    registry = TenantRegistry(settings)
    tier = SharedTier(settings, registry, credentials)
    await tier.start()
    fill_ok = tier.connected
    tier.fill("acme", b"k", b"v")
    deadline = time.monotonic() + 5
    found = None
    while found is None and time.monotonic() < deadline:
        found = await tier.get("acme", b"k")
    await tier.close()
    return fill_ok, found


def run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def test_aws_token_is_a_presigned_elasticache_connect_for_the_cache_and_user() -> None:
    provider = ElastiCacheIam("foresight-pods", "fs-tier", "eu-west-1",
                              credentials=Credentials("AKIDEXAMPLE", "s3cr3t"))
    user, token = provider.get_credentials()  # type: ignore[misc]
    assert user == "foresight-pods" and not token.startswith("https://")
    parts = urlsplit("https://" + token)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.hostname == "fs-tier" and parts.path == "/"
    assert (query["Action"], query["User"]) == ("connect", "foresight-pods")
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Expires"] == "900"
    assert query["X-Amz-Credential"].startswith("AKIDEXAMPLE/") and query["X-Amz-Credential"].endswith(
        "/eu-west-1/elasticache/aws4_request")
    assert len(query["X-Amz-Signature"]) == 64 and "s3cr3t" not in token
    assert provider.get_credentials() == (user, token)  # cached while valid: one signature per 15 minutes at most


def test_aws_identity_logs_in_as_the_elasticache_user(tier: servers.RedisServer, pki: PKI, admin: redis.Redis) -> None:
    admin.acl_setuser("foresight-pods", reset=True, nopass=True, enabled=True)  # ElastiCache checks the token
    admin.execute_command("ACL", "SETUSER", "foresight-pods", *ACL)
    settings = settings_for(tier, pki, shared_tier_auth="aws", shared_tier_username="foresight-pods",
                            shared_tier_aws_cache="fs-tier")
    provider = ElastiCacheIam("foresight-pods", "fs-tier", "eu-west-1", credentials=Credentials("AKID", "SECRET"))
    deadline = pytest.approx(time.time() * 1000 + 3_600_000, abs=5000)  # origin values expire in the tier
    assert run(_round_trip(settings, provider)) == (True, (b"v", deadline))
    assert admin.get("fs:acme:k") == b"v"


def test_aws_auth_needs_a_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    settings = Settings(shared_tier_url="rediss://t:6379", shared_tier_auth="aws", shared_tier_username="u",
                        shared_tier_aws_cache="c")
    with pytest.raises(ConfigError, match="AWS_REGION"):
        tier_credentials(settings)


class Metadata:
    """The GCE/GKE metadata server's token endpoint, as google-auth calls it."""

    def __init__(self) -> None:
        self.token = "ya29.fake-" + str(time.time_ns())
        self.calls = 0

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        if {k.lower(): v for k, v in headers.items()}.get("metadata-flavor") != "Google":
            return 403, "missing Metadata-Flavor"
        self.calls += 1
        if path.startswith("/computeMetadata/v1/instance/service-accounts/default/token"):
            return 200, json.dumps({"access_token": self.token, "expires_in": 3599, "token_type": "Bearer"})
        if path.startswith("/computeMetadata/v1/instance/service-accounts/default/"):
            return 200, json.dumps({"email": "pods@acme.iam.gserviceaccount.com", "scopes": ["cloud-platform"],
                                    "aliases": ["default"]})
        return 404, "not found"


def test_gcp_access_token_from_the_metadata_server_is_the_auth_password(
        tier: servers.RedisServer, pki: PKI, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.auth import compute_engine

    metadata = Metadata()
    with servers.http_server(metadata.answer) as url:
        from google.auth.compute_engine import _metadata

        # google-auth reads GCE_METADATA_HOST once, at import: point its module value at the server instead.
        monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", url.removeprefix("http://"))
        provider = GoogleAccessToken(credentials=compute_engine.Credentials())
        admin.acl_setuser("default", reset=True, enabled=True, passwords=[f"+{metadata.token}"])
        admin.execute_command("ACL", "SETUSER", "default", *ACL)
        settings = settings_for(tier, pki, shared_tier_auth="gcp")
        fill_ok, found = run(_round_trip(settings, provider))
    assert fill_ok and found is not None and found[0] == b"v"
    assert metadata.calls >= 1


class Entra:
    """Entra ID's token endpoint for the workload identity flow (client assertion = the federated token)."""

    def __init__(self, federated: str) -> None:
        self.federated = federated
        self.token = "eyJ.fake-" + str(time.time_ns())

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        tenant = path.split("/")[1]
        if path.endswith("/v2.0/.well-known/openid-configuration"):
            base = f"https://localhost:{headers.get('Host', '').split(':')[-1]}/{tenant}"
            return 200, json.dumps({"token_endpoint": f"{base}/oauth2/v2.0/token", "issuer": f"{base}/v2.0",
                                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize"})
        if path.endswith("/oauth2/v2.0/token") and method == "POST":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            if form.get("client_assertion") != self.federated or form.get("scope") != AZURE_REDIS_SCOPE:
                return 401, json.dumps({"error": "invalid_client"})
            return 200, json.dumps({"token_type": "Bearer", "expires_in": 3599, "access_token": self.token})
        return 404, json.dumps({"error": "not_found"})


def test_azure_workload_identity_token_logs_in_as_the_identitys_object_id(
        tier: servers.RedisServer, pki: PKI, admin: redis.Redis, tmp_path: Path) -> None:
    from azure.identity import WorkloadIdentityCredential

    object_id = "9f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0"
    federated = tmp_path / "azure-identity-token"
    federated.write_text("projected-service-account-token")
    entra = Entra("projected-service-account-token")
    with servers.http_server(entra.answer, tls=(pki.cert, pki.key), host="localhost") as url:
        credential = WorkloadIdentityCredential(
            tenant_id="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", client_id="12121212-3434-5656-7878-909090909090",
            token_file_path=str(federated), authority=url,
            connection_verify=str(pki.ca_cert), disable_instance_discovery=True)
        admin.acl_setuser(object_id, reset=True, enabled=True, passwords=[f"+{entra.token}"])
        admin.execute_command("ACL", "SETUSER", object_id, *ACL)
        settings = settings_for(tier, pki, shared_tier_auth="azure", shared_tier_username=object_id)
        fill_ok, found = run(_round_trip(settings, EntraToken(object_id, credential=credential)))
    assert fill_ok and found is not None and found[0] == b"v"


def test_a_failing_identity_counts_as_the_tier_failing(tier: servers.RedisServer, pki: PKI) -> None:
    class Broken:
        def get_token(self, scope: str) -> Any:
            raise RuntimeError("IMDS unreachable")

    with pytest.raises(TierAuthError, match="IMDS unreachable"):
        EntraToken("oid", credential=Broken()).get_credentials()
    settings = settings_for(tier, pki, shared_tier_auth="azure", shared_tier_username="oid")
    fill_ok, found = run(_round_trip(settings, EntraToken("oid", credential=Broken())))
    assert (fill_ok, found) == (False, None)  # the start warned, reads went on without the tier


def test_a_password_file_is_read_again_for_each_connection(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("first\n")
    provider = PasswordFile("app", secret)
    assert provider.get_credentials() == ("app", "first")
    secret.write_text("rotated")
    assert provider.get_credentials() == ("app", "rotated")
    assert tier_credentials(Settings(shared_tier_url="redis://127.0.0.1:1")) is None  # no AUTH at all
