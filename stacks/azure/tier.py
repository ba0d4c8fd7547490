"""Azure scale-out shared tier: Azure Cache for Redis, reachable only through a private endpoint, Entra ID only.

It creates, as children of the calling component (`scale_out.py`):
- an Azure Cache for Redis (`SKU`): TLS 1.2 or newer on 6380 only (the non-TLS port is off), no public network
  access, Entra ID authentication on and access-key authentication off, so no password exists to leak;
  `allkeys-lru` eviction, since the tier is a cache of the origin;
- a private endpoint for it in the cluster's node subnet, and the private DNS zone
  `privatelink.redis.cache.windows.net` linked to the virtual network, so the cache's own host name resolves to
  the endpoint's private address from the pods (and its certificate still matches). A virtual network cannot be
  linked to two zones of that name, so on a given network that already resolves it (a hub's zone),
  `foresight:redisPrivateDnsZoneId` names that zone: the endpoint registers there, and no zone or link is made;
- a custom access policy that allows the commands of service/shared_tier.py on keys under `fs:` and nothing else,
  assigned to the pods' managed identity (object id), which is the user name the pods present with their token.

Why Standard C1 and private endpoint rather than Premium with VNet injection: the tier holds transient copies of
origin objects that every node can refetch, so Premium's persistence, clustering and larger sizes buy nothing it
needs at about four times the price; a private endpoint works on every tier and keeps the cache off the
internet just as well. Raise `SKU`'s capacity for a larger working set.

Accepted gap: Azure Cache for Redis offers customer-managed keys only for Premium's persistence files, which this
tier does not write; its data in memory and any platform snapshots use Microsoft-managed keys. The tier holds
transient cache data, the origin stays the system of record, and the snapshots and audit logs that need the
stack's key are encrypted by the service itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure

from stacks.spec import ConfigError, StackSpec, config_key

SKU = azure.redis.SkuArgs(name="Standard", family="C", capacity=1)
TLS_PORT = 6380
PRIVATE_DNS_ZONE = "privatelink.redis.cache.windows.net"
# service/shared_tier.py's commands (reads with PTTL, fills with SET NX EX, writes with SET PXAT, DEL, a flush by
# SCAN and UNLINK, the invalidation channel, and PING for health) and service/tier_usage.py's (the usage hashes:
# HSETNX, HGET, HSET, EXPIRE, HGETALL) on its key prefix `fs:`. Azure Cache for Redis
# 6 has no channel rules, so the channel is not named here.
ACCESS_POLICY_COMMANDS = ("ping", "get", "pttl", "set", "del", "unlink", "scan", "publish", "subscribe", "unsubscribe",
                          "hsetnx", "hget", "hset", "expire", "hgetall")
KEY_PATTERN = "fs:*"
ACCESS_POLICY_PERMISSIONS = " ".join([*(f"+{command}" for command in ACCESS_POLICY_COMMANDS), f"~{KEY_PATTERN}"])
ACCESS_POLICY = "foresight-node"
_ZONE_ID_RE = re.compile(
    r"/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[-\w.()]{1,90}/providers/Microsoft\.Network/privateDnsZones/"
    + re.escape(PRIVATE_DNS_ZONE),
    re.IGNORECASE,
)


def check_private_dns_zone_id(spec: StackSpec) -> None:
    """A given zone is a private DNS zone of exactly the name the cache's private endpoint registers in."""
    zone_id = spec.redis_private_dns_zone_id
    if zone_id is not None and not _ZONE_ID_RE.fullmatch(zone_id):
        raise ConfigError.one(
            config_key("redisPrivateDnsZoneId"),
            f"{zone_id!r} is not the resource id of a {PRIVATE_DNS_ZONE} zone "
            f"(/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.Network/privateDnsZones/{PRIVATE_DNS_ZONE})",
        )


@dataclass(frozen=True)
class SharedTier:
    cache: azure.redis.Redis
    access_policy: azure.redis.AccessPolicy
    access_assignment: azure.redis.AccessPolicyAssignment
    private_endpoint: azure.network.PrivateEndpoint
    dns_zone_group: azure.network.PrivateDnsZoneGroup
    # The stack's own zone and its link to the network; None where foresight:redisPrivateDnsZoneId names one.
    dns_zone: azure.privatedns.PrivateZone | None = None
    dns_link: azure.privatedns.VirtualNetworkLink | None = None

    @property
    def url(self) -> pulumi.Output[str]:
        """The tier's TLS URL, as the service's shared_tier_url takes it."""
        return pulumi.Output.concat("rediss://", self.cache.host_name, f":{TLS_PORT}")


def create_tier(
    name: str,
    spec: StackSpec,
    group: azure.resources.ResourceGroup,
    subnet_id: pulumi.Input[str],
    vnet_id: pulumi.Input[str],
    pods_principal_id: pulumi.Input[str],
    parent: pulumi.Resource,
) -> SharedTier:
    opts = pulumi.ResourceOptions(parent=parent)
    cache = azure.redis.Redis(
        f"{name}-tier",
        resource_group_name=group.name,
        location=spec.region,
        sku=SKU,
        enable_non_ssl_port=False,
        minimum_tls_version="1.2",
        public_network_access="Disabled",
        disable_access_key_authentication=True,
        redis_configuration=azure.redis.RedisCommonPropertiesRedisConfigurationArgs(
            aad_enabled="true", maxmemory_policy="allkeys-lru"
        ),
        tags=spec.tags(),
        opts=opts,
    )
    access_policy = azure.redis.AccessPolicy(
        f"{name}-tier-policy",
        resource_group_name=group.name,
        cache_name=cache.name,
        access_policy_name=ACCESS_POLICY,
        permissions=ACCESS_POLICY_PERMISSIONS,
        opts=opts,
    )
    access_assignment = azure.redis.AccessPolicyAssignment(
        f"{name}-tier-pods",
        resource_group_name=group.name,
        cache_name=cache.name,
        access_policy_name=ACCESS_POLICY,
        object_id=pods_principal_id,
        object_id_alias="foresight-pods",
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[access_policy]),
    )
    private_endpoint = azure.network.PrivateEndpoint(
        f"{name}-tier-endpoint",
        resource_group_name=group.name,
        location=spec.region,
        subnet=azure.network.SubnetArgs(id=subnet_id),
        private_link_service_connections=[
            azure.network.PrivateLinkServiceConnectionArgs(
                name="redis", private_link_service_id=cache.id, group_ids=["redisCache"]
            )
        ],
        tags=spec.tags(),
        opts=opts,
    )
    dns_zone, dns_link = None, None
    zone_id: pulumi.Input[str]
    if spec.redis_private_dns_zone_id is not None:
        zone_id = spec.redis_private_dns_zone_id
    else:
        dns_zone, dns_link = _own_dns_zone(name, spec, group, vnet_id, parent)
        zone_id = dns_zone.id
    dns_zone_group = azure.network.PrivateDnsZoneGroup(
        f"{name}-tier-dns-group",
        resource_group_name=group.name,
        private_endpoint_name=private_endpoint.name,
        private_dns_zone_configs=[azure.network.PrivateDnsZoneConfigArgs(name="redis", private_dns_zone_id=zone_id)],
        # The records go in once the zone resolves for the network.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[dns_link] if dns_link is not None else []),
    )
    return SharedTier(
        cache=cache,
        access_policy=access_policy,
        access_assignment=access_assignment,
        private_endpoint=private_endpoint,
        dns_zone_group=dns_zone_group,
        dns_zone=dns_zone,
        dns_link=dns_link,
    )


def _own_dns_zone(
    name: str,
    spec: StackSpec,
    group: azure.resources.ResourceGroup,
    vnet_id: pulumi.Input[str],
    parent: pulumi.Resource,
) -> tuple[azure.privatedns.PrivateZone, azure.privatedns.VirtualNetworkLink]:
    """The zone the cache's private endpoint registers in, linked to the network the pods resolve from."""
    opts = pulumi.ResourceOptions(parent=parent)
    dns_zone = azure.privatedns.PrivateZone(
        f"{name}-tier-dns",
        resource_group_name=group.name,
        private_zone_name=PRIVATE_DNS_ZONE,
        location="global",
        tags=spec.tags(),
        opts=opts,
    )
    dns_link = azure.privatedns.VirtualNetworkLink(
        f"{name}-tier-dns-link",
        resource_group_name=group.name,
        private_zone_name=dns_zone.name,
        location="global",
        virtual_network=azure.privatedns.SubResourceArgs(id=vnet_id),
        registration_enabled=False,
        tags=spec.tags(),
        opts=opts,
    )
    return dns_zone, dns_link
