"""Vault wiring all clouds share: the provider, the KV v2 mount, the node's policy.

Layout (what the service and the boot script use, `VaultLayout` names it):
  <kv mount>/data/tenants/*                     tenants and their API key hashes, written by `foresight tenants`
  <kv mount>/data/keyids/*                      key id -> tenant index the service reads on AUTH
  <kv mount>/data/deployments/<stack>/metrics   the /metrics scrape token, written by `foresight metrics-token
                                                rotate` (never by Pulumi: it stays out of the state)
  <pki mount>/issue/<pki role>                  the endpoint's server certificates (stacks/tls.py), issued to the
                                                node by fetch_tls.py with a key Vault generates for that response
The node's policy reads the KV paths and issues from its own role, nothing else: it cannot write to the KV mount,
read the PKI mount's configuration or issue from another role. The cloud's auth role that hands out this policy
lives in `stacks/<cloud>/vault.py`: AWS's IAM method, or, on Google Cloud and Azure, a jwt method
(`create_jwt_auth`) that checks the identity token the cloud's metadata service signs for the node.

Pulumi's Vault provider takes its token from the environment of `pulumi up` (VAULT_TOKEN, or the token helper
that `vault login` fills), never from the stack's config: a provider's inputs are stored in the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_vault as vault

from stacks.spec import StackSpec

# The node's Vault token: renewed by the service while it runs, re-issued by a fresh login after.
TOKEN_TTL_SECONDS = 3600
TOKEN_MAX_TTL_SECONDS = 4 * 3600


@dataclass(frozen=True)
class VaultLayout:
    """Names of this stack's things in Vault; one stack never collides with another in the same Vault."""

    kv_mount: str
    pki_mount: str
    pki_role: str
    auth_mount: str
    role: str
    policy: str
    stack: str

    @classmethod
    def for_spec(cls, spec: StackSpec) -> VaultLayout:
        return cls(
            kv_mount=spec.name,
            pki_mount=f"{spec.name}-pki",
            pki_role=f"{spec.name}-endpoint",
            auth_mount=f"{spec.name}-{spec.cloud}",
            role=f"{spec.name}-node",
            policy=f"{spec.name}-node",
            stack=spec.stack,
        )

    @property
    def metrics_path(self) -> str:
        """The scrape token's path inside the KV mount (the service's FORESIGHT_VAULT_METRICS_PATH)."""
        return f"deployments/{self.stack}/metrics"

    @property
    def pki_issue_path(self) -> str:
        """Where the node asks for its server certificate (POST, `vault write <pki_issue_path> common_name=...`)."""
        return f"{self.pki_mount}/issue/{self.pki_role}"

    def node_policy_hcl(self) -> str:
        """Read its tenants, their key hashes and its scrape token; issue certificates from its own endpoint role;
        no write, no other deployment, no other role."""
        return (
            f"# Foresight node of stack {self.stack}: reads its keys, issues its endpoint's certificate.\n"
            f'path "{self.kv_mount}/data/tenants/*" {{\n  capabilities = ["read"]\n}}\n'
            f'path "{self.kv_mount}/metadata/tenants/*" {{\n  capabilities = ["read", "list"]\n}}\n'
            f'path "{self.kv_mount}/data/keyids/*" {{\n  capabilities = ["read"]\n}}\n'
            f'path "{self.kv_mount}/data/{self.metrics_path}" {{\n  capabilities = ["read"]\n}}\n'
            f'path "{self.pki_issue_path}" {{\n  capabilities = ["update"]\n}}\n'
        )


@dataclass(frozen=True)
class SharedVault:
    provider: vault.Provider
    kv_mount: vault.Mount
    node_policy: vault.Policy


def create_shared_vault(name: str, spec: StackSpec, layout: VaultLayout, parent: pulumi.Resource) -> SharedVault:
    """The Vault provider for `spec.vault_address` and the Vault resources every cloud needs."""
    # No token input: the provider reads VAULT_TOKEN or the token helper itself, so no token is stored in the
    # state (a provider's inputs are). No token ever reaches the node either.
    provider = vault.Provider(
        f"{name}-vault", address=spec.vault_address, opts=pulumi.ResourceOptions(parent=parent)
    )
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    kv_mount = vault.Mount(
        f"{name}-kv",
        path=layout.kv_mount,
        type="kv",
        options={"version": "2"},
        description=f"Foresight stack {spec.stack}: tenants' key hashes and the /metrics scrape token",
        opts=opts,
    )
    node_policy = vault.Policy(f"{name}-node-policy", name=layout.policy, policy=layout.node_policy_hcl(), opts=opts)
    return SharedVault(provider=provider, kv_mount=kv_mount, node_policy=node_policy)


@dataclass(frozen=True)
class NodeToken:
    """What the cloud's identity token for the node looks like: who signs it, for whom, and the claim (with
    its value) that names the node and no other machine."""

    issuer: pulumi.Input[str]
    audience: str
    claim: str
    value: pulumi.Input[str]
    description: str


@dataclass(frozen=True)
class JwtNodeAuth:
    backend: vault.jwt.AuthBackend
    role: vault.jwt.AuthBackendRole


def create_jwt_auth(
    name: str,
    spec: StackSpec,
    layout: VaultLayout,
    token: NodeToken,
    node_policy: vault.Policy,
    provider: vault.Provider,
    parent: pulumi.Resource,
) -> JwtNodeAuth:
    """A jwt auth method that trusts `token.issuer` (its keys from the issuer's discovery document; Vault needs
    no cloud credential) and a role that gives the node's policy to tokens for `token.audience` whose
    `token.claim` is `token.value`."""
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    backend = vault.jwt.AuthBackend(
        f"{name}-{spec.cloud}-auth",
        type="jwt",
        path=layout.auth_mount,
        oidc_discovery_url=token.issuer,
        bound_issuer=token.issuer,
        description=token.description,
        opts=opts,
    )
    role = vault.jwt.AuthBackendRole(
        f"{name}-node",
        backend=backend.path,
        role_name=layout.role,
        role_type="jwt",
        bound_audiences=[token.audience],
        bound_claims_type="string",
        bound_claims=pulumi.Output.from_input(token.value).apply(lambda value: {token.claim: value}),
        user_claim="sub",
        token_policies=[node_policy.name],
        token_ttl=TOKEN_TTL_SECONDS,
        token_max_ttl=TOKEN_MAX_TTL_SECONDS,
        opts=opts,
    )
    return JwtNodeAuth(backend=backend, role=role)
