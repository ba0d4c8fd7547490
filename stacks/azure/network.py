"""Azure network: the virtual network (own or given), the node's network security group, and the load balancer.

Own network: a virtual network `10.42.0.0/16` with one subnet for the node, whose only way out is a NAT
gateway (no default outbound access; the node never gets a public address). Bring your own:
`foresight:vpcId` is the virtual network's resource id and `foresight:subnetIds` one subnet of it, which must
give the node a way out (a NAT gateway or a firewall).

Load balancer: a Standard load balancer, with a public frontend (a static address with a DNS name under
`cloudapp.azure.com`, which the certificate names) when an allowed CIDR is public and a private one in the
subnet otherwise; TCP rules for 6380 and 8443 to the node, health-probed on HTTPS /healthz. A Standard load
balancer keeps the client's address, so the security group, on the node's network interface, admits the
service ports from `foresight:allowedCidrs` (the subnet's range when that list is empty) and 8443 from the
load balancer's probes; SSH only with a key, from the allowed ranges, never from 0.0.0.0/0. Outbound: HTTPS
and Vault's port to the internet, nothing else (Azure's metadata and DNS addresses are never filtered).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from ipaddress import IPv4Network

import pulumi
import pulumi_azure_native as azure

from stacks.spec import HTTPS_PORT, SERVICE_PORTS, ConfigError, StackSpec, config_key

OWN_VNET_CIDR = IPv4Network("10.42.0.0/16")
OWN_SUBNET_CIDR = IPv4Network("10.42.0.0/20")
SSH_PORT = 22
WORLD = IPv4Network("0.0.0.0/0")
_VNET_RE = re.compile(
    r"/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/(?P<group>[-\w.()]{1,90})"
    r"/providers/Microsoft\.Network/virtualNetworks/(?P<name>[-\w.]{2,64})",
    re.IGNORECASE,
)
_SUBNET_RE = re.compile(rf"(?P<vnet>{_VNET_RE.pattern})/subnets/(?P<subnet>[-\w.]{{1,80}})", re.IGNORECASE)


def check_network_ids(spec: StackSpec) -> None:
    """A bring-your-own network is one virtual network and one subnet of it, both by resource id."""
    if spec.vpc_id is not None and not _VNET_RE.fullmatch(spec.vpc_id):
        raise ConfigError.one(
            config_key("vpcId"),
            f"{spec.vpc_id!r} is not a virtual network resource id such as "
            "/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.Network/virtualNetworks/<name>",
        )
    if len(spec.subnet_ids) > 1:
        raise ConfigError.one(
            config_key("subnetIds"), "give exactly one subnet (the node and its load balancer share it)"
        )
    for subnet_id in spec.subnet_ids:
        match = _SUBNET_RE.fullmatch(subnet_id)
        if match is None:
            raise ConfigError.one(
                config_key("subnetIds"),
                f"{subnet_id!r} is not a subnet resource id (<virtual network id>/subnets/<name>)",
            )
        if spec.vpc_id is not None and match["vnet"].lower() != spec.vpc_id.lower():
            raise ConfigError.one(config_key("subnetIds"), f"{subnet_id!r} is not a subnet of foresight:vpcId")


@dataclass(frozen=True)
class Network:
    subnet_id: pulumi.Output[str]
    subnet_cidr: str
    security_group: azure.network.NetworkSecurityGroup
    vnet: azure.network.VirtualNetwork | None = None
    subnet: azure.network.Subnet | None = None
    nat_gateway: azure.network.NatGateway | None = None


@dataclass(frozen=True)
class Endpoint:
    load_balancer: azure.network.LoadBalancer
    backend_pool_id: pulumi.Output[str]
    host: pulumi.Output[str]
    public_address: azure.network.PublicIPAddress | None = None

    @property
    def host_is_dns_name(self) -> bool:
        return self.public_address is not None


def create_network(
    name: str, spec: StackSpec, group: azure.resources.ResourceGroup, parent: pulumi.Resource
) -> Network:
    if spec.vpc_id is not None:
        match = _SUBNET_RE.fullmatch(spec.subnet_ids[0])
        assert match is not None  # check_network_ids ran first
        found = azure.network.get_subnet(
            resource_group_name=match["group"],
            virtual_network_name=match["name"],
            subnet_name=match["subnet"],
            opts=pulumi.InvokeOptions(parent=parent),
        )
        prefix = found.address_prefix or (found.address_prefixes or [""])[0]
        security_group = _security_group(name, spec, group, prefix, parent)
        return Network(
            subnet_id=pulumi.Output.from_input(spec.subnet_ids[0]), subnet_cidr=prefix, security_group=security_group
        )
    own = create_virtual_network(name, spec, group, parent)
    security_group = _security_group(name, spec, group, str(OWN_SUBNET_CIDR), parent)
    return Network(
        subnet_id=own.subnet.id,
        subnet_cidr=str(OWN_SUBNET_CIDR),
        security_group=security_group,
        vnet=own.vnet,
        subnet=own.subnet,
        nat_gateway=own.nat_gateway,
    )


@dataclass(frozen=True)
class VirtualNetwork:
    vnet: azure.network.VirtualNetwork
    subnet: azure.network.Subnet
    nat_gateway: azure.network.NatGateway
    nat_address: azure.network.PublicIPAddress

    @property
    def egress_cidr(self) -> pulumi.Output[str]:
        """The one address everything in the subnet leaves from, as a /32."""
        return self.nat_address.ip_address.apply(lambda address: f"{address}/32")


def create_virtual_network(
    name: str, spec: StackSpec, group: azure.resources.ResourceGroup, parent: pulumi.Resource
) -> VirtualNetwork:
    """The own network: `OWN_VNET_CIDR` with one subnet `OWN_SUBNET_CIDR` whose only way out is a NAT gateway
    (the single node's network, and the scale-out cluster's node subnet)."""
    opts = pulumi.ResourceOptions(parent=parent)
    nat_address = azure.network.PublicIPAddress(
        f"{name}-nat-ip",
        resource_group_name=group.name,
        location=spec.region,
        sku=azure.network.PublicIPAddressSkuArgs(name="Standard"),
        public_ip_allocation_method="Static",
        tags=spec.tags(),
        opts=opts,
    )
    nat_gateway = azure.network.NatGateway(
        f"{name}-nat",
        resource_group_name=group.name,
        location=spec.region,
        sku=azure.network.NatGatewaySkuArgs(name="Standard"),
        public_ip_addresses=[azure.network.SubResourceArgs(id=nat_address.id)],
        tags=spec.tags(),
        opts=opts,
    )
    vnet = azure.network.VirtualNetwork(
        f"{name}-vnet",
        resource_group_name=group.name,
        location=spec.region,
        address_space=azure.network.AddressSpaceArgs(address_prefixes=[str(OWN_VNET_CIDR)]),
        tags=spec.tags(),
        opts=pulumi.ResourceOptions(parent=parent, ignore_changes=["subnets"]),  # the Subnet below owns those
    )
    subnet = azure.network.Subnet(
        f"{name}-subnet",
        resource_group_name=group.name,
        virtual_network_name=vnet.name,
        address_prefix=str(OWN_SUBNET_CIDR),
        nat_gateway=azure.network.SubResourceArgs(id=nat_gateway.id),
        default_outbound_access=False,
        opts=opts,
    )
    return VirtualNetwork(vnet=vnet, subnet=subnet, nat_gateway=nat_gateway, nat_address=nat_address)


def _security_group(
    name: str, spec: StackSpec, group: azure.resources.ResourceGroup, subnet_cidr: str, parent: pulumi.Resource
) -> azure.network.NetworkSecurityGroup:
    """The node's rules, in priority order; the network interface carries the group, so a given subnet's own
    rules are left alone."""
    sources = [str(cidr) for cidr in spec.allowed_cidrs] or [subnet_cidr]

    def inbound(
        rule_name: str, priority: int, ports: list[int], ranges: list[str] | None = None, tag: str | None = None
    ) -> azure.network.SecurityRuleArgs:
        """Allow TCP `ports` in from the CIDR `ranges` or from the service `tag`."""
        return azure.network.SecurityRuleArgs(
            name=rule_name,
            priority=priority,
            direction="Inbound",
            access="Allow",
            protocol="Tcp",
            source_address_prefixes=ranges,
            source_address_prefix=tag,
            source_port_range="*",
            destination_address_prefix="*",
            destination_port_ranges=[str(port) for port in ports],
        )

    def outbound(rule_name: str, priority: int, ports: list[int] | None) -> azure.network.SecurityRuleArgs:
        """Allow TCP `ports` out to the internet; with none, deny everything out to it."""
        return azure.network.SecurityRuleArgs(
            name=rule_name,
            priority=priority,
            direction="Outbound",
            access="Allow" if ports else "Deny",
            protocol="Tcp" if ports else "*",
            source_address_prefix="*",
            source_port_range="*",
            destination_address_prefix="Internet",
            destination_port_ranges=[str(port) for port in ports] if ports else None,
            destination_port_range=None if ports else "*",
        )

    rules = [
        inbound("service-in", 100, list(SERVICE_PORTS), ranges=sources),
        inbound("health-probe-in", 110, [HTTPS_PORT], tag="AzureLoadBalancer"),
        outbound("https-vault-out", 100, sorted({443, spec.vault_port})),
        outbound("deny-internet-out", 4000, None),
    ]
    if spec.ssh_public_key is not None:
        ssh_sources = [cidr for cidr in sources if IPv4Network(cidr) != WORLD]
        if ssh_sources:
            rules.append(inbound("ssh-in", 120, [SSH_PORT], ranges=ssh_sources))
    return azure.network.NetworkSecurityGroup(
        f"{name}-node",
        resource_group_name=group.name,
        location=spec.region,
        security_rules=rules,
        tags=spec.tags(),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def dns_label(spec: StackSpec, subscription_id: str) -> str:
    """The public address's DNS label (`<label>.<region>.cloudapp.azure.com`): lowercase letters, digits and
    hyphens, starting with a letter, at most 63 characters. Labels are unique in a region across all of Azure, and
    every deployment's project is `foresight`, so the digest covers the subscription as well as the stack: two
    customers' `azure-prod` stacks in one region get two labels."""
    stem = re.sub(r"[^a-z0-9-]", "-", spec.name.lower()).strip("-")[:48]
    digest = hashlib.sha256(f"{subscription_id.lower()}/{spec.name}".encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


def create_endpoint(
    name: str,
    spec: StackSpec,
    group: azure.resources.ResourceGroup,
    network: Network,
    subscription_id: str,
    parent: pulumi.Resource,
) -> Endpoint:
    """The Standard load balancer before the node; the node's scale set joins its backend pool."""
    opts = pulumi.ResourceOptions(parent=parent)
    lb_name = f"{spec.name}-lb"
    lb_id = pulumi.Output.concat(
        "/subscriptions/",
        subscription_id,
        "/resourceGroups/",
        group.name,
        "/providers/Microsoft.Network/loadBalancers/",
        lb_name,
    )

    def child(kind: str, child_name: str) -> azure.network.SubResourceArgs:
        return azure.network.SubResourceArgs(id=pulumi.Output.concat(lb_id, f"/{kind}/{child_name}"))

    public_address = None
    if spec.public_endpoint:
        public_address = azure.network.PublicIPAddress(
            f"{name}-address",
            resource_group_name=group.name,
            location=spec.region,
            sku=azure.network.PublicIPAddressSkuArgs(name="Standard"),
            public_ip_allocation_method="Static",
            dns_settings=azure.network.PublicIPAddressDnsSettingsArgs(
                domain_name_label=dns_label(spec, subscription_id)
            ),
            tags=spec.tags(),
            opts=opts,
        )
        frontend = azure.network.FrontendIPConfigurationArgs(
            name="service", public_ip_address=azure.network.PublicIPAddressArgs(id=public_address.id)
        )
    else:
        frontend = azure.network.FrontendIPConfigurationArgs(
            name="service",
            subnet=azure.network.SubnetArgs(id=network.subnet_id),
            private_ip_allocation_method="Dynamic",
        )
    load_balancer = azure.network.LoadBalancer(
        f"{name}-lb",
        load_balancer_name=lb_name,
        resource_group_name=group.name,
        location=spec.region,
        sku=azure.network.LoadBalancerSkuArgs(name="Standard", tier="Regional"),
        frontend_ip_configurations=[frontend],
        backend_address_pools=[azure.network.BackendAddressPoolArgs(name="node")],
        probes=[
            azure.network.ProbeArgs(
                name="healthz",
                protocol="Https",
                port=HTTPS_PORT,
                request_path="/healthz",
                interval_in_seconds=10,
                number_of_probes=2,
                probe_threshold=2,
            )
        ],
        load_balancing_rules=[
            azure.network.LoadBalancingRuleArgs(
                name=f"port-{port}",
                protocol="Tcp",
                frontend_port=port,
                backend_port=port,
                frontend_ip_configuration=child("frontendIPConfigurations", "service"),
                backend_address_pool=child("backendAddressPools", "node"),
                probe=child("probes", "healthz"),
                enable_floating_ip=False,
                enable_tcp_reset=True,
                idle_timeout_in_minutes=30,
                disable_outbound_snat=True,  # the node leaves through the NAT gateway
            )
            for port in SERVICE_PORTS
        ],
        tags=spec.tags(),
        opts=opts,
    )
    if public_address is not None:
        host = public_address.dns_settings.apply(lambda dns: dns.fqdn if dns and dns.fqdn else "")
    else:
        host = load_balancer.frontend_ip_configurations.apply(
            lambda configs: (configs[0].private_ip_address or "") if configs else ""
        )
    return Endpoint(
        load_balancer=load_balancer,
        backend_pool_id=pulumi.Output.concat(lb_id, "/backendAddressPools/node"),
        host=host,
        public_address=public_address,
    )
