"""AWS side of the Vault wiring: an AWS auth method for this stack and its IAM role bound to the node's role.

The node logs in with a signed sts:GetCallerIdentity request (`stacks/boot/fetch_tls.py`, and the service
itself with hvac); Vault forwards it to STS, learns the caller is the node's role, and hands out a token with
the node's read-only policy. No static Vault token is ever put on the node.

The request must also sign `X-Vault-AWS-IAM-Server-ID: <Vault's host name>` (`iam_server_id`): without it, a
signed login request the node sent to one server could be replayed by that server to another Vault that trusts the
same role. The node's settings carry the value (FORESIGHT_VAULT_AWS_HEADER_VALUE), read by both logins.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import pulumi
import pulumi_vault as vault

from stacks.spec import StackSpec
from stacks.vault import TOKEN_MAX_TTL_SECONDS, TOKEN_TTL_SECONDS, VaultLayout


@dataclass(frozen=True)
class AwsVaultAuth:
    backend: vault.AuthBackend
    client: vault.aws.AuthBackendClient
    role: vault.aws.AuthBackendRole


def iam_server_id(spec: StackSpec) -> str:
    """The X-Vault-AWS-IAM-Server-ID this stack's Vault requires: its host name, as Vault's docs suggest."""
    return urlsplit(spec.vault_address).hostname or spec.vault_address


def create_aws_auth(
    name: str,
    spec: StackSpec,
    layout: VaultLayout,
    node_role_arn: pulumi.Input[str],
    node_policy: vault.Policy,
    provider: vault.Provider,
    parent: pulumi.Resource,
) -> AwsVaultAuth:
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    backend = vault.AuthBackend(
        f"{name}-aws-auth",
        type="aws",
        path=layout.auth_mount,
        description=f"Foresight stack {spec.stack}: nodes log in with their AWS IAM role",
        opts=opts,
    )
    # The global STS endpoint in us-east-1 is what fetch_tls.py signs for; stating it keeps the two in step.
    client = vault.aws.AuthBackendClient(
        f"{name}-aws-auth",
        backend=backend.path,
        sts_endpoint="https://sts.amazonaws.com",
        sts_region="us-east-1",
        iam_server_id_header_value=iam_server_id(spec),
        opts=opts,
    )
    role = vault.aws.AuthBackendRole(
        f"{name}-node",
        backend=backend.path,
        role=layout.role,
        auth_type="iam",
        bound_iam_principal_arns=[node_role_arn],
        # Matching on the role ARN needs no AWS credentials in Vault; the ARN carries Pulumi's random suffix,
        # so a deleted-and-recreated role of the same name cannot happen by accident.
        resolve_aws_unique_ids=False,
        token_policies=[node_policy.name],
        token_ttl=TOKEN_TTL_SECONDS,
        token_max_ttl=TOKEN_MAX_TTL_SECONDS,
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, depends_on=[client]),
    )
    return AwsVaultAuth(backend=backend, client=client, role=role)
