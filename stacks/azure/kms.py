"""Azure Key Vault: the customer-managed key that encrypts the node's disks and the service's data keys.

A Key Vault (RBAC authorization, soft delete for 90 days, purge protection, which a disk encryption set
requires) holding one RSA 3072 key that rotates itself every 90 days and expires after two years unless
rotated. A disk encryption set wraps the disks' keys with it and follows each rotation. Two principals may use
the key, by role assignments on the key alone, both as Key Vault Crypto Service Encryption User (read the key,
wrap and unwrap with it: no encrypt, decrypt or sign): the disk encryption set's identity, and the node's (or
pods') identity for the service's envelope encryption, which only wraps and unwraps data keys.

The vault's name is global and, under purge protection, stays reserved for 90 days after `pulumi destroy`; it
ends in part of the node identity's object id, which each deployment gets afresh, so a stack can be destroyed
and deployed again at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure

from stacks.spec import StackSpec

ROTATE_AFTER = "P90D"
EXPIRE_AFTER = "P2Y"
KEY_SIZE = 3072
SOFT_DELETE_DAYS = 90
# Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"


@dataclass(frozen=True)
class NodeKey:
    vault: azure.keyvault.Vault
    key: azure.keyvault.Key
    encryption_set: azure.compute.DiskEncryptionSet
    users: list[azure.authorization.RoleAssignment]


def vault_name(spec: StackSpec, principal_id: str) -> str:
    """3-24 letters and digits: `fs`, a digest of the stack's name, then the start of the identity's object id."""
    digest = hashlib.sha256(spec.name.encode()).hexdigest()[:6]
    return f"fs{digest}{principal_id.replace('-', '')[:12]}"


def role_definition(subscription_id: str, role_id: str) -> str:
    return f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"


def create_key(
    name: str,
    spec: StackSpec,
    group: azure.resources.ResourceGroup,
    tenant_id: str,
    subscription_id: str,
    node_principal_id: pulumi.Output[str],
    parent: pulumi.Resource,
) -> NodeKey:
    opts = pulumi.ResourceOptions(parent=parent)
    vault = azure.keyvault.Vault(
        f"{name}-vault",
        vault_name=node_principal_id.apply(lambda principal: vault_name(spec, principal)),
        resource_group_name=group.name,
        location=spec.region,
        properties=azure.keyvault.VaultPropertiesArgs(
            tenant_id=tenant_id,
            sku=azure.keyvault.SkuArgs(family="A", name=azure.keyvault.SkuName.STANDARD),
            enable_rbac_authorization=True,
            enable_soft_delete=True,
            soft_delete_retention_in_days=SOFT_DELETE_DAYS,
            enable_purge_protection=True,
            enabled_for_disk_encryption=True,
        ),
        tags=spec.tags(),
        opts=opts,
    )
    key = azure.keyvault.Key(
        f"{name}-key",
        resource_group_name=group.name,
        vault_name=vault.name,
        properties=azure.keyvault.KeyPropertiesArgs(
            kty="RSA",
            key_size=KEY_SIZE,
            key_ops=["encrypt", "decrypt", "wrapKey", "unwrapKey"],
            rotation_policy=azure.keyvault.RotationPolicyArgs(
                attributes=azure.keyvault.KeyRotationPolicyAttributesArgs(expiry_time=EXPIRE_AFTER),
                lifetime_actions=[
                    azure.keyvault.LifetimeActionArgs(
                        action=azure.keyvault.ActionArgs(type=azure.keyvault.KeyRotationPolicyActionType.ROTATE),
                        trigger=azure.keyvault.TriggerArgs(time_after_create=ROTATE_AFTER),
                    )
                ],
            ),
        ),
        tags=spec.tags(),
        opts=opts,
    )
    encryption_set = azure.compute.DiskEncryptionSet(
        f"{name}-disks",
        resource_group_name=group.name,
        location=spec.region,
        encryption_type="EncryptionAtRestWithCustomerKey",
        identity=azure.compute.EncryptionSetIdentityArgs(type="SystemAssigned"),
        active_key=azure.compute.KeyForDiskEncryptionSetArgs(
            key_url=key.key_uri_with_version, source_vault=azure.compute.SourceVaultArgs(id=vault.id)
        ),
        rotation_to_latest_key_version_enabled=True,
        tags=spec.tags(),
        opts=opts,
    )
    grants = {
        "disks": (
            encryption_set.identity.apply(lambda identity: identity.principal_id if identity else ""),
            CRYPTO_SERVICE_ENCRYPTION_USER,
        ),
        "node": (node_principal_id, CRYPTO_SERVICE_ENCRYPTION_USER),
    }
    users = [
        azure.authorization.RoleAssignment(
            f"{name}-key-{who}",
            scope=key.id,
            principal_id=principal,
            principal_type="ServicePrincipal",
            role_definition_id=role_definition(subscription_id, role),
            opts=opts,
        )
        for who, (principal, role) in grants.items()
    ]
    return NodeKey(vault=vault, key=key, encryption_set=encryption_set, users=users)
