"""The node's boot-time Vault login on Azure (stacks/boot/fetch_tls.py, jwt method), against OpenBao.

OpenBao's real jwt auth method trusts a test key in place of Entra ID's (`bound_issuer` is the tenant's v1
issuer), and a fake Azure IMDS on loopback hands out managed-identity access tokens shaped like Entra ID's,
signed with that key. The auth method's issuer and the role come from the Azure Pulumi program itself, so these
tests prove the stack's Vault wiring lets its node's identity in, and only it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from service.security import vault_auth
from stacks.boot import fetch_tls
from tests.security.metadata_fakes import JwtIssuer
from tests.servers import OpenBao, http_server
from tests.stacks.mockrun import (
    AZURE_NODE_CLIENT,
    AZURE_NODE_PRINCIPAL,
    AZURE_REQUIRED_CONFIG,
    AZURE_TENANT,
)
from tests.stacks.test_fetch_tls import (
    JwtStack,
    assert_issued_for,
    assert_refused_without_echo,
    jwt_stack_in_vault,
    node_settings,
)

TENANT_ID = AZURE_TENANT
AZURE_ISSUER = f"https://sts.windows.net/{TENANT_ID}/"  # Entra ID's v1 issuer, which IMDS tokens carry
ARM_RESOURCE = "https://management.azure.com/"
TOKEN_PATH = "/metadata/identity/oauth2/token"
API_VERSION = "2018-02-01"
RESOURCE_GROUP = "/subscriptions/0d3e5a7c-1b2f-4c6d-8e9a-b1c2d3e4f5a6/resourceGroups/foresight"


@dataclass(frozen=True)
class ManagedIdentity:
    """A user-assigned managed identity: its client (application) id, principal (object) id and resource id."""

    client_id: str
    principal_id: str
    name: str

    @property
    def resource_id(self) -> str:
        return f"{RESOURCE_GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{self.name}"


NODE = ManagedIdentity(AZURE_NODE_CLIENT, AZURE_NODE_PRINCIPAL, "foresight-node")  # the mock cloud's node
INTRUDER = ManagedIdentity("b2d5f8a1-3c6e-4b9f-a2d5-e8a1b3c6d9f2", "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "other-app")


def error_reply(description: str) -> tuple[int, str]:
    return 400, json.dumps({"error": "invalid_request", "error_description": description})


@dataclass
class AzureImds:
    """The Azure IMDS token endpoint on loopback: tokens for the identities assigned to the VM, signed by `issuer`.

    Not `metadata_fakes.FakeMetadata`: that one matches header names case-sensitively (urllib sends
    `Metadata`, but HTTP and Azure do not care), ignores which identities the VM has and issues no `oid`.
    """

    issuer: JwtIssuer
    identities: list[ManagedIdentity]
    url: str = ""
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def answer(self, method: str, path: str, headers: dict[str, str], _body: bytes) -> tuple[int, str]:
        headers = {name.lower(): value for name, value in headers.items()}
        self.requests.append((path, headers))
        url = urllib.parse.urlparse(path)
        if method != "GET" or url.path != TOKEN_PATH:
            return 404, "not found"
        if headers.get("metadata") != "true":
            return error_reply("Required metadata header not specified")
        query = dict(urllib.parse.parse_qsl(url.query))
        if query.get("api-version") != API_VERSION:
            return error_reply("Invalid or missing api-version")
        if not query.get("resource"):
            return error_reply("Required query variable 'resource' is missing")
        if "client_id" in query:
            chosen = [identity for identity in self.identities if identity.client_id == query["client_id"]]
        elif len(self.identities) > 1:
            return error_reply(
                "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity "
                "in the token request"
            )
        else:
            chosen = self.identities
        if not chosen:
            return error_reply("Identity not found")
        identity, now = chosen[0], int(time.time())
        claims = {
            "iss": AZURE_ISSUER,
            "aud": query["resource"],
            "tid": TENANT_ID,
            "oid": identity.principal_id,
            "sub": identity.principal_id,
            "appid": identity.client_id,
            "xms_mirid": identity.resource_id,
            "ver": "1.0",
            "iat": now,
            "nbf": now,
            "exp": now + 86400,
        }
        self.issued.append(self.issuer.sign(claims))
        reply = {
            "access_token": self.issued[-1],
            "client_id": identity.client_id,
            "expires_in": "86400",
            "expires_on": str(now + 86400),
            "not_before": str(now),
            "resource": query["resource"],
            "token_type": "Bearer",
        }
        return 200, json.dumps(reply)


@dataclass
class AzureNode:
    stack: JwtStack
    imds: AzureImds


@pytest.fixture
def azure_imds(issuer: JwtIssuer, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureImds]:
    """IMDS of a VM with the node's identity and another one assigned, at FORESIGHT_IMDS_ENDPOINT."""
    fake = AzureImds(issuer, identities=[NODE, INTRUDER])
    with http_server(fake.answer) as url:
        fake.url = url
        monkeypatch.setenv("FORESIGHT_IMDS_ENDPOINT", url)
        yield fake


@pytest.fixture
def azure_node(openbao: OpenBao, azure_imds: AzureImds, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureNode]:
    """An Azure stack's Vault wiring, made in OpenBao from what the Pulumi program registers, and the node's
    settings, naming the node's managed identity."""
    with jwt_stack_in_vault(openbao, monkeypatch, AZURE_REQUIRED_CONFIG, azure_imds.issuer.public_pem) as stack:
        assert stack.role["boundClaims"] == {"oid": NODE.principal_id}
        monkeypatch.setenv("FORESIGHT_VAULT_JWT_SOURCE", "azure")
        monkeypatch.setenv("FORESIGHT_VAULT_AZURE_CLIENT_ID", NODE.client_id)
        yield AzureNode(stack, azure_imds)


def token_query(path: str) -> dict[str, str]:
    """The query of an IMDS request, blank values kept (a `client_id=` must show)."""
    url = urllib.parse.urlparse(path)
    assert url.path == TOKEN_PATH
    return dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))


def test_azure_node_logs_in_with_its_managed_identity_writes_tls_files_and_revokes_its_token(
    azure_node: AzureNode, tmp_path: Path
) -> None:
    out = tmp_path / "tls"
    assert fetch_tls.main(["--out", str(out), "--group", str(os.getgid())]) == 0
    vault = azure_node.stack.vault
    assert_issued_for(out, vault.host, vault.ca_pem, group=os.getgid())
    [(path, headers)] = azure_node.imds.requests
    assert token_query(path) == {"api-version": API_VERSION, "resource": ARM_RESOURCE, "client_id": NODE.client_id}
    assert headers["metadata"] == "true"
    [token] = azure_node.stack.vault_tokens
    with pytest.raises(hvac.exceptions.Forbidden):
        azure_node.stack.admin.auth.token.lookup(token)


def test_without_a_client_id_the_vms_only_identity_logs_in(
    azure_node: AzureNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    azure_node.imds.identities = [NODE]
    monkeypatch.delenv("FORESIGHT_VAULT_AZURE_CLIENT_ID")
    assert fetch_tls.main(["--out", str(tmp_path / "tls")]) == 0
    [(path, _headers)] = azure_node.imds.requests
    assert token_query(path) == {"api-version": API_VERSION, "resource": ARM_RESOURCE}
    assert len(azure_node.stack.vault_tokens) == 1


def test_access_token_of_another_managed_identity_is_refused_without_echoing_it(
    azure_node: AzureNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORESIGHT_VAULT_AZURE_CLIENT_ID", INTRUDER.client_id)
    assert_refused_without_echo(azure_node.stack, azure_node.imds.issued, "oid", tmp_path / "tls", capsys)


@pytest.mark.parametrize(
    ("assigned", "client_id", "azure_says", "hint"),
    [
        (
            [NODE],
            "c3e6a9b2-4d7f-4ca0-b3e6-f9b2c4d7e0a3",
            "Identity not found",
            "is a managed identity with client id c3e6a9b2-4d7f-4ca0-b3e6-f9b2c4d7e0a3 assigned to the VM? "
            "(FORESIGHT_VAULT_AZURE_CLIENT_ID takes its client id, not its principal id)",
        ),
        ([], None, "Identity not found", "is a managed identity assigned to the VM?"),
        ([NODE, INTRUDER], None, "Multiple user assigned identities exist", "With several, set"),
    ],
    ids=["unknown-client-id", "no-identity", "several-identities"],
)
def test_imds_refusal_is_a_bootstrap_error_naming_the_azure_imds_and_the_likely_cause(
    assigned: list[ManagedIdentity],
    client_id: str | None,
    azure_says: str,
    hint: str,
    azure_node: AzureNode,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    azure_node.imds.identities = assigned
    if client_id is None:
        monkeypatch.delenv("FORESIGHT_VAULT_AZURE_CLIENT_ID")
    else:
        monkeypatch.setenv("FORESIGHT_VAULT_AZURE_CLIENT_ID", client_id)
    with pytest.raises(fetch_tls.BootstrapError) as info:
        fetch_tls.azure_jwt(node_settings())
    message = str(info.value)
    assert message.startswith(f"no access token from the Azure IMDS (GET {azure_node.imds.url}{TOKEN_PATH}?")
    assert "HTTP 400" in message and azure_says in message
    assert hint in message
    out = tmp_path / "tls"
    assert fetch_tls.main(["--out", str(out)]) == 1
    assert capsys.readouterr().err == f"fetch_tls: {message}\n"
    assert azure_node.stack.vault_tokens == [] and azure_node.imds.issued == []
    assert not out.exists()


@pytest.mark.parametrize("reply", ['{"token_type": "Bearer"}', "<html>captive portal</html>", '["a", "b"]'])
def test_imds_reply_without_an_access_token_is_named_without_showing_it(
    reply: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with http_server(lambda *_request: (200, reply)) as url:
        monkeypatch.setenv("FORESIGHT_IMDS_ENDPOINT", url)
        with pytest.raises(fetch_tls.BootstrapError) as info:
            fetch_tls.azure_jwt({})
    assert str(info.value) == (
        f"the Azure IMDS answered GET {url}{TOKEN_PATH}?api-version={API_VERSION}"
        "&resource=https%3A%2F%2Fmanagement.azure.com%2F without an access_token"
    )


@pytest.mark.parametrize("client_id", [NODE.client_id, None])
def test_node_asks_imds_exactly_as_the_service_does(client_id: str | None, azure_imds: AzureImds) -> None:
    azure_imds.identities = [NODE]
    settings = {"FORESIGHT_VAULT_AZURE_CLIENT_ID": client_id} if client_id else {}
    node_token = fetch_tls.azure_jwt(settings)
    service_token = vault_auth.azure_msi_token(
        vault_auth.VaultAuthSettings().azure_resource, client_id, imds_url=azure_imds.url
    )
    [(node_path, node_headers), (service_path, service_headers)] = azure_imds.requests
    assert node_path == service_path
    assert node_headers["metadata"] == service_headers["metadata"] == "true"
    assert (node_token, service_token) == tuple(azure_imds.issued)
