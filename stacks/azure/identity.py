"""Azure identity: the node's user-assigned managed identity, and nothing granted to it here.

Its one permission, use of the stack's Key Vault key, is a role assignment on the key itself (`kms.py`), so
the identity holds no subscription or resource-group role. Logging in to Vault needs no permission either:
the node presents the access token Azure's metadata service hands any VM's identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure

from stacks.spec import StackSpec


@dataclass(frozen=True)
class NodeIdentity:
    identity: azure.managedidentity.UserAssignedIdentity

    @property
    def principal_id(self) -> pulumi.Output[str]:
        """The identity's object id: the `oid` claim of its tokens, and what role assignments name."""
        return self.identity.principal_id

    @property
    def client_id(self) -> pulumi.Output[str]:
        """What the node names when it asks for a token (a VM may carry several identities)."""
        return self.identity.client_id


def create_identity(
    name: str, spec: StackSpec, group: azure.resources.ResourceGroup, parent: pulumi.Resource
) -> NodeIdentity:
    identity = azure.managedidentity.UserAssignedIdentity(
        f"{name}-node",
        resource_group_name=group.name,
        location=spec.region,
        tags=spec.tags(),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return NodeIdentity(identity=identity)
