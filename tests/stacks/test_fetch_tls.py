"""The node's boot-time Vault client (stacks/boot/fetch_tls.py), checked against botocore, hvac and OpenBao.

OpenBao has no AWS auth method, so the AWS login itself is proven by signing: the signature equals botocore's
and the request matches what hvac's `iam_login` sends. The GCP login runs for real against OpenBao's jwt auth
method, which trusts a test key as Google's issuer; a fake metadata server hands out tokens signed with it.
Everything after the login (reading the TLS secret, writing the files, revoking the token) and the node's
Vault policy run against a real OpenBao server.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from stacks.boot import fetch_tls
from stacks.spec import StackSpec
from stacks.vault import VaultLayout
from tests.servers import OpenBao
from tests.stacks.mockrun import REQUIRED_CONFIG, run_program

CREDENTIALS = fetch_tls.AwsCredentials(
    "ASIAEXAMPLEEXAMPLE12", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEMOCKTOKEN=="
)
MATERIAL = {
    "certificate": "-----BEGIN CERTIFICATE-----\nSERVER\n-----END CERTIFICATE-----\n",
    "private_key": "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n",
    "issuing_ca": "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
}


def _botocore_signed(now: datetime.datetime | None = None) -> AWSRequest:
    request = AWSRequest(
        method="POST",
        url=fetch_tls.STS_URL,
        data=fetch_tls.STS_BODY,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    credentials = Credentials(CREDENTIALS.access_key_id, CREDENTIALS.secret_access_key, CREDENTIALS.session_token)
    SigV4Auth(credentials, "sts", fetch_tls.STS_REGION).add_auth(request)
    return request


def test_a_refresh_replaces_each_file_whole_and_leaves_nothing_else(tmp_path: Path) -> None:
    """The daily refresh rewrites the files under the running service: its hot reload must read the old file or
    the new one, never a half-written one, so each is renamed into place rather than rewritten."""
    out = tmp_path / "tls"
    fetch_tls.write_tls_files(out, MATERIAL, None)
    with (out / "tls.crt").open() as held:  # what a reader had open when the refresh came
        renewed = {**MATERIAL, "certificate": MATERIAL["certificate"].replace("SERVER", "RENEWED")}
        fetch_tls.write_tls_files(out, renewed, None)
        assert held.read() == MATERIAL["certificate"]
    assert (out / "tls.crt").read_text() == renewed["certificate"]
    assert sorted(path.name for path in out.iterdir()) == ["ca.pem", "tls.crt", "tls.key"]
    assert {stat.S_IMODE((out / name).stat().st_mode) for name in ("ca.pem", "tls.crt", "tls.key")} == {0o640}


def test_a_run_leaves_another_runs_staging_files_alone(tmp_path: Path) -> None:
    """A service start and the timer may write at once; neither may delete (or rename) the other's staging file."""
    out = tmp_path / "tls"
    out.mkdir()
    for name in (".tls.crt.tmp", ".tls.key.tmp", ".ca.pem.tmp"):
        (out / name).write_text("the other run's half-written file")
    fetch_tls.write_tls_files(out, MATERIAL, None)
    assert (out / ".tls.crt.tmp").read_text() == "the other run's half-written file"
    assert (out / "tls.crt").read_text() == MATERIAL["certificate"]


def test_signature_equals_botocores() -> None:
    reference = _botocore_signed()
    now = datetime.datetime.strptime(reference.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    ours = fetch_tls.sign_get_caller_identity(CREDENTIALS, now)
    assert ours["Authorization"] == reference.headers["Authorization"]
    assert ours["X-Amz-Security-Token"] == CREDENTIALS.session_token


def test_login_request_matches_hvac_iam_login() -> None:
    captured: dict[str, Any] = {}

    class Capture(hvac.adapters.JSONAdapter):
        def login(self, url: str, use_token: bool = True, **kwargs: Any) -> dict[str, Any]:
            captured.update(url=url, **kwargs)
            return {}

    client = hvac.Client(url="https://vault.example.test:8200", adapter=Capture)
    client.auth.aws.iam_login(
        CREDENTIALS.access_key_id,
        CREDENTIALS.secret_access_key,
        CREDENTIALS.session_token,
        role="foresight-dev-node",
        mount_point="foresight-dev-aws",
    )
    reference = captured["json"]
    ours = fetch_tls.aws_login_payload("foresight-dev-node", CREDENTIALS, datetime.datetime.now(datetime.UTC))
    assert captured["url"] == "/v1/auth/foresight-dev-aws/login"
    assert sorted(ours) == sorted(reference)
    for key in ("role", "iam_http_request_method", "iam_request_url", "iam_request_body"):
        assert ours[key] == reference[key], key
    our_headers = json.loads(base64.b64decode(ours["iam_request_headers"]))
    hvac_headers = json.loads(base64.b64decode(reference["iam_request_headers"]))
    assert set(our_headers) <= set(hvac_headers)
    assert all(isinstance(values, list) and len(values) == 1 for values in our_headers.values())
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token" in our_headers["Authorization"][0]


class _Imds(BaseHTTPRequestHandler):
    """IMDSv2 as EC2 serves it: a PUT for a session token, then GETs that must carry it."""

    token = "imds-session-token"

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._reply(200, self.token)
        else:
            self._reply(400, "")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            self._reply(401, "")
        elif self.path == "/latest/meta-data/iam/security-credentials/":
            self._reply(200, "foresight-node-a1b2c3d")
        elif self.path == "/latest/meta-data/iam/security-credentials/foresight-node-a1b2c3d":
            document = {
                "AccessKeyId": CREDENTIALS.access_key_id,
                "SecretAccessKey": CREDENTIALS.secret_access_key,
                "Token": CREDENTIALS.session_token,
            }
            self._reply(200, json.dumps(document))
        else:
            self._reply(404, "")

    def _reply(self, status: int, body: str) -> None:
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def imds() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Imds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_instance_credentials_come_through_imdsv2(imds: str) -> None:
    assert fetch_tls.instance_credentials(imds) == CREDENTIALS
    with pytest.raises(fetch_tls.BootstrapError, match="HTTP 401"):
        fetch_tls.http_request("GET", f"{imds}/latest/meta-data/iam/security-credentials/")


@contextmanager
def stack_in_vault(
    openbao: OpenBao, monkeypatch: pytest.MonkeyPatch, config: Mapping[str, str], auth_method: str
) -> Iterator[tuple[hvac.Client, VaultLayout]]:
    """A stack's Vault layout in OpenBao with the TLS secret written, and fetch_tls's settings in the environment."""
    stack = f"t{os.urandom(4).hex()}"
    spec = StackSpec.from_values("foresight", stack, config.get)
    layout = VaultLayout.for_spec(spec)
    admin = openbao.client()
    admin.sys.enable_secrets_engine("kv", path=layout.kv_mount, options={"version": "2"})
    kv = admin.secrets.kv.v2
    kv.create_or_update_secret(layout.tls_path, secret=MATERIAL, mount_point=layout.kv_mount)
    kv.create_or_update_secret("deployments/other/tls", secret=MATERIAL, mount_point=layout.kv_mount)
    kv.create_or_update_secret("tenants/acme/keys/k1", secret={"hash": "abc"}, mount_point=layout.kv_mount)
    kv.create_or_update_secret("keyids/k1", secret={"tenant": "acme"}, mount_point=layout.kv_mount)
    admin.sys.create_or_update_policy(layout.policy, layout.node_policy_hcl())
    for name, value in {
        "FORESIGHT_VAULT_ADDR": openbao.addr,
        "FORESIGHT_VAULT_AUTH_METHOD": auth_method,
        "FORESIGHT_VAULT_AUTH_MOUNT": layout.auth_mount,
        "FORESIGHT_VAULT_ROLE": layout.role,
        "FORESIGHT_VAULT_KV_MOUNT": layout.kv_mount,
        "FORESIGHT_TLS_VAULT_PATH": layout.tls_path,
    }.items():
        monkeypatch.setenv(name, value)
    try:
        yield admin, layout
    finally:
        admin.sys.disable_secrets_engine(layout.kv_mount)


@dataclass
class JwtStack:
    """A Google Cloud or Azure stack's Vault wiring in OpenBao, as its Pulumi program registers it."""

    admin: hvac.Client
    layout: VaultLayout
    role: dict[str, Any]  # the jwt role as the program registers it
    vault_tokens: list[str]  # what fetch_tls's real jwt login returned, so a test can check they were revoked


def bind_node_role(admin: hvac.Client, layout: VaultLayout, role: Mapping[str, Any], **changes: Any) -> None:
    """Create the program's jwt role in OpenBao as `pulumi up` would (with `changes` to its fields)."""
    fields = {
        "role_type": role["roleType"],
        "user_claim": role["userClaim"],
        "bound_audiences": role["boundAudiences"],
        "bound_claims": role["boundClaims"],
        "bound_claims_type": role["boundClaimsType"],
        "token_policies": role["tokenPolicies"],
        "token_ttl": int(role["tokenTtl"]),
        "token_max_ttl": int(role["tokenMaxTtl"]),
        **changes,
    }
    admin.auth.jwt.create_role(role["roleName"], allowed_redirect_uris=[], path=layout.auth_mount, **fields)


@contextmanager
def jwt_stack_in_vault(
    openbao: OpenBao, monkeypatch: pytest.MonkeyPatch, config: Mapping[str, str], issuer_key_pem: str
) -> Iterator[JwtStack]:
    """`stack_in_vault` plus the jwt auth method and node role that the stack's Pulumi program registers, made in
    OpenBao; the one test key `issuer_key_pem` stands in for the keys the cloud publishes at its discovery URL."""
    with stack_in_vault(openbao, monkeypatch, config, "jwt") as (admin, layout):
        run = run_program(config, stack=layout.stack)
        backend = run.one("vault:jwt/authBackend:AuthBackend").props
        role = run.one("vault:jwt/authBackendRole:AuthBackendRole").props
        assert (backend["path"], role["roleName"], role["tokenPolicies"]) == (
            layout.auth_mount,
            layout.role,
            [layout.policy],
        )
        admin.sys.enable_auth_method(backend["type"], path=layout.auth_mount)
        admin.auth.jwt.configure(
            jwt_validation_pubkeys=[issuer_key_pem], bound_issuer=backend["boundIssuer"], path=layout.auth_mount
        )
        bind_node_role(admin, layout, role)
        vault_tokens: list[str] = []

        def recording_login(settings: Mapping[str, str]) -> str:
            vault_tokens.append(fetch_tls.login_jwt(settings))
            return vault_tokens[-1]

        monkeypatch.setitem(fetch_tls.LOGIN_METHODS, "jwt", recording_login)
        try:
            yield JwtStack(admin, layout, role, vault_tokens)
        finally:
            admin.sys.disable_auth_method(layout.auth_mount)


def node_settings() -> dict[str, str]:
    """What `main` hands to `fetch`: the required settings and the jwt ones that are set."""
    return {name: os.environ[name] for name in fetch_tls.SETTINGS + fetch_tls.JWT_SETTINGS if name in os.environ}


def assert_refused_without_echo(
    stack: JwtStack, issued: list[str], claim: str, out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A login with another machine's token: Vault refuses it on `claim`, `fetch` and `main` fail, no token
    (the cloud's or Vault's) appears in an error, and no file is written."""
    refused = f"auth/{stack.layout.auth_mount}/login -> HTTP 400"
    with pytest.raises(fetch_tls.BootstrapError, match=refused) as info:
        fetch_tls.fetch(node_settings(), out, None)
    assert fetch_tls.main(["--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("fetch_tls: POST ") and "HTTP 400" in error
    assert "error validating claims" in error and claim in error
    assert len(issued) == 2
    for jwt in issued:
        assert jwt not in str(info.value) and jwt not in error
    assert stack.vault_tokens == []
    assert not out.exists()


@pytest.fixture
def node_vault(openbao: OpenBao, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[hvac.Client, VaultLayout, str]]:
    """An AWS stack's Vault layout in OpenBao, and a token holding only the node policy."""
    with stack_in_vault(openbao, monkeypatch, REQUIRED_CONFIG, "aws") as (admin, layout):
        token = admin.auth.token.create(policies=[layout.policy], ttl="5m")["auth"]["client_token"]
        # OpenBao ships no AWS auth method; stand in for the login with a token of the node's policy.
        monkeypatch.setitem(fetch_tls.LOGIN_METHODS, "aws", lambda _settings: token)
        yield admin, layout, token


def test_fetch_writes_tls_files_readable_by_the_service_group_and_revokes_its_token(
    node_vault: tuple[hvac.Client, VaultLayout, str], tmp_path: Path
) -> None:
    admin, _layout, token = node_vault
    out = tmp_path / "tls"
    assert fetch_tls.main(["--out", str(out), "--group", str(os.getgid())]) == 0
    assert (out / "tls.crt").read_text() == MATERIAL["certificate"]
    assert (out / "tls.key").read_text() == MATERIAL["private_key"]
    assert (out / "ca.pem").read_text() == MATERIAL["issuing_ca"]
    for name in ("tls.crt", "tls.key", "ca.pem"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o640
        assert (out / name).stat().st_gid == os.getgid()
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert sorted(path.name for path in out.iterdir()) == ["ca.pem", "tls.crt", "tls.key"]
    with pytest.raises(hvac.exceptions.Forbidden):
        admin.auth.token.lookup(token)


def test_fetch_fails_cleanly_without_the_secret_and_still_revokes(
    node_vault: tuple[hvac.Client, VaultLayout, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin, layout, token = node_vault
    admin.secrets.kv.v2.delete_metadata_and_all_versions(layout.tls_path, mount_point=layout.kv_mount)
    assert fetch_tls.main(["--out", str(tmp_path / "tls")]) == 1
    error = capsys.readouterr().err
    assert "HTTP 404" in error and token not in error
    with pytest.raises(hvac.exceptions.Forbidden):
        admin.auth.token.lookup(token)


def test_node_policy_reads_tenants_own_tls_and_scrape_token_but_writes_nothing(
    node_vault: tuple[hvac.Client, VaultLayout, str], openbao: OpenBao
) -> None:
    admin, layout, token = node_vault
    node = hvac.Client(url=openbao.addr, token=token)
    kv = node.secrets.kv.v2
    mount = layout.kv_mount
    scrape = {"token": "a" * 64}
    for path in (layout.metrics_path, "deployments/other/metrics"):
        admin.secrets.kv.v2.create_or_update_secret(path, secret=scrape, mount_point=mount)
    assert kv.read_secret_version(layout.metrics_path, mount_point=mount, raise_on_deleted_version=True)["data"][
        "data"
    ] == scrape
    assert kv.read_secret_version("tenants/acme/keys/k1", mount_point=mount, raise_on_deleted_version=True)["data"][
        "data"
    ] == {"hash": "abc"}
    assert kv.list_secrets("tenants/", mount_point=mount)["data"]["keys"] == ["acme/"]
    assert kv.read_secret_version("keyids/k1", mount_point=mount, raise_on_deleted_version=True)["data"]["data"] == {
        "tenant": "acme"
    }
    assert kv.read_secret_version(layout.tls_path, mount_point=mount, raise_on_deleted_version=True)["data"]["data"]
    forbidden = [
        lambda: kv.create_or_update_secret("tenants/acme/keys/k2", secret={"hash": "x"}, mount_point=mount),
        lambda: kv.create_or_update_secret(layout.tls_path, secret=MATERIAL, mount_point=mount),
        lambda: kv.create_or_update_secret("keyids/k2", secret={"tenant": "evil"}, mount_point=mount),
        lambda: kv.delete_metadata_and_all_versions("tenants/acme/keys/k1", mount_point=mount),
        lambda: kv.read_secret_version("deployments/other/tls", mount_point=mount, raise_on_deleted_version=True),
        lambda: kv.create_or_update_secret(layout.metrics_path, secret=scrape, mount_point=mount),
        lambda: kv.delete_metadata_and_all_versions(layout.metrics_path, mount_point=mount),
        lambda: kv.read_secret_version("deployments/other/metrics", mount_point=mount, raise_on_deleted_version=True),
    ]
    for attempt in forbidden:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()


def test_main_names_missing_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in fetch_tls.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert fetch_tls.main(["--out", "/nonexistent"]) == 2
    assert "FORESIGHT_VAULT_ADDR" in capsys.readouterr().err
