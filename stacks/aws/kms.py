"""AWS KMS: the customer-managed key that encrypts every EBS volume and the service's data keys.

Symmetric, rotation on, 30-day deletion window, and a key policy of four statements: the account administers
the key through IAM (without it the key would be unmanageable), the node's role may use it (the same
KMS_ACTIONS as its IAM policy), and the Auto Scaling service-linked role may use it and create grants for
the EBS volumes it attaches, which is how launches from the launch template decrypt them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from stacks.aws.identity import KMS_ACTIONS
from stacks.spec import StackSpec

EBS_ACTIONS = ("kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*")


@dataclass(frozen=True)
class NodeKey:
    key: aws.kms.Key
    alias: aws.kms.Alias


def autoscaling_role_arn(partition: str, account_id: str) -> str:
    return (
        f"arn:{partition}:iam::{account_id}:role/aws-service-role/autoscaling.amazonaws.com/"
        "AWSServiceRoleForAutoScaling"
    )


def key_policy(partition: str, account_id: str, node_role_arn: str) -> str:
    autoscaling = autoscaling_role_arn(partition, account_id)
    statements = [
        {
            "Sid": "AccountAdministersTheKeyThroughIam",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:{partition}:iam::{account_id}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "NodeRoleUsesTheKey",
            "Effect": "Allow",
            "Principal": {"AWS": node_role_arn},
            "Action": list(KMS_ACTIONS),
            "Resource": "*",
        },
        {
            "Sid": "AutoScalingEncryptsVolumes",
            "Effect": "Allow",
            "Principal": {"AWS": autoscaling},
            "Action": list(EBS_ACTIONS),
            "Resource": "*",
        },
        {
            "Sid": "AutoScalingGrantsVolumeAttachments",
            "Effect": "Allow",
            "Principal": {"AWS": autoscaling},
            "Action": "kms:CreateGrant",
            "Resource": "*",
            "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
        },
    ]
    return json.dumps({"Version": "2012-10-17", "Id": "foresight-node-key", "Statement": statements})


def create_key(
    name: str,
    spec: StackSpec,
    partition: str,
    account_id: str,
    node_role_arn: pulumi.Input[str],
    parent: pulumi.Resource,
) -> NodeKey:
    opts = pulumi.ResourceOptions(parent=parent)
    key = aws.kms.Key(
        f"{name}-key",
        description=f"Foresight stack {spec.stack}: EBS volumes and service data keys",
        key_usage="ENCRYPT_DECRYPT",
        customer_master_key_spec="SYMMETRIC_DEFAULT",
        enable_key_rotation=True,
        deletion_window_in_days=30,
        policy=pulumi.Output.from_input(node_role_arn).apply(lambda arn: key_policy(partition, account_id, arn)),
        tags=spec.tags(),
        opts=opts,
    )
    alias = aws.kms.Alias(
        f"{name}-key",
        name="alias/" + re.sub(r"[^A-Za-z0-9_-]", "-", spec.name),
        target_key_id=key.key_id,
        opts=opts,
    )
    return NodeKey(key=key, alias=alias)
