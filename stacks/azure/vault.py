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

import pulumi
import pulumi_vault as vault

from stacks.spec import StackSpec
from stacks.vault import JwtNodeAuth, NodeToken, VaultLayout, create_jwt_auth

# The resource the node's token is for: the service's default too (service/security/vault_auth.py).
IDENTITY_AUDIENCE = "https://management.azure.com/"


def issuer(tenant_id: str) -> str:
    """Entra ID's issuer of the v1 access tokens that managed identities get; its discovery document lives there."""
    return f"https://sts.windows.net/{tenant_id}/"


def create_azure_auth(
    name: str,
    spec: StackSpec,
    layout: VaultLayout,
    tenant_id: str,
    node_principal_id: pulumi.Input[str],
    node_policy: vault.Policy,
    provider: vault.Provider,
    parent: pulumi.Resource,
) -> JwtNodeAuth:
    token = NodeToken(
        issuer=issuer(tenant_id),
        audience=IDENTITY_AUDIENCE,
        claim="oid",
        value=node_principal_id,
        description=f"Foresight stack {spec.stack}: nodes log in with their managed identity's access token",
    )
    return create_jwt_auth(name, spec, layout, token, node_policy, provider, parent)
