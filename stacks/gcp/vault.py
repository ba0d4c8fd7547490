"""Google Cloud side of the Vault wiring: a jwt auth method trusting Google's OIDC issuer, and a role bound to
the node's service account.

The node asks its metadata server for an identity token (audience `http://vault/<role>`, format=full) and
logs in with it (`stacks/boot/fetch_tls.py`, and the service with hvac). Vault checks Google's signature
against Google's published keys, the audience, and that the token's `email` is the node's service account.
Why jwt rather than Vault's gcp plugin: the gcp plugin calls the Compute API to look the instance up, so the
Vault server would need Google credentials of its own; the jwt method needs none, and OpenBao, which ships
no gcp plugin, supports it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_vault as vault

from stacks.spec import StackSpec
from stacks.vault import VaultLayout

GOOGLE_ISSUER = "https://accounts.google.com"
TOKEN_TTL_SECONDS = 3600
TOKEN_MAX_TTL_SECONDS = 4 * 3600


def audience(layout: VaultLayout) -> str:
    """The audience both the node and the service ask the metadata server for (their default)."""
    return f"http://vault/{layout.role}"


@dataclass(frozen=True)
class GcpVaultAuth:
    backend: vault.jwt.AuthBackend
    role: vault.jwt.AuthBackendRole


def create_gcp_auth(
    name: str,
    spec: StackSpec,
    layout: VaultLayout,
    node_email: pulumi.Input[str],
    node_policy: vault.Policy,
    provider: vault.Provider,
    parent: pulumi.Resource,
) -> GcpVaultAuth:
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    backend = vault.jwt.AuthBackend(
        f"{name}-gcp-auth",
        type="jwt",
        path=layout.auth_mount,
        oidc_discovery_url=GOOGLE_ISSUER,
        bound_issuer=GOOGLE_ISSUER,
        description=f"Foresight stack {spec.stack}: nodes log in with their Google service account's identity token",
        opts=opts,
    )
    role = vault.jwt.AuthBackendRole(
        f"{name}-node",
        backend=backend.path,
        role_name=layout.role,
        role_type="jwt",
        bound_audiences=[audience(layout)],
        bound_claims_type="string",
        bound_claims=pulumi.Output.from_input(node_email).apply(lambda email: {"email": email}),
        user_claim="sub",
        token_policies=[node_policy.name],
        token_ttl=TOKEN_TTL_SECONDS,
        token_max_ttl=TOKEN_MAX_TTL_SECONDS,
        opts=opts,
    )
    return GcpVaultAuth(backend=backend, role=role)
