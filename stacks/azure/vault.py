"""Azure side of the Vault wiring: a jwt auth method trusting the tenant's Microsoft Entra ID issuer, and a role
bound to the node's managed identity.

The node asks the Instance Metadata Service for its identity's access token (resource
`https://management.azure.com/`) and logs in with it (`stacks/boot/fetch_tls.py`, and the service with hvac).
Vault checks the token's signature against the tenant's published keys, its audience, and that its `oid` is
the node's identity. Why jwt rather than Vault's azure plugin: the azure plugin calls Azure Resource Manager to
look the VM up, so the Vault server would need Azure credentials of its own; the jwt method needs none, and
OpenBao, which ships no azure plugin, supports it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_vault as vault

from stacks.spec import StackSpec
from stacks.vault import VaultLayout

# The resource the node's token is for: the service's default too (service/security/vault_auth.py).
IDENTITY_AUDIENCE = "https://management.azure.com/"
TOKEN_TTL_SECONDS = 3600
TOKEN_MAX_TTL_SECONDS = 4 * 3600


def issuer(tenant_id: str) -> str:
    """Entra ID's issuer of the v1 access tokens that managed identities get; its discovery document lives there."""
    return f"https://sts.windows.net/{tenant_id}/"


@dataclass(frozen=True)
class AzureVaultAuth:
    backend: vault.jwt.AuthBackend
    role: vault.jwt.AuthBackendRole


def create_azure_auth(
    name: str,
    spec: StackSpec,
    layout: VaultLayout,
    tenant_id: str,
    node_principal_id: pulumi.Input[str],
    node_policy: vault.Policy,
    provider: vault.Provider,
    parent: pulumi.Resource,
) -> AzureVaultAuth:
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    backend = vault.jwt.AuthBackend(
        f"{name}-azure-auth",
        type="jwt",
        path=layout.auth_mount,
        oidc_discovery_url=issuer(tenant_id),
        bound_issuer=issuer(tenant_id),
        description=f"Foresight stack {spec.stack}: nodes log in with their managed identity's access token",
        opts=opts,
    )
    role = vault.jwt.AuthBackendRole(
        f"{name}-node",
        backend=backend.path,
        role_name=layout.role,
        role_type="jwt",
        bound_audiences=[IDENTITY_AUDIENCE],
        bound_claims_type="string",
        bound_claims=pulumi.Output.from_input(node_principal_id).apply(lambda oid: {"oid": oid}),
        user_claim="sub",
        token_policies=[node_policy.name],
        token_ttl=TOKEN_TTL_SECONDS,
        token_max_ttl=TOKEN_MAX_TTL_SECONDS,
        opts=opts,
    )
    return AzureVaultAuth(backend=backend, role=role)
