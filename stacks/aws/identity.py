"""AWS identity: the node's IAM role and instance profile, least privilege.

The role may use its own KMS key (encrypt, decrypt, generate data keys, describe, re-encrypt under it), write
its stack's folder of the audit bucket when there is one, read the tenants' origin buckets the stack names, and
carries the AWS-managed AmazonSSMManagedInstanceCore policy for Session Manager; nothing else. Logging in to
Vault needs no permission (it signs sts:GetCallerIdentity, which every principal may call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from stacks.spec import StackSpec

# What the service's envelope encryption needs from its key, and all the role gets. ReEncryptFrom and ReEncryptTo
# (kms:ReEncrypt*, named one by one) are its rewrap (service/security/kms/aws.py), which moves a data key between
# key versions or keys without it ever leaving KMS; every statement scopes them to the stack's key.
KMS_ACTIONS = (
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
)
SSM_CORE_POLICY = "AmazonSSMManagedInstanceCore"


@dataclass(frozen=True)
class NodeIdentity:
    role: aws.iam.Role
    instance_profile: aws.iam.InstanceProfile
    ssm_core: aws.iam.RolePolicyAttachment


def create_identity(name: str, spec: StackSpec, partition: str, parent: pulumi.Resource) -> NodeIdentity:
    """The role EC2 assumes for the node, its SSM attachment and its instance profile."""
    opts = pulumi.ResourceOptions(parent=parent)
    role = aws.iam.Role(
        f"{name}-node",
        description=f"Foresight node of stack {spec.stack}",
        assume_role_policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
        tags=spec.tags(),
        opts=opts,
    )
    ssm_core = aws.iam.RolePolicyAttachment(
        f"{name}-node-ssm",
        role=role.name,
        policy_arn=f"arn:{partition}:iam::aws:policy/{SSM_CORE_POLICY}",
        opts=opts,
    )
    instance_profile = aws.iam.InstanceProfile(f"{name}-node", role=role.name, tags=spec.tags(), opts=opts)
    return NodeIdentity(role=role, instance_profile=instance_profile, ssm_core=ssm_core)


def grant_key_use(
    name: str, identity: NodeIdentity, key_arn: pulumi.Input[str], parent: pulumi.Resource
) -> aws.iam.RolePolicy:
    """The role's only inline policy: KMS_ACTIONS on this one key."""
    return aws.iam.RolePolicy(
        f"{name}-node-kms",
        role=identity.role.id,
        policy=pulumi.Output.from_input(key_arn).apply(
            lambda arn: json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": list(KMS_ACTIONS), "Resource": arn}],
                }
            )
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def audit_shipping_statements(objects: Any, bucket: Any, listed: Any) -> list[dict[str, Any]]:
    """Put and read back (the shipper compares sizes) the `objects` (an ARN pattern), and list only the `listed`
    prefix of `bucket`: s3fs lists to look up a copy that is not there yet, and without it shipping fails. No
    delete: pruning is local, the bucket keeps everything. Strings here, CloudFormation intrinsics in the AWS
    Marketplace template."""
    return [
        {"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"], "Resource": objects},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket,
         "Condition": {"StringLike": {"s3:prefix": listed}}},
    ]


def audit_shipping_policy(spec: StackSpec, partition: str) -> str:
    """The stack's folder of foresight:auditBucket, as a policy document."""
    bucket = f"arn:{partition}:s3:::{spec.audit_bucket}"
    statements = audit_shipping_statements(f"{bucket}/{spec.audit_prefix}/*", bucket, f"{spec.audit_prefix}/*")
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def grant_audit_shipping(
    name: str, spec: StackSpec, role: aws.iam.Role, partition: str, parent: pulumi.Resource
) -> aws.iam.RolePolicy | None:
    """The node's (or the pods') write access to the audit bucket, when foresight:auditBucket names one."""
    if spec.audit_bucket is None:
        return None
    return aws.iam.RolePolicy(
        f"{name}-audit", role=role.id, policy=audit_shipping_policy(spec, partition),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def origin_read_statements(objects: Any, buckets: Any) -> list[dict[str, Any]]:
    """Get the `objects` (ARN patterns) and list the `buckets`: without s3:ListBucket S3 answers a missing key with
    403 instead of 404, so every miss would be an origin error (and the service's check that the bucket exists is
    a HeadBucket, which needs it too). Nothing that writes. Lists here, CloudFormation intrinsics in the AWS
    Marketplace template."""
    return [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": objects},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": buckets},
    ]


def origin_read_policy(spec: StackSpec, partition: str) -> str:
    """Read on each foresight:originBuckets bucket, as a policy document."""
    buckets = [f"arn:{partition}:s3:::{bucket}" for bucket in spec.origin_buckets]
    statements = origin_read_statements([f"{bucket}/*" for bucket in buckets], buckets)
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def grant_origin_read(
    name: str, spec: StackSpec, role: aws.iam.Role, partition: str, parent: pulumi.Resource
) -> list[aws.iam.RolePolicy]:
    """The node's (or the pods') read on the tenants' origin buckets, when foresight:originBuckets names any. A
    bucket in another account must also allow the role in its own bucket policy (docs/stacks-aws.md)."""
    if not spec.origin_buckets:
        return []
    return [aws.iam.RolePolicy(
        f"{name}-origins", role=role.id, policy=origin_read_policy(spec, partition),
        opts=pulumi.ResourceOptions(parent=parent),
    )]
