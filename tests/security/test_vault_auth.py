"""Logging in to Vault: token and AppRole on a real OpenBao with renewal; AWS IAM signing checked by moto's
STS; GCP and Azure identity tokens from fake metadata endpoints, verified by OpenBao's real jwt auth method."""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import hvac
import pytest
import requests
from botocore.credentials import Credentials
from pydantic import SecretStr

from service.security.vault_auth import (
    VaultAuthError,
    VaultAuthSettings,
    VaultSession,
    aws_iam_login_payload,
    login,
)
from tests.security.conftest import AuthMoto
from tests.security.helpers import unique
from tests.security.metadata_fakes import FakeMetadata, JwtIssuer, fake_metadata, fake_vault_aws_auth
from tests.servers import OpenBao

SERVER_ID = "vault.foresight.example"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def policies_of(client: hvac.Client) -> list[str]:
    return list(client.auth.token.lookup_self()["data"]["policies"])


# -- token and AppRole -----------------------------------------------------------------------------------------


def test_token_login_from_value_and_file(openbao: OpenBao, bao_root: hvac.Client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    token = bao_root.auth.token.create(policies=["foresight-service"], ttl="1h")["auth"]["client_token"]
    session = VaultSession(VaultAuthSettings(addr=openbao.addr, token=SecretStr(token)))
    session.login()
    assert "foresight-service" in policies_of(session.client)
    (tmp_path / "token").write_text(token + "\n")
    auth = login(VaultAuthSettings(addr=openbao.addr, token_file=tmp_path / "token"))
    assert auth["renewable"] is True


def test_token_is_renewed_before_it_expires(openbao: OpenBao, bao_root: hvac.Client) -> None:
    token = bao_root.auth.token.create(policies=["foresight-service"], ttl="1h")["auth"]["client_token"]
    clock = FakeClock()
    session = VaultSession(VaultAuthSettings(addr=openbao.addr, token=SecretStr(token)), clock=clock)
    session.login()
    clock.now += 1000  # a third of the lease used: nothing to do yet
    session.refresh_if_needed()
    assert session.renewals == 0
    clock.now += 1500  # two thirds used: renew
    session.refresh_if_needed()
    assert (session.renewals, session.logins) == (1, 1)
    assert session.client.auth.token.lookup_self()["data"]["ttl"] > 3500


@pytest.fixture(scope="module")
def approle(bao_root: hvac.Client) -> tuple[str, str]:
    if "approle/" not in bao_root.sys.list_auth_methods()["data"]:
        bao_root.sys.enable_auth_method("approle")
    bao_root.auth.approle.create_or_update_approle(
        "foresight-svc", token_policies=["foresight-service"], token_ttl="4s", token_max_ttl="6s"
    )
    role_id = bao_root.auth.approle.read_role_id("foresight-svc")["data"]["role_id"]
    secret_id = bao_root.auth.approle.generate_secret_id("foresight-svc")["data"]["secret_id"]
    return role_id, secret_id


def test_approle_session_renews_then_logs_in_again_at_max_ttl(
    openbao: OpenBao, approle: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    role_id, secret_id = approle
    settings = VaultAuthSettings(addr=openbao.addr, method="approle", role_id=role_id, secret_id=SecretStr(secret_id))
    # Renewing once a quarter of a lease is used, every lease kept is 3 s or more (a shorter renewal means a new
    # login): each token has 2.25 s or more left when it is renewed, slack for a loaded box.
    session = VaultSession(settings, renew_fraction=0.25)
    with caplog.at_level(logging.INFO, logger="service.security.vault_auth"):
        session.start(check_interval=0.1)
        try:
            deadline = time.monotonic() + 7.0  # longer than the 6 s max TTL of any one token
            while time.monotonic() < deadline:
                session.client.auth.token.lookup_self()  # raises Forbidden once a token lapses
                time.sleep(0.2)
        finally:
            session.stop()
    assert session.renewals >= 1
    assert session.logins >= 2
    # The new login came when a renewal fell short, before the token lapsed, not once renewing it failed.
    assert "renewal reached its max TTL; logging in again" in caplog.text
    assert "renewal failed" not in caplog.text


def test_wrong_approle_secret_is_refused_without_echoing_it(openbao: OpenBao, approle: tuple[str, str]) -> None:
    wrong = "0f0f0f0f-dead-beef-0000-000000000000"
    settings = VaultAuthSettings(addr=openbao.addr, method="approle", role_id=approle[0], secret_id=SecretStr(wrong))
    with pytest.raises(VaultAuthError, match="refused the approle login") as info:
        login(settings)
    assert wrong not in str(info.value)
    assert wrong not in repr(settings)


def test_unreachable_vault_is_a_clear_error() -> None:
    settings = VaultAuthSettings(addr="http://127.0.0.1:9", token=SecretStr("s.nope"), timeout=1)
    with pytest.raises(VaultAuthError, match="cannot reach Vault"):
        login(settings)


# -- AWS IAM ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AwsIdentity:
    access_key: str
    secret_key: str
    arn: str


@pytest.fixture(scope="module")
def aws_identity(auth_moto: AuthMoto) -> AwsIdentity:
    iam = boto3.client(
        "iam",
        endpoint_url=auth_moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    user = iam.create_user(UserName="foresight-node")["User"]
    key = iam.create_access_key(UserName="foresight-node")["AccessKey"]
    return AwsIdentity(key["AccessKeyId"], key["SecretAccessKey"], user["Arn"])


def replay_to_sts(payload: dict[str, str], sts_endpoint: str) -> requests.Response:
    """What Vault's aws auth does with a login: send the signed request to STS."""
    url = base64.b64decode(payload["iam_request_url"]).decode()
    headers = {k: v[0] for k, v in json.loads(base64.b64decode(payload["iam_request_headers"])).items()}
    headers["Host"] = urllib.parse.urlparse(url).netloc
    return requests.post(
        sts_endpoint + "/", data=base64.b64decode(payload["iam_request_body"]), headers=headers, timeout=5
    )


def test_aws_login_payload_has_the_shape_vault_expects(aws_identity: AwsIdentity) -> None:
    creds = Credentials(aws_identity.access_key, aws_identity.secret_key, "session-token-xyz")
    payload = aws_iam_login_payload(role="foresight", header_value=SERVER_ID, credentials=creds)
    assert set(payload) == {
        "iam_http_request_method",
        "iam_request_url",
        "iam_request_body",
        "iam_request_headers",
        "role",
    }
    assert payload["iam_http_request_method"] == "POST"
    assert base64.b64decode(payload["iam_request_url"]) == b"https://sts.amazonaws.com/"
    assert base64.b64decode(payload["iam_request_body"]) == b"Action=GetCallerIdentity&Version=2011-06-15"
    headers = json.loads(base64.b64decode(payload["iam_request_headers"]))
    assert all(isinstance(v, list) and len(v) == 1 for v in headers.values())
    authorization = headers["Authorization"][0]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={aws_identity.access_key}/")
    assert "/us-east-1/sts/aws4_request" in authorization
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date", "x-vault-aws-iam-server-id", "x-amz-security-token"} <= set(signed)
    assert headers["X-Amz-Security-Token"] == ["session-token-xyz"]
    assert aws_identity.secret_key not in json.dumps(payload)


def test_aws_signature_is_accepted_by_sts_and_tampering_is_not(aws_identity: AwsIdentity, auth_moto: AuthMoto) -> None:
    creds = Credentials(aws_identity.access_key, aws_identity.secret_key)
    payload = aws_iam_login_payload(role="foresight", header_value=SERVER_ID, credentials=creds)
    reply = replay_to_sts(payload, auth_moto.endpoint)
    assert reply.status_code == 200, reply.text
    assert f"<Arn>{aws_identity.arn}</Arn>" in reply.text
    headers = json.loads(base64.b64decode(payload["iam_request_headers"]))
    headers["X-Vault-AWS-IAM-Server-ID"] = ["another-vault.example"]  # replay against another Vault
    forged = {**payload, "iam_request_headers": base64.b64encode(json.dumps(headers).encode()).decode()}
    assert replay_to_sts(forged, auth_moto.endpoint).status_code == 403


def test_aws_login_end_to_end_through_a_vault_stand_in(
    aws_identity: AwsIdentity, auth_moto: AuthMoto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", aws_identity.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_identity.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    with fake_vault_aws_auth(auth_moto.endpoint, role="foresight", server_id=SERVER_ID) as vault:
        settings = VaultAuthSettings(addr=vault, method="aws", role="foresight", aws_header_value=SERVER_ID)
        session = VaultSession(settings)
        session.login()
        assert session.client.token == "s.fake-aws-token"
        with pytest.raises(VaultAuthError, match="refused the aws login"):
            login(settings.model_copy(update={"aws_header_value": "wrong-server"}))


# -- GCP and Azure identities via OpenBao's jwt auth ---------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> JwtIssuer:
    return JwtIssuer()


@pytest.fixture
def metadata(issuer: JwtIssuer) -> Iterator[FakeMetadata]:
    with fake_metadata(issuer) as fake:
        yield fake


def mount_jwt(root: hvac.Client, path: str, issuer: JwtIssuer, bound_issuer: str, role: str, audience: str) -> None:
    """OpenBao's jwt auth, trusting the test issuer's key, mounted at `path`."""
    if f"{path}/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("jwt", path=path)
    root.auth.jwt.configure(jwt_validation_pubkeys=[issuer.public_pem], bound_issuer=bound_issuer, path=path)
    root.auth.jwt.create_role(
        role,
        user_claim="sub",
        allowed_redirect_uris=[],
        bound_audiences=[audience],
        token_policies=["foresight-service"],
        token_ttl="5m",
        path=path,
    )


def test_jwt_login_with_gcp_identity_token(
    openbao: OpenBao, bao_root: hvac.Client, issuer: JwtIssuer, metadata: FakeMetadata
) -> None:
    role = unique("gce")
    mount_jwt(bao_root, "jwt", issuer, "https://accounts.google.com", role, f"http://vault/{role}")
    settings = VaultAuthSettings(
        addr=openbao.addr, method="jwt", role=role, jwt_source="gcp", gcp_metadata_url=metadata.url
    )
    session = VaultSession(settings)
    session.login()
    assert "foresight-service" in policies_of(session.client)
    path, headers = metadata.requests[-1]
    assert "format=full" in path
    assert headers["Metadata-Flavor"] == "Google"


def test_gcp_method_login_reaches_vault_with_role_and_jwt(
    openbao: OpenBao, bao_root: hvac.Client, issuer: JwtIssuer, metadata: FakeMetadata
) -> None:
    # OpenBao has no gcp plugin; a jwt method mounted at auth/gcp accepts the same {role, jwt} login body.
    role = unique("gce")
    mount_jwt(bao_root, "gcp", issuer, "https://accounts.google.com", role, f"http://vault/{role}")
    session = VaultSession(VaultAuthSettings(addr=openbao.addr, method="gcp", role=role, gcp_metadata_url=metadata.url))
    session.login()
    assert "foresight-service" in policies_of(session.client)


def test_gcp_login_with_the_wrong_audience_is_refused(
    openbao: OpenBao, bao_root: hvac.Client, issuer: JwtIssuer, metadata: FakeMetadata
) -> None:
    role = unique("gce")
    mount_jwt(bao_root, "jwt", issuer, "https://accounts.google.com", role, f"http://vault/{role}")
    settings = VaultAuthSettings(
        addr=openbao.addr,
        method="jwt",
        role=role,
        jwt_source="gcp",
        gcp_metadata_url=metadata.url,
        gcp_audience="http://vault/someone-else",
    )
    with pytest.raises(VaultAuthError, match="refused the jwt login"):
        login(settings)


def test_azure_managed_identity_login(
    openbao: OpenBao, bao_root: hvac.Client, issuer: JwtIssuer, metadata: FakeMetadata
) -> None:
    role = unique("az")
    mount_jwt(bao_root, "azure", issuer, "https://sts.windows.net/tenant/", role, "https://management.azure.com/")
    settings = VaultAuthSettings(
        addr=openbao.addr,
        method="azure",
        role=role,
        azure_imds_url=metadata.url,
        azure_client_id="user-assigned-client-id",
    )
    session = VaultSession(settings)
    session.login()
    assert "foresight-service" in policies_of(session.client)
    token_path = next(p for p, _ in metadata.requests if p.startswith("/metadata/identity"))
    assert "client_id=user-assigned-client-id" in token_path
    assert any(p.startswith("/metadata/instance") for p, _ in metadata.requests)


def test_missing_metadata_endpoint_says_so(openbao: OpenBao, caplog: pytest.LogCaptureFixture) -> None:
    settings = VaultAuthSettings(addr=openbao.addr, method="gcp", role="x", gcp_metadata_url="http://127.0.0.1:9")
    with caplog.at_level(logging.DEBUG), pytest.raises(VaultAuthError, match="GCP metadata server"):
        login(settings)
