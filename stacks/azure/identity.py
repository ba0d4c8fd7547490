"""Azure identity: the node's user-assigned managed identity, and its roles on the audit and origin containers.

Its permissions are role assignments on what it uses: the stack's Key Vault key (`kms.py`), the audit container
when foresight:auditBucket names one (`grant_audit_shipping`) and the containers foresight:originBuckets names
(`grant_origin_read`), so the identity holds no subscription or resource-group role. Logging in to Vault needs no
permission either: the node presents the access token Azure's metadata service hands any VM's identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure

from stacks.spec import StackSpec, container_parts


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
# compares a copy's bytes with the file's). It may delete too; the container's immutability policy keeps the trail.
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


def grant_audit_shipping(
    name: str, spec: StackSpec, principal_id: pulumi.Input[str], parent: pulumi.Resource
) -> azure.authorization.RoleAssignment | None:
    """The node's (or the pods') access to the audit container, when foresight:auditBucket names one; the role
    is defined in the container's own subscription, which may not be the stack's."""
    if spec.audit_bucket is None:
        return None
    return _assign(f"{name}-audit", spec.audit_bucket, BLOB_DATA_CONTRIBUTOR, principal_id, parent)


# Storage Blob Data Reader: read and list blobs, nothing that writes.
BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"


def grant_origin_read(
    name: str, spec: StackSpec, principal_id: pulumi.Input[str], parent: pulumi.Resource
) -> list[azure.authorization.RoleAssignment]:
    """The node's (or the pods') read on each container foresight:originBuckets names, one assignment each, named
    after its account and container (storage account names are global, so the pair is unique)."""
    grants = []
    for container in spec.origin_buckets:
        found = container_parts(container)
        grants.append(_assign(f"{name}-origin-{found['account']}-{found['container']}", container, BLOB_DATA_READER,
                              principal_id, parent))
    return grants


def _assign(
    name: str, container: str, role: str, principal_id: pulumi.Input[str], parent: pulumi.Resource
) -> azure.authorization.RoleAssignment:
    """`role` on the container: defined in the container's own subscription, which may not be the stack's."""
    subscription = container.split("/")[2]
    return azure.authorization.RoleAssignment(
        name,
        scope=container,
        principal_id=principal_id,
        principal_type="ServicePrincipal",
        role_definition_id=f"/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/{role}",
        opts=pulumi.ResourceOptions(parent=parent),
    )
