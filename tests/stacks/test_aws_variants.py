"""The AWS program with optional config: bring-your-own network, spot, private only, SSH; a Vault token refused."""

from __future__ import annotations

from tests.stacks.conftest import RunStack
from tests.stacks.endpoint_tls import assert_vault_token_refused
from tests.stacks.mockrun import (
    AUTOSCALING_GROUP,
    BYO_VPC_CIDR,
    INGRESS_RULE,
    LAUNCH_TEMPLATE,
    LOAD_BALANCER,
    user_data,
)

BYO = {
    "foresight:vpcId": "vpc-0123456789abcdef0",
    "foresight:subnetIds": '["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"]',
}
NETWORK_TYPES = (
    "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet",
    "aws:ec2/internetGateway:InternetGateway",
    "aws:ec2/natGateway:NatGateway",
    "aws:ec2/routeTable:RouteTable",
    "aws:ec2/eip:Eip",
)
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHrYwJmqmn0Dbj1o4Qh0XGnQKiqLQ9Nn3mTBRJm8Ifj8 ops@example"


def test_bring_your_own_network_creates_no_network(run_stack: RunStack) -> None:
    run = run_stack(BYO)
    for type_ in NETWORK_TYPES:
        assert not run.of_type(type_), type_
    assert ("aws:ec2/getVpc:getVpc", "vpc-0123456789abcdef0") in [(t, a.get("id")) for t, a in run.invokes]
    subnets = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"]
    assert run.one(AUTOSCALING_GROUP).props["vpcZoneIdentifiers"] == subnets
    assert run.one(LOAD_BALANCER).props["subnets"] == subnets
    assert all(
        group.props["vpcId"] == "vpc-0123456789abcdef0" for group in run.of_type("aws:ec2/securityGroup:SecurityGroup")
    )
    # A public endpoint in given (public) subnets: the node needs an address to reach out; only the LB gets in.
    assert run.one(LAUNCH_TEMPLATE).props["networkInterfaces"][0]["associatePublicIpAddress"] == "true"
    assert {rule.props.get("cidrIpv4") for rule in run.of_type(INGRESS_RULE)} == {"203.0.113.0/24", None}


def test_bring_your_own_private_network_opens_only_to_the_vpc(run_stack: RunStack) -> None:
    run = run_stack({**BYO, "foresight:allowedCidrs": "[]"})
    assert run.one(LOAD_BALANCER).props["internal"] is True
    assert run.one(LAUNCH_TEMPLATE).props["networkInterfaces"][0]["associatePublicIpAddress"] == "false"
    assert {rule.props.get("cidrIpv4") for rule in run.of_type(INGRESS_RULE)} == {BYO_VPC_CIDR, None}


def test_spot_with_fallback_types_in_priority_order(run_stack: RunStack) -> None:
    run = run_stack({"foresight:spot": "true", "foresight:fallbackInstanceTypes": '["g5.xlarge", "g6e.xlarge"]'})
    group = run.one(AUTOSCALING_GROUP).props
    distribution = group["mixedInstancesPolicy"]["instancesDistribution"]
    assert distribution["onDemandBaseCapacity"] == 0
    assert distribution["onDemandPercentageAboveBaseCapacity"] == 0
    assert distribution["spotAllocationStrategy"] == "capacity-optimized-prioritized"
    overrides = group["mixedInstancesPolicy"]["launchTemplate"]["overrides"]
    assert [override["instanceType"] for override in overrides] == ["g6.xlarge", "g5.xlarge", "g6e.xlarge"]
    assert group["capacityRebalance"] is True


def test_on_demand_fallback_types_are_tried_in_order(run_stack: RunStack) -> None:
    run = run_stack({"foresight:instanceType": "g5.2xlarge", "foresight:fallbackInstanceTypes": '["g6.2xlarge"]'})
    group = run.one(AUTOSCALING_GROUP).props
    distribution = group["mixedInstancesPolicy"]["instancesDistribution"]
    assert distribution["onDemandPercentageAboveBaseCapacity"] == 100
    assert distribution["onDemandAllocationStrategy"] == "prioritized"
    overrides = group["mixedInstancesPolicy"]["launchTemplate"]["overrides"]
    assert [override["instanceType"] for override in overrides] == ["g5.2xlarge", "g6.2xlarge"]


def test_empty_allowed_cidrs_means_private_only(run_stack: RunStack) -> None:
    run = run_stack({"foresight:allowedCidrs": "[]"})
    lb = run.one(LOAD_BALANCER).props
    assert lb["internal"] is True
    assert lb["subnets"] == ["foresight-private-0-id", "foresight-private-1-id"]
    sources = {rule.props.get("cidrIpv4") for rule in run.of_type(INGRESS_RULE)}
    assert sources == {"10.42.0.0/16", None}  # the VPC's own range, and the LB's group for the node
    assert run.one(LAUNCH_TEMPLATE).props["networkInterfaces"][0]["associatePublicIpAddress"] == "false"


def test_private_ranges_keep_the_load_balancer_internal(run_stack: RunStack) -> None:
    run = run_stack({"foresight:allowedCidrs": '["10.0.0.0/8", "192.168.10.0/24"]'})
    assert run.one(LOAD_BALANCER).props["internal"] is True


def test_ssh_key_opens_port_22_to_allowed_cidrs_only(run_stack: RunStack) -> None:
    run = run_stack({"foresight:sshPublicKey": SSH_KEY})
    key_pair = run.one("aws:ec2/keyPair:KeyPair")
    assert key_pair.props["publicKey"] == SSH_KEY
    assert run.one(LAUNCH_TEMPLATE).props["keyName"] == "foresight-ssh-a1b2c3d"
    ssh = [rule.props for rule in run.of_type(INGRESS_RULE) if rule.props["fromPort"] == 22]
    assert [rule["cidrIpv4"] for rule in ssh] == ["203.0.113.0/24"]
    assert all(rule["securityGroupId"] == "foresight-node-id" for rule in ssh)
    assert "ssh.socket" not in user_data(run)


def test_ssh_is_never_open_to_the_world_even_when_the_service_is(run_stack: RunStack) -> None:
    run = run_stack({"foresight:sshPublicKey": SSH_KEY, "foresight:allowedCidrs": '["0.0.0.0/0"]'})
    rules = [rule.props for rule in run.of_type(INGRESS_RULE)]
    assert {r["fromPort"] for r in rules if r.get("cidrIpv4") == "0.0.0.0/0"} == {6380, 8443}
    assert not [r for r in rules if r["fromPort"] == 22]


def test_a_vault_token_in_the_config_is_refused_because_the_provider_would_store_it(run_stack: RunStack) -> None:
    assert_vault_token_refused(run_stack)


def test_custom_image_and_volume_size(run_stack: RunStack) -> None:
    image = "registry.example.com:5000/team/foresight@sha256:" + "a" * 64
    run = run_stack({"foresight:image": image, "foresight:volumeSizeGb": "500"})
    assert f"--log-driver journald {image}\n" in user_data(run)
    assert run.one(LAUNCH_TEMPLATE).props["blockDeviceMappings"][1]["ebs"]["volumeSize"] == 500
