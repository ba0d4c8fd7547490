"""The node's boot-time Vault login on Google Cloud (stacks/boot/fetch_tls.py, jwt method), against OpenBao.

OpenBao's real jwt auth method trusts a test key in place of Google's (`bound_issuer` is Google's issuer), and a
fake metadata server on loopback hands out identity tokens shaped like Google's, signed with that key. The
role comes from the Google Cloud Pulumi program itself, so these tests prove the stack's Vault wiring lets its
node in, and only its node.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
from cryptography import x509

from stacks.boot import fetch_tls
from tests.security.metadata_fakes import JwtIssuer
from tests.servers import OpenBao, http_server
from tests.stacks.mockrun import GCP_PROJECT, GCP_REQUIRED_CONFIG
from tests.stacks.test_fetch_tls import (
    JwtStack,
    assert_issued_for,
    assert_refused_without_echo,
    bind_node_role,
    jwt_stack_in_vault,
)

GOOGLE_ISSUER = "https://accounts.google.com"
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"


@dataclass
class GceMetadata:
    """The GCE metadata server's identity endpoint on loopback: tokens for `email`, signed by `issuer`.

    Not `metadata_fakes.FakeMetadata`: that one matches header names case-sensitively, so it refuses urllib's
    `Metadata-flavor` (HTTP and Google's server do not), and its service account cannot be changed.
    """

    issuer: JwtIssuer
    email: str
    url: str = ""
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def answer(self, method: str, path: str, headers: dict[str, str], _body: bytes) -> tuple[int, str]:
        headers = {name.lower(): value for name, value in headers.items()}
        self.requests.append((path, headers))
        url = urllib.parse.urlparse(path)
        if method != "GET" or url.path != IDENTITY_PATH:
            return 404, "not found"
        if headers.get("metadata-flavor") != "Google":
            return 403, "Missing Metadata-Flavor:Google header."
        audience = dict(urllib.parse.parse_qsl(url.query)).get("audience")
        if not audience:
            return 400, "non-empty audience parameter required"
        now = int(time.time())
        claims = {
            "iss": GOOGLE_ISSUER,
            "aud": audience,
            "azp": "104000000000000000001",
            "sub": "104000000000000000001",
            "email": self.email,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        self.issued.append(self.issuer.sign(claims))
        return 200, self.issued[-1]


@dataclass
class GcpNode:
    stack: JwtStack
    metadata: GceMetadata


@pytest.fixture
def gce_metadata(issuer: JwtIssuer) -> Iterator[GceMetadata]:
    fake = GceMetadata(issuer, email="nobody@example.invalid")  # the gcp_node fixture names the node's account
    with http_server(fake.answer) as url:
        fake.url = url
        yield fake


@pytest.fixture
def gcp_node(openbao: OpenBao, gce_metadata: GceMetadata, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcpNode]:
    """A Google Cloud stack's Vault wiring, made in OpenBao from what the Pulumi program registers, and the
    node's settings; the metadata server speaks for the node's service account."""
    with jwt_stack_in_vault(openbao, monkeypatch, GCP_REQUIRED_CONFIG, gce_metadata.issuer.public_pem) as stack:
        gce_metadata.email = stack.role["boundClaims"]["email"]
        assert gce_metadata.email.endswith(f"@{GCP_PROJECT}.iam.gserviceaccount.com")
        monkeypatch.setenv("FORESIGHT_VAULT_JWT_SOURCE", "gcp")
        monkeypatch.setenv("FORESIGHT_VAULT_GCP_METADATA_URL", gce_metadata.url)
        monkeypatch.delenv("FORESIGHT_VAULT_GCP_AUDIENCE", raising=False)
        yield GcpNode(stack, gce_metadata)


def test_gcp_node_logs_in_with_its_identity_token_writes_tls_files_and_revokes_its_token(
    gcp_node: GcpNode, tmp_path: Path
) -> None:
    out = tmp_path / "tls"
    assert fetch_tls.main(["--out", str(out), "--group", str(os.getgid())]) == 0
    vault = gcp_node.stack.vault
    assert_issued_for(out, vault.host, vault.ca_pem, group=os.getgid())
    [(path, headers)] = gcp_node.metadata.requests
    url = urllib.parse.urlparse(path)
    assert url.path == IDENTITY_PATH
    assert dict(urllib.parse.parse_qsl(url.query)) == {
        "audience": f"http://vault/{gcp_node.stack.layout.role}",
        "format": "full",
    }
    assert headers["metadata-flavor"] == "Google"
    [token] = gcp_node.stack.vault_tokens
    with pytest.raises(hvac.exceptions.Forbidden):
        gcp_node.stack.admin.auth.token.lookup(token)


def test_gcp_node_requests_the_configured_audience(
    gcp_node: GcpNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audience = "https://vault.example.test/gce"
    bind_node_role(gcp_node.stack.admin, gcp_node.stack.layout, gcp_node.stack.role, bound_audiences=[audience])
    monkeypatch.setenv("FORESIGHT_VAULT_GCP_AUDIENCE", audience)
    assert fetch_tls.main(["--out", str(tmp_path / "tls")]) == 0
    [(path, _headers)] = gcp_node.metadata.requests
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlparse(path).query))["audience"] == audience


def test_identity_token_of_another_service_account_is_refused_without_echoing_it(
    gcp_node: GcpNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gcp_node.metadata.email = "intruder@other-project.iam.gserviceaccount.com"
    assert_refused_without_echo(gcp_node.stack, gcp_node.metadata.issued, "email", tmp_path / "tls", capsys)


@pytest.mark.parametrize(("source", "shown"), [("aws", "'aws'"), ("s3", "'s3'"), (None, "unset")])
def test_jwt_login_names_an_unsupported_source(
    source: str | None, shown: str, gce_metadata: GceMetadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORESIGHT_VAULT_GCP_METADATA_URL", gce_metadata.url)
    settings = {"FORESIGHT_VAULT_ROLE": "foresight-node", "FORESIGHT_VAULT_AUTH_MOUNT": "foresight-gcp"}
    if source is not None:
        settings["FORESIGHT_VAULT_JWT_SOURCE"] = source
    expected = f"FORESIGHT_VAULT_JWT_SOURCE is {shown}; the boot script's jwt login supports gcp, azure, file"
    with pytest.raises(fetch_tls.BootstrapError) as info:
        fetch_tls.login_jwt(settings)
    assert str(info.value) == expected
    assert gce_metadata.requests == []


def test_unreachable_metadata_server_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORESIGHT_VAULT_GCP_METADATA_URL", "http://127.0.0.1:9")
    settings = {
        "FORESIGHT_VAULT_ADDR": "http://127.0.0.1:9",
        "FORESIGHT_VAULT_ROLE": "foresight-node",
        "FORESIGHT_VAULT_AUTH_MOUNT": "foresight-gcp",
        "FORESIGHT_VAULT_JWT_SOURCE": "gcp",
    }
    with pytest.raises(fetch_tls.BootstrapError) as info:
        fetch_tls.login_jwt(settings)
    message = str(info.value)
    assert message.startswith("no identity token from the GCP metadata server (GET http://127.0.0.1:9/computeMetadata/")
    assert "does the VM have a service account?" in message


def test_metadata_requests_bypass_a_configured_proxy(
    gce_metadata: GceMetadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node behind an egress proxy sets http(s)_proxy for Vault; the metadata service must still be asked
    directly (no proxy reaches a link-local address, and Azure's IMDS refuses proxied requests)."""
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen reads the proxies again, as a fresh process
    token = fetch_tls.gcp_identity_token("http://vault/foresight-node", gce_metadata.url)
    assert token == gce_metadata.issued[-1]
    with pytest.raises(fetch_tls.BootstrapError, match="failed"):  # the same URL, not as metadata, takes the proxy
        fetch_tls.http_request("GET", f"{gce_metadata.url}{IDENTITY_PATH}?audience=x", {"Metadata-Flavor": "Google"})


def test_a_node_of_an_ip_endpoint_gets_a_certificate_for_that_address_only(gcp_node: GcpNode) -> None:
    """An IP endpoint's role admits IP SANs; its allowed_ip_sans_cidr keeps them to the endpoint's address (the
    typed role had no such field, and issued for any address: 8.8.8.8, the metadata server's)."""
    vault = gcp_node.stack.vault
    node = hvac.Client(url=vault.admin.url, token=vault.admin.auth.token.create(
        policies=[vault.layout.policy])["auth"]["client_token"])
    issue = vault.layout.pki_issue_path
    for other in ("8.8.8.8", "10.0.0.1", "169.254.169.254", f"{vault.host},8.8.8.8"):
        with pytest.raises(hvac.exceptions.InvalidRequest):
            node.write_data(issue, data={"common_name": vault.host, "ip_sans": other, "exclude_cn_from_sans": True})
    with pytest.raises(hvac.exceptions.InvalidRequest):
        node.write_data(issue, data={"common_name": "8.8.8.8", "ip_sans": "8.8.8.8"})
    granted = node.write_data(issue, data={"common_name": vault.host, "ip_sans": vault.host,
                                           "exclude_cn_from_sans": True})["data"]
    certificate = x509.load_pem_x509_certificate(granted["certificate"].encode())
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [vault.host]
