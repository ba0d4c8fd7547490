"""The node's boot-time Vault client (stacks/boot/fetch_tls.py), checked against botocore, hvac and OpenBao.

OpenBao has no AWS auth method, so the AWS login itself is proven by signing: the signature equals botocore's
and the request matches what hvac's `iam_login` sends. The GCP login runs for real against OpenBao's jwt auth
method, which trusts a test key as Google's issuer; a fake metadata server hands out tokens signed with it.
Everything after the login (issuing the certificate from the stack's PKI role, writing the files, revoking the
token) and the node's Vault policy run against a real OpenBao server, whose PKI mount, internal root CA and role
are made from what the stack's Pulumi program registers.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import signal
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
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from stacks.boot import fetch_tls
from stacks.cloudinit import tls_issue_settings
from stacks.spec import StackSpec
from stacks.tls import CERTIFICATE_TTL_SECONDS
from stacks.vault import VaultLayout
from tests.servers import OpenBao
from tests.stacks.mockrun import PKI_DEFAULT_ISSUER, PKI_ROLE, PKI_ROOT_CERT, REQUIRED_CONFIG, MockRun, run_program

CREDENTIALS = fetch_tls.AwsCredentials(
    "ASIAEXAMPLEEXAMPLE12", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEMOCKTOKEN=="
)
MATERIAL = {
    "certificate": "-----BEGIN CERTIFICATE-----\nSERVER\n-----END CERTIFICATE-----\n",
    "private_key": "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n",
    "issuing_ca": "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
}


def _botocore_signed(server_id: str | None = None) -> AWSRequest:
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    if server_id:
        headers["X-Vault-AWS-IAM-Server-ID"] = server_id
    request = AWSRequest(method="POST", url=fetch_tls.STS_URL, data=fetch_tls.STS_BODY, headers=headers)
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


def test_the_vault_server_id_is_signed_as_botocore_signs_it() -> None:
    """X-Vault-AWS-IAM-Server-ID must be among the signed headers, or Vault refuses the login (and a request
    signed for one Vault could be replayed to another)."""
    reference = _botocore_signed("vault.example.com")
    now = datetime.datetime.strptime(reference.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    ours = fetch_tls.sign_get_caller_identity(CREDENTIALS, now, "vault.example.com")
    assert ours["Authorization"] == reference.headers["Authorization"]
    assert "x-vault-aws-iam-server-id" in ours["Authorization"].split("SignedHeaders=")[1].split(",")[0]


def test_the_aws_login_sends_the_server_id_from_the_node_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: dict[str, Any] = {}
    monkeypatch.setattr(fetch_tls, "instance_credentials", lambda endpoint: CREDENTIALS)
    monkeypatch.setattr(fetch_tls, "vault_login", lambda settings, payload: sent.update(payload) or "token")
    settings = {"FORESIGHT_VAULT_ROLE": "foresight-node", "FORESIGHT_VAULT_AWS_HEADER_VALUE": "vault.example.com"}
    assert fetch_tls.login_aws(settings) == "token"
    headers = json.loads(base64.b64decode(sent["iam_request_headers"]))
    assert headers["X-Vault-AWS-IAM-Server-ID"] == ["vault.example.com"]
    assert "FORESIGHT_VAULT_AWS_HEADER_VALUE" in fetch_tls.AWS_SETTINGS  # main passes it on


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


@dataclass
class StackVault:
    """A stack's Vault layout made in OpenBao from its Pulumi program's registrations, and the endpoint it serves."""

    admin: hvac.Client
    layout: VaultLayout
    run: MockRun
    host: str  # the endpoint's name, which the PKI role issues for
    ca_pem: str  # the root CA certificate Vault generated (the stack's caCertificate output)
    stack: str
    config: Mapping[str, str]


def _api_fields(props: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """Recorded inputs as Vault's API takes them: snake_case names, whole numbers as integers (the engine's
    protobuf carries every number as a float)."""
    return {
        re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower(): int(value) if isinstance(value, float) else value
        for name, value in props.items()
        if name in names
    }


def install_endpoint_pki(admin: hvac.Client, run: MockRun) -> str:
    """The PKI mount, internal root CA and role the program registers, made in OpenBao with the arguments the Vault
    provider sends; returns the CA certificate."""
    [mount] = [resource.props for resource in run.of_type("vault:index/mount:Mount") if resource.props["type"] == "pki"]
    path = mount["path"]
    ttls = _api_fields(mount, "maxLeaseTtlSeconds", "defaultLeaseTtlSeconds")
    config = {name.removesuffix("_seconds"): f"{seconds}s" for name, seconds in ttls.items()}
    admin.sys.enable_secrets_engine("pki", path=path, config=config)
    issuers = install_issuing(admin, run, {})
    tidy = run.one("vault:pkiSecret/backendConfigAutoTidy:BackendConfigAutoTidy").props
    admin.write_data(f"{path}/config/auto-tidy", data=_api_fields(tidy, *(name for name in tidy if name != "backend")))
    configured = admin.read(f"{path}/config/auto-tidy")["data"]
    assert configured["enabled"] and configured["tidy_cert_store"] and configured["safety_buffer"] == 3 * 24 * 3600
    assert configured["tidy_expired_issuers"] and configured["issuer_safety_buffer"] == 365 * 24 * 3600
    [root] = run.of_type(PKI_ROOT_CERT)
    return str(admin.read(f"{path}/issuer/{issuers[root.name]}")["data"]["certificate"])


def install_issuing(admin: hvac.Client, run: MockRun, issuers: dict[str, str]) -> dict[str, str]:
    """What a `pulumi up` of `run` changes in the PKI mount, with the arguments the Vault provider sends: each root CA
    it registers that is not in `issuers` yet (resource name -> issuer id in OpenBao), the mount's default issuer and
    the endpoint role. Nothing is deleted: a dropped root is retained (stacks/tls.py). Returns `issuers`, extended."""
    for resource in run.of_type(PKI_ROOT_CERT):
        if resource.name not in issuers:
            root = resource.props
            fields = _api_fields(root, "commonName", "organization", "keyType", "keyBits", "ttl", "issuerName")
            generated = admin.write_data(f"{root['backend']}/root/generate/{root['type']}", data=fields)["data"]
            assert "private_key" not in generated  # type internal: the key stays inside Vault
            issuers[resource.name] = generated["issuer_id"]
    in_vault = {f"issuer-{name}": issuer for name, issuer in issuers.items()}  # the mock's issuer ids -> OpenBao's
    default = run.one(PKI_DEFAULT_ISSUER).props
    admin.write_data(f"{default['backend']}/config/issuers", data={"default": in_vault[default["default"]]})
    role = run.one(PKI_ROLE).props  # written as the provider's generic endpoint writes it: the JSON, to its path
    settings = json.loads(role["dataJson"])
    settings["issuer_ref"] = in_vault[settings["issuer_ref"]]
    warnings = admin.write_data(role["path"], data=settings).get("warnings") or []
    assert not [w for w in warnings if "unrecognized" in w], warnings  # OpenBao takes every field, the CIDR included
    return issuers


@contextmanager
def stack_in_vault(
    openbao: OpenBao, monkeypatch: pytest.MonkeyPatch, config: Mapping[str, str], auth_method: str
) -> Iterator[StackVault]:
    """A stack's Vault layout in OpenBao (KV mount with tenants, the PKI mount, CA and endpoint role, the node
    policy), and fetch_tls's settings in the environment as the stack writes them."""
    stack = f"t{os.urandom(4).hex()}"
    spec = StackSpec.from_values("foresight", stack, config.get)
    layout = VaultLayout.for_spec(spec)
    run = run_program(config, stack=stack)
    host = run.outputs["endpointHost"].value
    admin = openbao.client()
    admin.sys.enable_secrets_engine("kv", path=layout.kv_mount, options={"version": "2"})
    kv = admin.secrets.kv.v2
    kv.create_or_update_secret("tenants/acme/keys/k1", secret={"hash": "abc"}, mount_point=layout.kv_mount)
    kv.create_or_update_secret("keyids/k1", secret={"tenant": "acme"}, mount_point=layout.kv_mount)
    ca_pem = install_endpoint_pki(admin, run)
    assert run.one("vault:index/policy:Policy").props["policy"] == layout.node_policy_hcl()
    admin.sys.create_or_update_policy(layout.policy, layout.node_policy_hcl())
    for name, value in {
        "FORESIGHT_VAULT_ADDR": openbao.addr,
        "FORESIGHT_VAULT_AUTH_METHOD": auth_method,
        "FORESIGHT_VAULT_AUTH_MOUNT": layout.auth_mount,
        "FORESIGHT_VAULT_ROLE": layout.role,
        **tls_issue_settings(layout, host),
    }.items():
        monkeypatch.setenv(name, value)
    try:
        yield StackVault(admin, layout, run, host, ca_pem, stack, config)
    finally:
        admin.sys.disable_secrets_engine(layout.kv_mount)
        admin.sys.disable_secrets_engine(layout.pki_mount)


def assert_issued_for(out: Path, host: str, ca_pem: str, group: int | None = None) -> x509.Certificate:
    """The files fetch_tls wrote: a server certificate for exactly `host` (its only SAN, an IP SAN for an address),
    issued by the stack's CA for 30 days, with the key that matches it, each file 0640 in a 0750 directory."""
    certificate = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    key = serialization.load_pem_private_key((out / "tls.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert ca == x509.load_pem_x509_certificate(ca_pem.encode())
    certificate.verify_directly_issued_by(ca)
    assert key.public_key() == certificate.public_key()
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    try:
        expected: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        expected = x509.DNSName(host)
    assert list(sans) == [expected]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert abs(lifetime.total_seconds() - CERTIFICATE_TTL_SECONDS) <= 60  # Vault backdates by 30 s
    assert sorted(path.name for path in out.iterdir()) == ["ca.pem", "tls.crt", "tls.key"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    for name in ("tls.crt", "tls.key", "ca.pem"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o640
        if group is not None:
            assert (out / name).stat().st_gid == group
    return certificate


@dataclass
class JwtStack:
    """A Google Cloud or Azure stack's Vault wiring in OpenBao, as its Pulumi program registers it."""

    vault: StackVault
    role: dict[str, Any]  # the jwt role as the program registers it
    vault_tokens: list[str]  # what fetch_tls's real jwt login returned, so a test can check they were revoked

    @property
    def admin(self) -> hvac.Client:
        return self.vault.admin

    @property
    def layout(self) -> VaultLayout:
        return self.vault.layout


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
    with stack_in_vault(openbao, monkeypatch, config, "jwt") as vault:
        admin, layout, run = vault.admin, vault.layout, vault.run
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
            yield JwtStack(vault, role, vault_tokens)
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


@dataclass
class AwsNode:
    """An AWS stack's Vault layout in OpenBao, and the tokens of the node's policy that its logins returned."""

    vault: StackVault
    tokens: list[str]

    def login(self, _settings: Mapping[str, str] | None = None) -> str:
        """OpenBao ships no AWS auth method; stand in for the login with a fresh token of the node's policy."""
        self.tokens.append(self.vault.admin.auth.token.create(policies=[self.vault.layout.policy])["auth"]["client_token"])
        return self.tokens[-1]

    def revoked(self) -> bool:
        """Every token a login returned is revoked."""
        for token in self.tokens:
            try:
                self.vault.admin.auth.token.lookup(token)
            except hvac.exceptions.Forbidden:
                continue
            return False
        return True


@pytest.fixture
def node_vault(openbao: OpenBao, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsNode]:
    """An AWS stack's Vault layout in OpenBao, and a login that returns tokens holding only the node policy."""
    with stack_in_vault(openbao, monkeypatch, REQUIRED_CONFIG, "aws") as vault:
        node = AwsNode(vault, [])
        monkeypatch.setitem(fetch_tls.LOGIN_METHODS, "aws", node.login)
        yield node


def test_fetch_issues_a_certificate_for_exactly_the_endpoint_and_revokes_its_token(
    node_vault: AwsNode, tmp_path: Path
) -> None:
    out = tmp_path / "tls"
    assert fetch_tls.main(["--out", str(out), "--group", str(os.getgid())]) == 0
    certificate = assert_issued_for(out, node_vault.vault.host, node_vault.vault.ca_pem, group=os.getgid())
    common_names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [name.value for name in common_names] == [node_vault.vault.host]
    assert len(node_vault.tokens) == 1 and node_vault.revoked()


def test_each_run_issues_a_fresh_key_which_is_how_the_certificate_renews(node_vault: AwsNode, tmp_path: Path) -> None:
    """The daily timer's run (and the pods' tls-refresh) replaces certificate and key with new ones."""
    out = tmp_path / "tls"
    assert fetch_tls.main(["--out", str(out)]) == 0
    first = assert_issued_for(out, node_vault.vault.host, node_vault.vault.ca_pem)
    first_key = (out / "tls.key").read_text()
    assert fetch_tls.main(["--out", str(out)]) == 0
    second = assert_issued_for(out, node_vault.vault.host, node_vault.vault.ca_pem)
    assert (out / "tls.key").read_text() != first_key
    assert second.serial_number != first.serial_number
    assert second.not_valid_after_utc >= first.not_valid_after_utc
    assert len(node_vault.tokens) == 2 and node_vault.revoked()


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        ("cache.evil.example", "common name cache.evil.example not allowed by this role"),
        ("localhost", "common name localhost not allowed by this role"),
        ("203.0.113.9", "not allowed by this role"),
    ],
)
def test_the_role_refuses_a_name_that_is_not_the_endpoints_and_the_run_still_revokes(
    node_vault: AwsNode, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    name: str, refusal: str,
) -> None:
    monkeypatch.setenv("FORESIGHT_TLS_COMMON_NAME", name)
    out = tmp_path / "tls"
    assert fetch_tls.main(["--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"fetch_tls: POST {node_vault.vault.admin.url}/v1/{node_vault.vault.layout.pki_issue_path}")
    [token] = node_vault.tokens
    assert "HTTP 400" in error and refusal in error and token not in error
    assert not out.exists()
    assert node_vault.revoked()


def test_a_node_cannot_widen_its_certificate_beyond_the_endpoint(node_vault: AwsNode, openbao: OpenBao) -> None:
    """The role admits the endpoint's own name and nothing beside it: no other DNS name, subdomain or wildcard, no
    IP SAN on a DNS endpoint, no client certificate, no longer lifetime than 30 days."""
    vault = node_vault.vault
    node = hvac.Client(url=openbao.addr, token=node_vault.login())
    issue = vault.layout.pki_issue_path
    for extra in (
        {"alt_names": "cache.evil.example"},
        {"alt_names": f"x.{vault.host}"},
        {"alt_names": f"*.{vault.host}"},
        {"ip_sans": "203.0.113.9"},
        {"common_name": f"*.{vault.host}"},
    ):
        with pytest.raises(hvac.exceptions.InvalidRequest):
            node.write_data(issue, data={"common_name": vault.host, **extra})
    granted = node.write_data(issue, data={"common_name": vault.host, "ttl": "8760h"})["data"]
    certificate = x509.load_pem_x509_certificate(granted["certificate"].encode())
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime.total_seconds() <= CERTIFICATE_TTL_SECONDS + 60
    assert list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]


def test_a_long_endpoint_name_goes_in_the_sans_without_a_common_name() -> None:
    """RFC 5280 caps a common name at 64 characters; an AWS load balancer's name can be longer."""
    host = "foresight-aws-production-nlb-0123456789abcdef.elb.ap-southeast-2.amazonaws.com"
    assert len(host) > fetch_tls.MAX_COMMON_NAME
    assert fetch_tls.issue_request(host) == {"common_name": "", "alt_names": host, "exclude_cn_from_sans": True}
    assert fetch_tls.issue_request("10.42.0.9") == {
        "common_name": "10.42.0.9", "ip_sans": "10.42.0.9", "exclude_cn_from_sans": True
    }


def test_fetch_fails_cleanly_without_the_role_and_still_revokes(
    node_vault: AwsNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vault = node_vault.vault
    vault.admin.adapter.delete(f"/v1/{vault.layout.pki_mount}/roles/{vault.layout.pki_role}")
    assert fetch_tls.main(["--out", str(tmp_path / "tls")]) == 1
    error = capsys.readouterr().err
    [token] = node_vault.tokens
    assert "HTTP 400" in error and token not in error
    assert node_vault.revoked()


def test_node_policy_reads_its_keys_and_issues_its_certificate_but_nothing_else(
    node_vault: AwsNode, openbao: OpenBao
) -> None:
    vault = node_vault.vault
    admin, layout = vault.admin, vault.layout
    node = hvac.Client(url=openbao.addr, token=node_vault.login())
    kv = node.secrets.kv.v2
    mount = layout.kv_mount
    scrape = {"token": "a" * 64}
    for path in (layout.metrics_path, "deployments/other/metrics"):
        admin.secrets.kv.v2.create_or_update_secret(path, secret=scrape, mount_point=mount)
    # Another role on the same mount, and another stack's PKI mount: neither may issue to this node.
    admin.write_data(f"{layout.pki_mount}/roles/other", data={"allow_any_name": True})
    other_pki = f"{layout.pki_mount}-other"
    admin.sys.enable_secrets_engine("pki", path=other_pki)
    admin.write_data(f"{other_pki}/root/generate/internal", data={"common_name": "other CA"})
    admin.write_data(f"{other_pki}/roles/{layout.pki_role}", data={"allow_any_name": True})
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
    assert node.write_data(layout.pki_issue_path, data={"common_name": vault.host})["data"]["certificate"]
    pki = layout.pki_mount
    forbidden = [
        lambda: kv.create_or_update_secret("tenants/acme/keys/k2", secret={"hash": "x"}, mount_point=mount),
        lambda: kv.create_or_update_secret("keyids/k2", secret={"tenant": "evil"}, mount_point=mount),
        lambda: kv.delete_metadata_and_all_versions("tenants/acme/keys/k1", mount_point=mount),
        lambda: kv.create_or_update_secret(layout.metrics_path, secret=scrape, mount_point=mount),
        lambda: kv.delete_metadata_and_all_versions(layout.metrics_path, mount_point=mount),
        lambda: kv.read_secret_version("deployments/other/metrics", mount_point=mount, raise_on_deleted_version=True),
        lambda: node.write_data(f"{pki}/issue/other", data={"common_name": "cache.evil.example"}),
        lambda: node.write_data(f"{other_pki}/issue/{layout.pki_role}", data={"common_name": vault.host}),
        lambda: node.write_data(f"{pki}/sign/{layout.pki_role}", data={"csr": "x", "common_name": vault.host}),
        lambda: node.write_data(f"{pki}/sign-verbatim", data={"csr": "x"}),
        lambda: node.write_data(f"{pki}/roles/{layout.pki_role}", data={"allow_any_name": True}),
        lambda: node.read(f"{pki}/roles/{layout.pki_role}"),
        lambda: node.write_data(f"{pki}/root/generate/internal", data={"common_name": "evil CA"}),
        lambda: node.write_data(f"{pki}/revoke", data={"serial_number": "00"}),
        lambda: node.read(f"{pki}/certs"),
    ]
    try:
        for attempt in forbidden:
            with pytest.raises(hvac.exceptions.Forbidden):
                attempt()
    finally:
        admin.sys.disable_secrets_engine(other_pki)


def test_refresh_forever_issues_again_every_interval_and_survives_a_failed_run(
    node_vault: AwsNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pods' tls-refresh sidecar: a new certificate each interval; a refused run is reported, the next one
    issues again."""
    vault = node_vault.vault
    out = tmp_path / "tls"
    settings = {name: os.environ[name] for name in fetch_tls.SETTINGS}
    keys: list[str] = []
    naps: list[float] = []

    class Stop(Exception):
        pass

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if (out / "tls.key").exists():
            keys.append((out / "tls.key").read_text())
        if len(naps) == 2:  # the second run asks for a name that is not the endpoint's, and is refused
            settings["FORESIGHT_TLS_COMMON_NAME"] = "cache.evil.example"
        elif len(naps) == 3:
            settings["FORESIGHT_TLS_COMMON_NAME"] = vault.host
        elif len(naps) == 4:
            raise Stop

    with pytest.raises(Stop):
        fetch_tls.refresh_forever(settings, out, None, 86400, sleep=sleep)
    assert naps == [86400] * 4
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2]  # the refused run left the last files in place
    output = capsys.readouterr()
    assert output.out.count("fetch_tls: wrote ca.pem, tls.crt, tls.key") == 2
    assert "not allowed by this role" in output.err
    assert_issued_for(out, vault.host, vault.ca_pem)
    assert len(node_vault.tokens) == 3 and node_vault.revoked()


def test_the_sidecar_loop_ends_on_sigterm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As a pod's tls-refresh sidecar the loop is PID 1, to which the kernel delivers only signals it handles:
    without a handler each pod stop waited its whole grace period for this container."""
    for name in fetch_tls.SETTINGS:
        monkeypatch.setenv(name, "x")
    seen: list[Any] = []

    def loop(*args: Any) -> None:  # what the loop runs under: records the handler, then ends as a signal would
        seen.append(signal.getsignal(signal.SIGTERM))
        raise SystemExit(0)

    monkeypatch.setattr(fetch_tls, "refresh_forever", loop)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit):
            fetch_tls.main(["--out", str(tmp_path), "--every", "86400"])
        [handler] = seen
        assert callable(handler)
        with pytest.raises(SystemExit) as stopped:
            handler(signal.SIGTERM, None)
        assert stopped.value.code == 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_main_names_missing_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in fetch_tls.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert fetch_tls.main(["--out", "/nonexistent"]) == 2
    assert "FORESIGHT_VAULT_ADDR" in capsys.readouterr().err
