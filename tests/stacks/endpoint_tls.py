"""What every stack variant's mock run must show about the endpoint's TLS: Vault PKI, and no key in the state.

The CA is generated inside Vault (type internal), the role issues server certificates for the endpoint's one name
only, the node's policy may issue from that role, and no resource that keeps a private key or secret data in the
state (pulumi-tls keys, KV secrets written by Pulumi, a provider token) exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import pytest

from stacks.spec import ConfigError, StackSpec
from stacks.tls import CA_VALIDITY_SECONDS, CERTIFICATE_TTL_SECONDS
from stacks.vault import VaultLayout
from tests.stacks.mockrun import PKI_DEFAULT_ISSUER, PKI_ROLE, PKI_ROOT_CERT, MockRun, fake_pem, pki_role

KV_SECRET = "vault:kv/secretV2:SecretV2"


def layout_of(stack: str, config: Mapping[str, str]) -> VaultLayout:
    """The Vault names of the stack `stack` deployed with `config`."""
    return VaultLayout.for_spec(StackSpec.from_values("foresight", stack, config.get))


def assert_no_key_in_state(run: MockRun) -> None:
    """No pulumi-tls resource, no Vault secret written by Pulumi, no provider token, no PEM key in any input."""
    assert not [resource.name for resource in run if resource.type.startswith("tls:")]
    assert not [resource.name for resource in run if resource.type == KV_SECRET]
    assert "token" not in run.one("pulumi:providers:vault").props
    for resource in run:
        assert "PRIVATE KEY" not in repr(resource.inputs), resource.name


def assert_endpoint_tls(run: MockRun, layout: VaultLayout, host: str, *, is_ip: bool) -> None:
    """The stack's PKI mount, internal root CA and endpoint role, for `host` only, and the node's policy."""
    assert_no_key_in_state(run)
    [mount] = [resource.props for resource in run.of_type("vault:index/mount:Mount") if resource.props["type"] == "pki"]
    assert mount["path"] == layout.pki_mount
    assert mount["maxLeaseTtlSeconds"] == CA_VALIDITY_SECONDS
    root = run.one(PKI_ROOT_CERT)
    assert root.props["backend"] == layout.pki_mount
    assert root.props["type"] == "internal"
    assert (root.props["keyType"], root.props["keyBits"]) == ("ec", 256)
    assert root.props["ttl"] == str(CA_VALIDITY_SECONDS)
    assert root.retain_on_delete  # the provider deletes a root with DELETE <mount>/root: every issuer of the mount
    assert "issuerName" not in root.props  # generation 1, registered as before rotation existed (test_ca_rotation)
    default = run.one(PKI_DEFAULT_ISSUER).props
    assert (default["backend"], default["default"]) == (layout.pki_mount, f"issuer-{root.name}")
    assert run.outputs["caCertificate"].value == fake_pem("CERTIFICATE", root.name)
    assert not run.outputs["caCertificate"].secret
    assert root.props.get("permittedIpRanges", []) == ([f"{host}/32"] if is_ip else [])  # HashiCorp Vault 1.19+
    assert root.props.get("permittedDnsDomains", []) == ([] if is_ip else [host])
    written = run.one(PKI_ROLE).props
    assert written["path"] == f"{layout.pki_mount}/roles/{layout.pki_role}"
    role = pki_role(run)
    assert role["issuer_ref"] == f"issuer-{root.name}"
    assert role["allowed_domains"] == [host]
    assert role["allow_bare_domains"] is True
    for wider in ("allow_subdomains", "allow_glob_domains", "allow_wildcard_certificates", "allow_localhost",
                  "allow_any_name", "client_flag", "code_signing_flag", "email_protection_flag"):
        assert role[wider] is False, wider
    assert role["enforce_hostnames"] is True and role["server_flag"] is True
    assert role["allow_ip_sans"] is is_ip
    assert role["allowed_ip_sans_cidr"] == ([f"{host}/32"] if is_ip else [])  # OpenBao: only the endpoint's address
    assert role["ttl"] == role["max_ttl"] == CERTIFICATE_TTL_SECONDS
    assert (role["key_type"], role["key_bits"]) == ("ec", 256)
    tidy = run.one("vault:pkiSecret/backendConfigAutoTidy:BackendConfigAutoTidy").props  # a daily cert, tidied
    assert (tidy["backend"], tidy["enabled"], tidy["tidyCertStore"]) == (layout.pki_mount, True, True)
    assert tidy["tidyExpiredIssuers"] is True  # a retired root leaves Vault a year after it expired
    policy = run.one("vault:index/policy:Policy").props["policy"]
    assert policy == layout.node_policy_hcl()
    capabilities = dict(re.findall(r'path "([^"]+)" \{\s*capabilities = \[([^\]]*)\]', policy))
    assert capabilities[f"{layout.pki_mount}/issue/{layout.pki_role}"] == '"update"'
    assert [path for path in capabilities if path.startswith(layout.pki_mount)] == [layout.pki_issue_path]
    assert not [path for path in capabilities if path.endswith("/tls")]


def assert_vault_token_refused(run_stack: Callable[..., MockRun]) -> None:
    """`foresight:vaultToken`, secret or plain, fails before any resource: a provider's token would be stored in the
    state. The error names the key, says to use VAULT_TOKEN or `vault login`, and never repeats the token."""
    token = "hvs.CAESIJlWh1Xo2n3m4b5v6c7x8z9aAbBcCdDeEfF"
    for secret_keys in (("foresight:vaultToken",), ()):
        with pytest.raises(ConfigError) as failure:
            run_stack({"foresight:vaultToken": token}, secret_keys)
        assert failure.value.keys == ["foresight:vaultToken"]
        message = str(failure.value)
        assert "stored in the state" in message and "VAULT_TOKEN in the environment of `pulumi up`" in message
        assert "`vault login`" in message and token not in message
