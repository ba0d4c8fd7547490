"""Google Cloud side of the Vault wiring: a jwt auth method trusting Google's OIDC issuer, and a role bound to
the node's service account.

The node asks its metadata server for an identity token (audience `http://vault/<role>`, format=full) and
logs in with it (`stacks/boot/fetch_tls.py`, and the service with hvac). Vault checks Google's signature
against Google's published keys, the audience, and that the token's `email` is the node's service account,
which names the project, so no other project's VM can present it. Why jwt rather than Vault's gcp plugin: the
gcp plugin calls the Compute API to look the instance up, so the Vault server would need Google credentials of
its own; the jwt method needs none, and OpenBao, which ships no gcp plugin, supports it the same way.
"""

from __future__ import annotations

import pulumi
import pulumi_vault as vault

from stacks.spec import StackSpec
from stacks.vault import JwtNodeAuth, NodeToken, VaultLayout, create_jwt_auth

GOOGLE_ISSUER = "https://accounts.google.com"


def audience(layout: VaultLayout) -> str:
    """The audience both the node and the service ask the metadata server for (their default)."""
    return f"http://vault/{layout.role}"


def create_gcp_auth(
    name: str,
    spec: StackSpec,
    layout: VaultLayout,
    node_email: pulumi.Input[str],
    node_policy: vault.Policy,
    provider: vault.Provider,
    parent: pulumi.Resource,
) -> JwtNodeAuth:
    token = NodeToken(
        issuer=GOOGLE_ISSUER,
        audience=audience(layout),
        claim="email",
        value=node_email,
        description=f"Foresight stack {spec.stack}: nodes log in with their Google service account's identity token",
    )
    return create_jwt_auth(name, spec, layout, token, node_policy, provider, parent)
