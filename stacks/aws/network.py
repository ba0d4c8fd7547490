"""AWS network: the VPC (own or given), the security groups, and the Network Load Balancer before the node.

Own network: a VPC over up to two zones that offer the GPU type, public subnets (internet gateway, NAT
gateway, internet-facing load balancer) and private subnets for the node, which never gets a public address.
Bring your own: `foresight:vpcId` + `foresight:subnetIds` hold both the node and the load balancer.

Firewall: the load balancer's group admits the service ports from `foresight:allowedCidrs` only (the VPC's
own range when that list is empty); the node's group admits the service ports from the load balancer's
group only, plus SSH from the allowed ranges when a key is configured (never from 0.0.0.0/0). The node may
leave only to HTTPS (image registry, SSM, KMS, STS) and to Vault's port.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

import pulumi
import pulumi_aws as aws

from stacks.spec import HTTPS_PORT, RESP_PORT, SERVICE_PORTS, ConfigError, StackSpec, config_key

OWN_VPC_CIDR = IPv4Network("10.42.0.0/16")
ZONE_COUNT = 2
SSH_PORT = 22
WORLD = IPv4Network("0.0.0.0/0")


def check_network_ids(spec: StackSpec) -> None:
    """Bring-your-own ids must look like AWS ids (the API would reject them much later, less clearly)."""
    if spec.vpc_id is not None and not re.fullmatch(r"vpc-[0-9a-f]{8,17}", spec.vpc_id):
        raise ConfigError.one(config_key("vpcId"), f"{spec.vpc_id!r} is not a VPC id such as vpc-0abc1234")
    for subnet_id in spec.subnet_ids:
        if not re.fullmatch(r"subnet-[0-9a-f]{8,17}", subnet_id):
            raise ConfigError.one(config_key("subnetIds"), f"{subnet_id!r} is not a subnet id such as subnet-0abc1234")


@dataclass(frozen=True)
class Network:
    vpc_id: pulumi.Output[str]
    vpc_cidr: str
    node_subnet_ids: list[pulumi.Output[str]]
    lb_subnet_ids: list[pulumi.Output[str]]
    node_public_ip: bool
    vpc: aws.ec2.Vpc | None = None
    nat_gateway: aws.ec2.NatGateway | None = None


@dataclass(frozen=True)
class Endpoint:
    load_balancer: aws.lb.LoadBalancer
    target_groups: dict[int, aws.lb.TargetGroup]
    listeners: dict[int, aws.lb.Listener]
    lb_security_group: aws.ec2.SecurityGroup
    node_security_group: aws.ec2.SecurityGroup

    @property
    def host(self) -> pulumi.Output[str]:
        return self.load_balancer.dns_name


def create_network(
    name: str, spec: StackSpec, parent: pulumi.Resource, lb_subnet_tags: Mapping[str, str] | None = None
) -> Network:
    """The VPC and subnets (yours, or new ones with their gateways), children of `parent`. `lb_subnet_tags` go
    on the own load balancer subnets' own tags (an `aws.ec2.Tag` on a subnet that tags itself would be removed
    by the subnet's next update); given subnets are left as they are."""
    if spec.vpc_id is not None:
        vpc = aws.ec2.get_vpc(id=spec.vpc_id, opts=pulumi.InvokeOptions(parent=parent))
        subnets = [pulumi.Output.from_input(subnet_id) for subnet_id in spec.subnet_ids]
        # Given subnets serve the node and the load balancer alike; an internet-facing endpoint needs public
        # subnets, where the node needs a public address to reach out (its group still admits only the LB).
        return Network(
            vpc_id=pulumi.Output.from_input(spec.vpc_id),
            vpc_cidr=vpc.cidr_block,
            node_subnet_ids=subnets,
            lb_subnet_ids=subnets,
            node_public_ip=spec.public_endpoint,
        )
    return _own_network(name, spec, parent, lb_subnet_tags or {})


def _own_network(name: str, spec: StackSpec, parent: pulumi.Resource, lb_subnet_tags: Mapping[str, str]) -> Network:
    opts = pulumi.ResourceOptions(parent=parent)
    zones = _zones_offering(spec, parent)
    vpc = aws.ec2.Vpc(
        f"{name}-vpc",
        cidr_block=str(OWN_VPC_CIDR),
        enable_dns_hostnames=True,
        enable_dns_support=True,
        tags=_tags(spec, f"{spec.name}-vpc"),
        opts=opts,
    )
    gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=_tags(spec, f"{spec.name}-igw"), opts=opts)
    blocks = list(OWN_VPC_CIDR.subnets(new_prefix=20))
    public_subnets, private_subnets = [], []
    public_tags = lb_subnet_tags if spec.public_endpoint else {}
    private_tags = {} if spec.public_endpoint else lb_subnet_tags
    for index, zone in enumerate(zones):
        public_subnets.append(
            aws.ec2.Subnet(
                f"{name}-public-{index}",
                vpc_id=vpc.id,
                cidr_block=str(blocks[index]),
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags={**_tags(spec, f"{spec.name}-public-{zone}"), **public_tags},
                opts=opts,
            )
        )
        private_subnets.append(
            aws.ec2.Subnet(
                f"{name}-private-{index}",
                vpc_id=vpc.id,
                cidr_block=str(blocks[ZONE_COUNT + index]),
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags={**_tags(spec, f"{spec.name}-private-{zone}"), **private_tags},
                opts=opts,
            )
        )
    public_routes = aws.ec2.RouteTable(
        f"{name}-public-routes",
        vpc_id=vpc.id,
        routes=[aws.ec2.RouteTableRouteArgs(cidr_block=str(WORLD), gateway_id=gateway.id)],
        tags=_tags(spec, f"{spec.name}-public"),
        opts=opts,
    )
    nat_address = aws.ec2.Eip(f"{name}-nat-ip", domain="vpc", tags=_tags(spec, f"{spec.name}-nat"), opts=opts)
    nat_gateway = aws.ec2.NatGateway(
        f"{name}-nat",
        allocation_id=nat_address.id,
        subnet_id=public_subnets[0].id,
        tags=_tags(spec, f"{spec.name}-nat"),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[gateway]),
    )
    private_routes = aws.ec2.RouteTable(
        f"{name}-private-routes",
        vpc_id=vpc.id,
        routes=[aws.ec2.RouteTableRouteArgs(cidr_block=str(WORLD), nat_gateway_id=nat_gateway.id)],
        tags=_tags(spec, f"{spec.name}-private"),
        opts=opts,
    )
    for index, (public, private) in enumerate(zip(public_subnets, private_subnets, strict=True)):
        aws.ec2.RouteTableAssociation(
            f"{name}-public-{index}", subnet_id=public.id, route_table_id=public_routes.id, opts=opts
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-private-{index}", subnet_id=private.id, route_table_id=private_routes.id, opts=opts
        )
    return Network(
        vpc_id=vpc.id,
        vpc_cidr=str(OWN_VPC_CIDR),
        node_subnet_ids=[subnet.id for subnet in private_subnets],
        lb_subnet_ids=[subnet.id for subnet in (public_subnets if spec.public_endpoint else private_subnets)],
        node_public_ip=False,
        vpc=vpc,
        nat_gateway=nat_gateway,
    )


def _zones_offering(spec: StackSpec, parent: pulumi.Resource) -> list[str]:
    """Up to ZONE_COUNT zones of the region that offer the primary GPU type, in name order."""
    offerings = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone",
        filters=[aws.ec2.GetInstanceTypeOfferingsFilterArgs(name="instance-type", values=[spec.instance_type])],
        opts=pulumi.InvokeOptions(parent=parent),
    )
    zones = sorted(set(offerings.locations))[:ZONE_COUNT]
    if not zones:
        raise ConfigError.one(
            config_key("instanceType"), f"{spec.instance_type} is not offered in any zone of {spec.region}"
        )
    return zones


def _security_groups(
    name: str, spec: StackSpec, vpc_id: pulumi.Input[str], vpc_cidr: str, parent: pulumi.Resource
) -> tuple[aws.ec2.SecurityGroup, aws.ec2.SecurityGroup]:
    """The load balancer's group and the node's group, with their rules."""
    opts = pulumi.ResourceOptions(parent=parent)
    sources = [str(cidr) for cidr in spec.allowed_cidrs] or [vpc_cidr]
    lb_group = aws.ec2.SecurityGroup(
        f"{name}-lb",
        vpc_id=vpc_id,
        description=f"Foresight {spec.stack}: service ports from the allowed CIDRs",
        tags=_tags(spec, f"{spec.name}-lb"),
        opts=opts,
    )
    node_group = aws.ec2.SecurityGroup(
        f"{name}-node",
        vpc_id=vpc_id,
        description=f"Foresight {spec.stack}: service ports from the load balancer only",
        tags=_tags(spec, f"{spec.name}-node"),
        opts=opts,
    )
    ingress, egress = aws.vpc.SecurityGroupIngressRule, aws.vpc.SecurityGroupEgressRule

    def rule(kind: type[Any], resource_name: str, group: aws.ec2.SecurityGroup, port: int, description: str,
             **peer: Any) -> None:
        """One TCP port to or from one peer (`cidr_ipv4=` or `referenced_security_group_id=`)."""
        kind(resource_name, security_group_id=group.id, ip_protocol="tcp", from_port=port, to_port=port,
             description=description, tags=spec.tags(), opts=opts, **peer)

    for port in SERVICE_PORTS:
        service = _port_name(port)
        for index, cidr in enumerate(sources):
            rule(ingress, f"{name}-lb-in-{port}-{index}", lb_group, port, f"{service} from {cidr}", cidr_ipv4=cidr)
        rule(egress, f"{name}-lb-out-{port}", lb_group, port, f"{service} to the node",
             referenced_security_group_id=node_group.id)
        rule(ingress, f"{name}-node-in-{port}", node_group, port,
             f"{service} and health checks from the load balancer", referenced_security_group_id=lb_group.id)
    if spec.ssh_public_key is not None:
        for index, cidr in enumerate(source for source in sources if IPv4Network(source) != WORLD):
            rule(ingress, f"{name}-node-ssh-{index}", node_group, SSH_PORT, f"break-glass SSH from {cidr}",
                 cidr_ipv4=cidr)
    for port in sorted({443, spec.vault_port}):
        rule(egress, f"{name}-node-out-{port}", node_group, port,
             "HTTPS out (registry, SSM, KMS, STS)" if port == 443 else "Vault", cidr_ipv4=str(WORLD))
    return lb_group, node_group


def create_endpoint(name: str, spec: StackSpec, network: Network, parent: pulumi.Resource) -> Endpoint:
    """The Network Load Balancer: a stable DNS name for the certificate, TCP passthrough to the node's TLS; and
    the two security groups of that path (the balancer's from the allowed CIDRs, the node's from the balancer)."""
    opts = pulumi.ResourceOptions(parent=parent)
    lb_group, node_group = _security_groups(name, spec, network.vpc_id, network.vpc_cidr, parent)
    load_balancer = aws.lb.LoadBalancer(
        f"{name}-nlb",
        load_balancer_type="network",
        internal=not spec.public_endpoint,
        subnets=network.lb_subnet_ids,
        security_groups=[lb_group.id],
        enable_cross_zone_load_balancing=True,
        tags=_tags(spec, f"{spec.name}-nlb"),
        opts=opts,
    )
    target_groups: dict[int, aws.lb.TargetGroup] = {}
    listeners: dict[int, aws.lb.Listener] = {}
    for port in SERVICE_PORTS:
        target_groups[port] = aws.lb.TargetGroup(
            f"{name}-{_port_name(port).lower()}",
            port=port,
            protocol="TCP",
            target_type="instance",
            vpc_id=network.vpc_id,
            deregistration_delay=30,
            # The service is healthy when its HTTPS /healthz answers; both ports share that verdict.
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                protocol="HTTPS", port=str(HTTPS_PORT), path="/healthz", interval=10, healthy_threshold=2
            ),
            tags=_tags(spec, f"{spec.name}-{port}"),
            opts=opts,
        )
        listeners[port] = aws.lb.Listener(
            f"{name}-{_port_name(port).lower()}",
            load_balancer_arn=load_balancer.arn,
            port=port,
            protocol="TCP",
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=target_groups[port].arn)
            ],
            tags=spec.tags(),
            opts=opts,
        )
    return Endpoint(
        load_balancer=load_balancer,
        target_groups=target_groups,
        listeners=listeners,
        lb_security_group=lb_group,
        node_security_group=node_group,
    )


def _port_name(port: int) -> str:
    return {RESP_PORT: "RESP", HTTPS_PORT: "HTTPS"}[port]


def _tags(spec: StackSpec, name: str) -> dict[str, str]:
    return {**spec.tags(), "Name": name}
