"""AWS scale-out: the shared tier, an ElastiCache for Valkey replication group the pods reach with IAM, no password.

It creates:
- a security group admitting 6379 only from the EKS cluster security group (every managed node carries it);
- a subnet group over the private subnets and a parameter group (`valkey8`, maxmemory-policy allkeys-lru: the
  tier is a cache, whatever it holds the origin has too);
- the replication group: a primary and a replica in two zones with automatic failover (multi-AZ), TLS required
  in transit, encrypted at rest with the stack's KMS key;
- IAM authentication (`service/shared_tier_auth.py`): the pods' user, authenticated by IAM (its id is its name,
  as ElastiCache requires), allowed the service's keys (`fs:*`), its invalidation channel and the commands
  `service/shared_tier.py` sends, nothing else; the `default` user every user group must hold, switched off;
  and the user group joining them. No password or auth token exists anywhere, so none reaches the state.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from stacks.spec import StackSpec

ENGINE = "valkey"
ENGINE_VERSION = "8.0"
PARAMETER_FAMILY = "valkey8"
NODE_TYPE = "cache.r7g.large"
PORT = 6379
CACHE_CLUSTERS = 2  # a primary and one replica, in different zones
KEY_PATTERN = "fs:*"  # service.shared_tier.KEY_PREFIX
CHANNEL = "foresight:invalidate"  # the service's default shared_tier_channel
# Every command service/shared_tier.py sends (GET and PTTL in one pipeline, SET NX/PXAT, DEL, UNLINK, SCAN,
# PUBLISH, SUBSCRIBE), those service/tier_usage.py sends (HSETNX, HGET, HSET, EXPIRE, HGETALL) and what redis-py
# sends to connect and keep connections alive (AUTH, HELLO, PING). redis-py also sends CLIENT SETINFO, but ignores
# its refusal, so it stays refused.
COMMANDS = ("auth", "hello", "ping", "get", "pttl", "set", "del", "unlink", "scan", "publish", "subscribe",
            "hsetnx", "hget", "hset", "expire", "hgetall")
POD_ACCESS_STRING = f"on ~{KEY_PATTERN} &{CHANNEL} -@all " + " ".join(f"+{command}" for command in COMMANDS)
# A user off and without any permission: it exists only because every user group must hold a `default` user.
DISABLED_ACCESS_STRING = "off -@all"
ID_LENGTH = 40  # replication group, user and user group ids
DIGEST_LENGTH = 8


def _cleaned(text: str) -> str:
    """Lowercase letters, digits and single hyphens, a letter first, no hyphen at either end."""
    cleaned = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")
    return cleaned if cleaned[:1].isalpha() else f"fs-{cleaned}"


def elasticache_id(name: str, role: str = "") -> str:
    """The ElastiCache id of `role` (a user's: "pods", "default"; "" for the group) in stack `name`: a letter
    first, then lowercase letters, digits and single hyphens, at most 40 characters. `<name>-<role>` as it is
    when it fits; else the name cut short, a digest of the full name and role, and the role's first letters, so
    two roles of one stack, or two stacks with a long common prefix, never share an id in one account and region."""
    full = _cleaned(f"{name}-{role}" if role else name)
    if len(full) <= ID_LENGTH:
        return full
    digest = hashlib.sha256(f"{name}\0{role}".encode()).hexdigest()[:DIGEST_LENGTH]
    suffix = f"-{digest}" + (f"-{_cleaned(role)[:3].rstrip('-')}" if role else "")
    return f"{_cleaned(name)[: ID_LENGTH - len(suffix)].rstrip('-')}{suffix}"


@dataclass(frozen=True)
class SharedTier:
    security_group: aws.ec2.SecurityGroup
    ingress: aws.vpc.SecurityGroupIngressRule
    subnet_group: aws.elasticache.SubnetGroup
    parameter_group: aws.elasticache.ParameterGroup
    pods_user: aws.elasticache.User
    default_user: aws.elasticache.User
    user_group: aws.elasticache.UserGroup
    replication_group: aws.elasticache.ReplicationGroup

    @property
    def url(self) -> pulumi.Output[str]:
        """What the pods connect to: TLS to the primary endpoint (it follows a failover)."""
        return pulumi.Output.concat("rediss://", self.replication_group.primary_endpoint_address, f":{PORT}")


def create_tier(
    name: str,
    spec: StackSpec,
    *,
    vpc_id: pulumi.Input[str],
    subnet_ids: list[pulumi.Output[str]],
    client_security_group_id: pulumi.Input[str],
    key_arn: pulumi.Input[str],
    parent: pulumi.Resource,
) -> SharedTier:
    opts = pulumi.ResourceOptions(parent=parent)
    security_group = aws.ec2.SecurityGroup(
        f"{name}-tier",
        vpc_id=vpc_id,
        description=f"Foresight {spec.stack}: Valkey from the EKS nodes only",
        tags={**spec.tags(), "Name": f"{spec.name}-tier"},
        opts=opts,
    )
    ingress = aws.vpc.SecurityGroupIngressRule(
        f"{name}-tier-in-{PORT}",
        security_group_id=security_group.id,
        ip_protocol="tcp",
        from_port=PORT,
        to_port=PORT,
        referenced_security_group_id=client_security_group_id,
        description="Valkey (TLS) from the EKS cluster security group",
        tags=spec.tags(),
        opts=opts,
    )
    subnet_group = aws.elasticache.SubnetGroup(
        f"{name}-tier",
        description=f"Foresight {spec.stack}: private subnets",
        subnet_ids=subnet_ids,
        tags=spec.tags(),
        opts=opts,
    )
    parameter_group = aws.elasticache.ParameterGroup(
        f"{name}-tier",
        family=PARAMETER_FAMILY,
        description=f"Foresight {spec.stack}: a cache, evicting least recently used keys",
        parameters=[aws.elasticache.ParameterGroupParameterArgs(name="maxmemory-policy", value="allkeys-lru")],
        tags=spec.tags(),
        opts=opts,
    )
    pods_id = elasticache_id(spec.name, "pods")
    pods_user = aws.elasticache.User(
        f"{name}-tier-pods",
        user_id=pods_id,
        user_name=pods_id,  # IAM authentication requires the name to be the id
        engine=ENGINE,
        access_string=POD_ACCESS_STRING,
        authentication_mode=aws.elasticache.UserAuthenticationModeArgs(type="iam"),
        tags=spec.tags(),
        opts=opts,
    )
    default_user = aws.elasticache.User(
        f"{name}-tier-default",
        user_id=elasticache_id(spec.name, "default"),
        user_name="default",
        engine=ENGINE,
        access_string=DISABLED_ACCESS_STRING,
        authentication_mode=aws.elasticache.UserAuthenticationModeArgs(type="no-password-required"),
        tags=spec.tags(),
        opts=opts,
    )
    user_group = aws.elasticache.UserGroup(
        f"{name}-tier",
        user_group_id=elasticache_id(spec.name),
        engine=ENGINE,
        user_ids=[default_user.user_id, pods_user.user_id],
        tags=spec.tags(),
        opts=opts,
    )
    replication_group = aws.elasticache.ReplicationGroup(
        f"{name}-tier",
        replication_group_id=elasticache_id(spec.name),
        description=f"Foresight {spec.stack}: shared tier",
        engine=ENGINE,
        engine_version=ENGINE_VERSION,
        node_type=NODE_TYPE,
        port=PORT,
        num_cache_clusters=CACHE_CLUSTERS,
        automatic_failover_enabled=True,
        multi_az_enabled=True,
        subnet_group_name=subnet_group.name,
        security_group_ids=[security_group.id],
        parameter_group_name=parameter_group.name,
        transit_encryption_enabled=True,
        transit_encryption_mode="required",
        at_rest_encryption_enabled=True,
        kms_key_id=key_arn,
        user_group_ids=[user_group.user_group_id],
        auto_minor_version_upgrade=True,
        tags=spec.tags(),
        opts=opts,
    )
    return SharedTier(
        security_group=security_group,
        ingress=ingress,
        subnet_group=subnet_group,
        parameter_group=parameter_group,
        pods_user=pods_user,
        default_user=default_user,
        user_group=user_group,
        replication_group=replication_group,
    )
