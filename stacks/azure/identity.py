"""Azure identity: the node's user-assigned managed identity, and its role on the audit container, if any.

Its permissions are role assignments on what it uses: the stack's Key Vault key (`kms.py`), and the audit
container when foresight:auditBucket names one (`grant_audit_shipping`), so the identity holds no subscription or
resource-group role. Logging in to Vault needs no permission either:
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


# Storage Blob Data Contributor: the narrowest built-in role that creates blobs and reads them back (the shipper
# compares sizes). It may delete too; the container's immutability policy is what keeps the trail.
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


def grant_audit_shipping(
    name: str, spec: StackSpec, principal_id: pulumi.Input[str], parent: pulumi.Resource
) -> azure.authorization.RoleAssignment | None:
    """The node's (or the pods') access to the audit container, when foresight:auditBucket names one; the role
    is defined in the container's own subscription, which may not be the stack's."""
    if spec.audit_bucket is None:
        return None
    subscription = spec.audit_bucket.split("/")[2]
    return azure.authorization.RoleAssignment(
        f"{name}-audit",
        scope=spec.audit_bucket,
        principal_id=principal_id,
        principal_type="ServicePrincipal",
        role_definition_id=f"/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/"
        f"{BLOB_DATA_CONTRIBUTOR}",
        opts=pulumi.ResourceOptions(parent=parent),
    )
