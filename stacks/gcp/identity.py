"""Google Cloud identity: the node's own service account, and its roles on the audit and origin buckets, if any.

Its permissions are granted on what it uses: the stack's Cloud KMS key (`kms.py`), the audit bucket when
foresight:auditBucket names one (`grant_audit_shipping`) and the buckets foresight:originBuckets names
(`grant_origin_read`), so the account holds no project-wide role at all.
Logging in to Vault needs no permission either: the node presents the identity token the metadata server signs
for any VM's account.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from stacks.spec import StackSpec


@dataclass(frozen=True)
class NodeIdentity:
    account: gcp.serviceaccount.Account

    @property
    def email(self) -> pulumi.Output[str]:
        return self.account.email


def account_id(spec: StackSpec) -> str:
    """A service account id (6-30 characters, `[a-z][-a-z0-9]*[a-z0-9]`) unique to this project and stack: the
    stack's name as far as it fits, then a digest of the full name so two long names never collide."""
    stem = re.sub(r"[^a-z0-9-]", "-", spec.stack.lower()).strip("-")[:19]
    digest = hashlib.sha256(spec.name.encode()).hexdigest()[:6]
    return f"fs-{stem}-{digest}" if stem else f"fs-node-{digest}"


def create_identity(name: str, spec: StackSpec, parent: pulumi.Resource) -> NodeIdentity:
    account = gcp.serviceaccount.Account(
        f"{name}-node",
        account_id=account_id(spec),
        display_name=f"Foresight node of stack {spec.stack}",
        description="Runs the Foresight GPU node; may use the stack's Cloud KMS key and nothing else.",
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return NodeIdentity(account=account)


# Create objects and read them back (the shipper compares sizes); neither may delete or overwrite a retained one.
AUDIT_ROLES = ("roles/storage.objectCreator", "roles/storage.objectViewer")


def grant_audit_shipping(
    name: str, spec: StackSpec, email: pulumi.Input[str], parent: pulumi.Resource
) -> list[gcp.storage.BucketIAMMember]:
    """The node's (or the pods') access to the audit bucket, when foresight:auditBucket names one."""
    if spec.audit_bucket is None:
        return []
    return [
        gcp.storage.BucketIAMMember(
            f"{name}-audit-{role.rsplit('.', 1)[1]}",
            bucket=spec.audit_bucket,
            role=role,
            member=pulumi.Output.concat("serviceAccount:", email),
            opts=pulumi.ResourceOptions(parent=parent),
        )
        for role in AUDIT_ROLES
    ]


# Read and list objects: what an origin's reads and misses need. No storage.buckets.get: the service takes the 403
# on its bucket check as "it exists".
ORIGIN_ROLE = "roles/storage.objectViewer"


def grant_origin_read(
    name: str, spec: StackSpec, email: pulumi.Input[str], parent: pulumi.Resource
) -> list[gcp.storage.BucketIAMMember]:
    """The node's (or the pods') read on each bucket foresight:originBuckets names; one member per bucket, named
    after it, so adding or removing a bucket touches that bucket's grant only."""
    return [
        gcp.storage.BucketIAMMember(
            f"{name}-origin-{bucket}",
            bucket=bucket,
            role=ORIGIN_ROLE,
            member=pulumi.Output.concat("serviceAccount:", email),
            opts=pulumi.ResourceOptions(parent=parent),
        )
        for bucket in spec.origin_buckets
    ]
