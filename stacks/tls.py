"""The endpoint's TLS, issued by Vault's PKI engine, so that no private key ever passes through Pulumi.

Per stack: a PKI mount (`VaultLayout.pki_mount`), a root CA that Vault generates inside itself (type internal: its
key never leaves Vault, and the state holds only the CA certificate, which is public), and a role
(`VaultLayout.pki_role`) that issues server certificates for exactly the endpoint's name and nothing else. The node
issues its own certificate (stacks/boot/fetch_tls.py) at every service start and daily after; Vault generates its
key for that one response, so the key lives only on the node.

The endpoint is a DNS name where the load balancer has one (AWS; Azure's public address) and an IP address where it
does not (Google Cloud; Azure's private frontend): clients check whichever name is there. A DNS endpoint's role
admits that name and no IP SAN. An IP endpoint's role admits IP SANs, which a role's typed fields cannot narrow
(`allow_ip_sans` is all or none): OpenBao narrows them with the role's `allowed_ip_sans_cidr` (the address/32), and
HashiCorp Vault (1.19+) with the root's name constraints (`permitted_ip_ranges`), which clients also enforce; each
ignores the other's field. The role is therefore written as the PKI API's own JSON (a generic endpoint), since the
provider's role resource has no `allowed_ip_sans_cidr`. A DNS endpoint's root is name-constrained to its name too.

Rotation (`foresight:tlsCaGenerations`): each generation number is a root CA of its own in the same mount (Vault's
multi-issuer PKI). One of the listed ones (`foresight:tlsCaIssuing`, by default the last) is the mount's default
issuer and the role's, so every certificate issued from then on chains to it; clients trust the listed ones
(`caCertificate` is their bundle). A generation below the highest that is no longer listed is retired: its root stays
registered, unchanged, and leaves only the bundle, so no `pulumi up` ever deletes a root. It must not: the provider's
source we read deletes a root with `DELETE <mount>/root`, which in a multi-issuer mount deletes every issuer, the new
root included (`retain_on_delete` is set as well, but it protects a resource only from the `up` after the one that
first recorded it). Auto-tidy removes a retired root from Vault a year after it expired. Nodes
notice a new default issuer within the hour (fetch_tls.py --renew-after), pods at once (their template carries the
bundle's digest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_vault as vault

from stacks.spec import StackSpec
from stacks.vault import VaultLayout

CA_VALIDITY_SECONDS = 5 * 365 * 24 * 3600
# Each node issues a fresh certificate at every service start and once a day after (the VM's refresh timer, the
# pods' tls-refresh container): 30 days outlast a month of failed refreshes (Vault or the network down) before the
# served certificate expires, and bound how long a certificate copied off a node stays useful. The role's max_ttl
# equals it, so no node can ask for longer.
CERTIFICATE_TTL_SECONDS = 30 * 24 * 3600
KEY_TYPE, KEY_BITS = "ec", 256  # ECDSA P-256, for the CA and every node key
# Vault keeps every certificate it issues (one a node a day), so revocation can name them; auto-tidy drops each
# one three days after it expired, so the store holds about a month of them per node, not the stack's whole life.
TIDY_INTERVAL, TIDY_SAFETY_BUFFER = "12h", "72h"
# A retired root CA (one dropped from foresight:tlsCaGenerations) stays in Vault until a year after it expired.
ISSUER_SAFETY_BUFFER = "8760h"


@dataclass(frozen=True)
class EndpointName:
    """The one name clients connect to: `host` (an Output while the cloud has not assigned it), and whether it is
    an IP address rather than a DNS name."""

    host: pulumi.Input[str]
    is_ip: bool

    @property
    def names(self) -> pulumi.Output[list[str]]:
        """The role's allowed names: the host, or none while it is unknown (an address not yet assigned)."""
        return pulumi.Output.from_input(self.host).apply(lambda host: [host] if host else [])

    @property
    def ip_ranges(self) -> pulumi.Output[list[str]]:
        """The host as a /32 where it is an address; nothing for a DNS endpoint."""
        return self.names.apply(lambda names: [f"{name}/32" for name in names] if self.is_ip else [])


@dataclass(frozen=True)
class EndpointTls:
    """The stack's PKI mount, its root CA and the role the node issues its certificate from."""

    mount: vault.Mount
    roots: dict[int, vault.pkisecret.SecretBackendRootCert]  # every generation up to the highest, retired ones too
    trusted: tuple[int, ...]  # the generations clients trust (foresight:tlsCaGenerations)
    default_issuer: vault.pkisecret.SecretBackendConfigIssuers  # the issuing one's (spec.issuing_ca_generation)
    role: vault.generic.Endpoint
    tidy: vault.pkisecret.BackendConfigAutoTidy
    endpoint: EndpointName

    @property
    def ca_certificate(self) -> pulumi.Output[str]:
        """The CA certificates clients verify the endpoint with, every live generation's (public; the stack output
        `caCertificate`): a client that trusts the bundle accepts certificates of the old root and of the new."""
        return pulumi.Output.all(*(self.roots[generation].certificate for generation in self.trusted)).apply(
            lambda pems: "".join(pem.rstrip("\n") + "\n" for pem in pems)
        )


def create_endpoint_tls(
    name: str,
    spec: StackSpec,
    layout: VaultLayout,
    endpoint: EndpointName,
    provider: vault.Provider,
    parent: pulumi.Resource,
) -> EndpointTls:
    """The PKI mount, an internal root CA named after the stack, and the endpoint's issuing role."""
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    mount = vault.Mount(
        f"{name}-pki",
        path=layout.pki_mount,
        type="pki",
        max_lease_ttl_seconds=CA_VALIDITY_SECONDS,
        default_lease_ttl_seconds=CERTIFICATE_TTL_SECONDS,
        description=f"Foresight stack {spec.stack}: the endpoint's CA and server certificates",
        opts=opts,
    )
    roots = {
        generation: _root_ca(name, generation, spec, mount, endpoint, opts)
        for generation in range(1, spec.tls_ca_generations[-1] + 1)
    }
    issuing = roots[spec.issuing_ca_generation]
    default_issuer = vault.pkisecret.SecretBackendConfigIssuers(
        f"{name}-pki-default-issuer",
        backend=mount.path,
        default=issuing.issuer_id,
        default_follows_latest_issuer=False,
        opts=opts,
    )
    role = vault.generic.Endpoint(
        f"{name}-endpoint",
        path=pulumi.Output.concat(mount.path, f"/roles/{layout.pki_role}"),
        data_json=pulumi.Output.all(issuing.issuer_id, endpoint.names, endpoint.ip_ranges).apply(
            lambda values: json.dumps(role_settings(values[0], values[1], values[2]), sort_keys=True)
        ),
        ignore_absent_fields=True,
        opts=opts,
    )
    tidy = vault.pkisecret.BackendConfigAutoTidy(
        f"{name}-pki-tidy",
        backend=mount.path,
        enabled=True,
        tidy_cert_store=True,
        tidy_revoked_certs=True,
        tidy_expired_issuers=True,
        interval_duration=TIDY_INTERVAL,
        safety_buffer=TIDY_SAFETY_BUFFER,
        issuer_safety_buffer=ISSUER_SAFETY_BUFFER,
        opts=opts,
    )
    return EndpointTls(mount=mount, roots=roots, trusted=spec.tls_ca_generations, default_issuer=default_issuer,
                       role=role, tidy=tidy, endpoint=endpoint)


def _root_ca(
    name: str,
    generation: int,
    spec: StackSpec,
    mount: vault.Mount,
    endpoint: EndpointName,
    opts: pulumi.ResourceOptions,
) -> vault.pkisecret.SecretBackendRootCert:
    """One generation's root CA. The first keeps the name and inputs it had before rotation existed: any change to
    a root's inputs replaces it, and with it the CA every client of the stack trusts."""
    later = generation > 1
    return vault.pkisecret.SecretBackendRootCert(
        f"{name}-ca-{generation}" if later else f"{name}-ca",
        backend=mount.path,
        type="internal",
        common_name=f"{spec.name} CA {generation}" if later else f"{spec.name} CA",
        issuer_name=f"ca-{generation}" if later else None,
        organization="Foresight",
        key_type=KEY_TYPE,
        key_bits=KEY_BITS,
        ttl=str(CA_VALIDITY_SECONDS),
        permitted_dns_domains=endpoint.names.apply(lambda names: [] if endpoint.is_ip else names),
        permitted_ip_ranges=endpoint.ip_ranges,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=True)),
    )


def role_settings(issuer_id: str, names: list[str], ip_ranges: list[str]) -> dict[str, Any]:
    """The endpoint role as Vault's PKI API takes it (`<mount>/roles/<role>`): server certificates for exactly the
    endpoint's name, for CERTIFICATE_TTL_SECONDS at most."""
    return {
        "issuer_ref": issuer_id,
        "allowed_domains": names,
        "allow_bare_domains": True,
        "allow_subdomains": False,
        "allow_glob_domains": False,
        "allow_wildcard_certificates": False,
        "allow_localhost": False,
        "allow_any_name": False,
        "enforce_hostnames": True,
        "allow_ip_sans": bool(ip_ranges),
        "allowed_ip_sans_cidr": ip_ranges,
        # The node sends no common name where its host is over RFC 5280's 64 characters (an AWS load balancer's
        # name can be); the host is then only in the SANs, which is what clients check.
        "require_cn": False,
        "server_flag": True,
        "client_flag": False,
        "code_signing_flag": False,
        "email_protection_flag": False,
        "key_type": KEY_TYPE,
        "key_bits": KEY_BITS,
        "key_usage": ["DigitalSignature"],
        "ttl": CERTIFICATE_TTL_SECONDS,
        "max_ttl": CERTIFICATE_TTL_SECONDS,
        "organization": ["Foresight"],
    }
