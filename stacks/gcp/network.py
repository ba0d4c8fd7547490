"""Google Cloud network: the VPC (own or given), its firewall, and the passthrough load balancer before the node.

Own network: a custom-mode VPC with one subnet in the stack's region (Private Google Access on, so KMS and the
other Google APIs are reached without a public address), and Cloud NAT through a Cloud Router for the image
pull; the node never gets a public address. Bring your own: `foresight:vpcId` names the VPC network and
`foresight:subnetIds` its one subnet in the region (which must give the node a way out: Cloud NAT or a proxy).

Load balancer: a regional passthrough Network Load Balancer (a backend service of the node's managed instance
group, a forwarding rule for 6380 and 8443 on a reserved address), external when an allowed CIDR is public and
internal otherwise. A passthrough balancer keeps the client's address, so the firewall admits the service
ports from `foresight:allowedCidrs` straight to the node (the subnet's own range when that list is empty), and
8443 from Google's health checkers. Firewall rules name the node's service account as their target. SSH only
with a key, from the allowed ranges, never from 0.0.0.0/0. Egress: HTTP (apt, at first boot), HTTPS and Vault's
port only; the metadata server, which the firewall never filters, answers DNS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Network

import pulumi
import pulumi_gcp as gcp

from stacks.spec import HTTPS_PORT, SERVICE_PORTS, ConfigError, StackSpec, config_key

OWN_SUBNET_CIDR = IPv4Network("10.42.0.0/20")
SSH_PORT = 22
WORLD = IPv4Network("0.0.0.0/0")
# Where Google's health checks come from: load balancer checks (passthrough external and internal) and the
# managed instance group's autohealing (https://cloud.google.com/load-balancing/docs/health-check-concepts).
HEALTH_CHECK_RANGES = ("35.191.0.0/16", "130.211.0.0/22", "209.85.152.0/22", "209.85.204.0/22")
ALLOW_PRIORITY = 1000
DENY_EGRESS_PRIORITY = 65000
_NAME = r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"
_NETWORK_RE = re.compile(rf"(?:projects/[a-z][-a-z0-9.:]*/global/networks/)?{_NAME}")
_SUBNET_RE = re.compile(rf"(?:projects/[a-z][-a-z0-9.:]*/regions/(?P<region>[a-z0-9-]+)/subnetworks/)?{_NAME}")


def check_network_ids(spec: StackSpec) -> None:
    """A bring-your-own network is one VPC network and one subnet of it in the stack's region."""
    if spec.vpc_id is not None and not _NETWORK_RE.fullmatch(spec.vpc_id):
        raise ConfigError.one(
            config_key("vpcId"), f"{spec.vpc_id!r} is not a VPC network name such as my-vpc (or its self link)"
        )
    if len(spec.subnet_ids) > 1:
        raise ConfigError.one(
            config_key("subnetIds"), "give exactly one subnet (a Google Cloud subnet spans the region's zones)"
        )
    for subnet_id in spec.subnet_ids:
        match = _SUBNET_RE.fullmatch(subnet_id)
        if match is None:
            raise ConfigError.one(
                config_key("subnetIds"), f"{subnet_id!r} is not a subnet name such as my-subnet (or its self link)"
            )
        if match["region"] is not None and match["region"] != spec.region:
            raise ConfigError.one(
                config_key("subnetIds"), f"{subnet_id!r} is in {match['region']}, not the stack's region {spec.region}"
            )


@dataclass(frozen=True)
class Network:
    network: pulumi.Output[str]  # the VPC network's self link or name
    subnetwork: pulumi.Output[str]
    subnet_cidr: str
    vpc: gcp.compute.Network | None = None
    subnet: gcp.compute.Subnetwork | None = None
    router: gcp.compute.Router | None = None
    nat: gcp.compute.RouterNat | None = None


@dataclass(frozen=True)
class Endpoint:
    address: gcp.compute.Address
    health_check: gcp.compute.RegionHealthCheck
    backend_service: gcp.compute.RegionBackendService | None = None
    forwarding_rule: gcp.compute.ForwardingRule | None = None

    @property
    def host(self) -> pulumi.Output[str]:
        return self.address.address


def create_network(name: str, spec: StackSpec, parent: pulumi.Resource) -> Network:
    if spec.vpc_id is not None:
        subnet_id = spec.subnet_ids[0]
        invoke = pulumi.InvokeOptions(parent=parent)
        found = (
            gcp.compute.get_subnetwork(self_link=subnet_id, opts=invoke)
            if "/" in subnet_id
            else gcp.compute.get_subnetwork(name=subnet_id, region=spec.region, opts=invoke)
        )
        return Network(
            network=pulumi.Output.from_input(spec.vpc_id),
            subnetwork=pulumi.Output.from_input(found.self_link),
            subnet_cidr=found.ip_cidr_range,
        )
    opts = pulumi.ResourceOptions(parent=parent)
    vpc = gcp.compute.Network(
        f"{name}-vpc",
        auto_create_subnetworks=False,
        routing_mode="REGIONAL",
        description=f"Foresight stack {spec.stack}",
        opts=opts,
    )
    subnet = gcp.compute.Subnetwork(
        f"{name}-subnet",
        network=vpc.id,
        region=spec.region,
        ip_cidr_range=str(OWN_SUBNET_CIDR),
        private_ip_google_access=True,
        opts=opts,
    )
    router = gcp.compute.Router(f"{name}-router", network=vpc.id, region=spec.region, opts=opts)
    nat = gcp.compute.RouterNat(
        f"{name}-nat",
        router=router.name,
        region=spec.region,
        nat_ip_allocate_option="AUTO_ONLY",
        source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
        subnetworks=[gcp.compute.RouterNatSubnetworkArgs(name=subnet.id, source_ip_ranges_to_nats=["ALL_IP_RANGES"])],
        opts=opts,
    )
    return Network(
        network=vpc.self_link,
        subnetwork=subnet.self_link,
        subnet_cidr=str(OWN_SUBNET_CIDR),
        vpc=vpc,
        subnet=subnet,
        router=router,
        nat=nat,
    )


def create_firewall(
    name: str, spec: StackSpec, network: Network, node_email: pulumi.Input[str], parent: pulumi.Resource
) -> list[gcp.compute.Firewall]:
    """The node's ingress and egress rules, all targeting its service account."""
    opts = pulumi.ResourceOptions(parent=parent)
    sources = [str(cidr) for cidr in spec.allowed_cidrs] or [network.subnet_cidr]
    targets = [node_email]

    def rule(
        suffix: str, description: str, ranges: list[str], ports: list[int] | None, *, egress: bool = False
    ) -> gcp.compute.Firewall:
        """Allow TCP `ports` from (ingress) or to (egress) `ranges`; with no ports, deny everything, last."""
        allows = [gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[str(port) for port in ports])] if ports else None
        return gcp.compute.Firewall(
            f"{name}-{suffix}",
            network=network.network,
            description=f"Foresight {spec.stack}: {description}",
            direction="EGRESS" if egress else "INGRESS",
            priority=ALLOW_PRIORITY if ports else DENY_EGRESS_PRIORITY,
            source_ranges=None if egress else ranges,
            destination_ranges=ranges if egress else None,
            allows=allows,
            denies=None if ports else [gcp.compute.FirewallDenyArgs(protocol="all")],
            target_service_accounts=targets,
            opts=opts,
        )

    world = [str(WORLD)]
    rules = [
        rule("service-in", "RESP and HTTPS from the allowed CIDRs", sources, list(SERVICE_PORTS)),
        rule("health-in", "HTTPS /healthz from Google's health checkers", list(HEALTH_CHECK_RANGES), [HTTPS_PORT]),
        # 80: Ubuntu's apt mirrors, for Docker at first boot (apt checks every package's signature)
        rule("out", "HTTP (apt), HTTPS (registry, Google APIs) and Vault out", world,
             sorted({80, 443, spec.vault_port}), egress=True),
        rule("deny-out", "no other egress", world, None, egress=True),
    ]
    if spec.ssh_public_key is not None:
        ssh_sources = [cidr for cidr in sources if IPv4Network(cidr) != WORLD]
        if ssh_sources:
            rules.append(rule("ssh-in", "break-glass SSH", ssh_sources, [SSH_PORT]))
    return rules


def create_address(name: str, spec: StackSpec, network: Network, parent: pulumi.Resource) -> Endpoint:
    """The endpoint's reserved address and the balancer's health check; the certificate names the address, so
    it exists before the node. `attach_load_balancer` completes the endpoint once the node's group exists."""
    opts = pulumi.ResourceOptions(parent=parent)
    public = spec.public_endpoint
    address = gcp.compute.Address(
        f"{name}-address",
        region=spec.region,
        address_type="EXTERNAL" if public else "INTERNAL",
        subnetwork=None if public else network.subnetwork,
        description=f"Foresight {spec.stack}: the service endpoint",
        labels=spec.labels(),
        opts=opts,
    )
    health_check = gcp.compute.RegionHealthCheck(
        f"{name}-lb-health",
        region=spec.region,
        check_interval_sec=10,
        timeout_sec=5,
        healthy_threshold=2,
        unhealthy_threshold=3,
        https_health_check=gcp.compute.RegionHealthCheckHttpsHealthCheckArgs(port=HTTPS_PORT, request_path="/healthz"),
        opts=opts,
    )
    return Endpoint(address=address, health_check=health_check)


def attach_load_balancer(
    name: str,
    spec: StackSpec,
    network: Network,
    endpoint: Endpoint,
    instance_group: pulumi.Input[str],
    parent: pulumi.Resource,
) -> Endpoint:
    """The backend service over the node's group and the forwarding rule for both service ports."""
    opts = pulumi.ResourceOptions(parent=parent)
    scheme = "EXTERNAL" if spec.public_endpoint else "INTERNAL"
    backend_service = gcp.compute.RegionBackendService(
        f"{name}-backend",
        region=spec.region,
        load_balancing_scheme=scheme,
        protocol="TCP",
        health_checks=endpoint.health_check.id,
        connection_draining_timeout_sec=30,
        backends=[gcp.compute.RegionBackendServiceBackendArgs(group=instance_group, balancing_mode="CONNECTION")],
        opts=opts,
    )
    forwarding_rule = gcp.compute.ForwardingRule(
        f"{name}-service",
        region=spec.region,
        load_balancing_scheme=scheme,
        ip_address=endpoint.address.address,
        ip_protocol="TCP",
        ports=[str(port) for port in SERVICE_PORTS],
        backend_service=backend_service.id,
        network=None if spec.public_endpoint else network.network,
        subnetwork=None if spec.public_endpoint else network.subnetwork,
        labels=spec.labels(),
        opts=opts,
    )
    return Endpoint(
        address=endpoint.address,
        health_check=endpoint.health_check,
        backend_service=backend_service,
        forwarding_rule=forwarding_rule,
    )
