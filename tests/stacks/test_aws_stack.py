"""`pulumi up` on AWS with only the required config: what the program registers, resource by resource."""

from __future__ import annotations

import json
import re

from stacks.aws.compute import AMI_PARAMETER
from stacks.aws.identity import KMS_ACTIONS
from tests.stacks.endpoint_tls import assert_endpoint_tls, layout_of
from tests.stacks.mockrun import (
    ACCOUNT,
    AMI,
    AUTOSCALING_GROUP,
    EGRESS_RULE,
    INGRESS_RULE,
    KMS_KEY,
    LAUNCH_TEMPLATE,
    LOAD_BALANCER,
    REQUIRED_CONFIG,
    ROOT,
    SECURITY_GROUP,
    MockRun,
    fake_pem,
    user_data,
)

ALLOWED = "203.0.113.0/24"


def _group_ids(run: MockRun) -> dict[str, str]:
    return {group.name.rsplit("-", 1)[-1]: f"{group.name}-id" for group in run.of_type(SECURITY_GROUP)}


def test_everything_is_a_child_of_one_gpu_node_component(baseline: MockRun) -> None:
    component = baseline.one("foresight:aws:GpuNode")
    assert component.parent.endswith("pulumi:pulumi:Stack::foresight-aws-test")
    children = [resource for resource in baseline if resource is not component]
    assert len(children) > 40
    assert all(child.parent == component.urn for child in children), [
        child.name for child in children if child.parent != component.urn
    ]


def test_kms_key_is_customer_managed_with_rotation_and_alias(baseline: MockRun) -> None:
    key = baseline.one(KMS_KEY).props
    assert key["enableKeyRotation"] is True
    assert key["keyUsage"] == "ENCRYPT_DECRYPT"
    assert key["customerMasterKeySpec"] == "SYMMETRIC_DEFAULT"
    alias = baseline.one("aws:kms/alias:Alias").props
    assert alias["name"] == "alias/foresight-aws-test"
    assert alias["targetKeyId"] == "1234abcd-12ab-34cd-56ef-1234567890ab"


def test_key_policy_grants_the_node_role_only_what_it_needs(baseline: MockRun) -> None:
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/foresight-node-a1b2c3d"
    statements = {s["Sid"]: s for s in json.loads(baseline.one(KMS_KEY).props["policy"])["Statement"]}
    node = statements["NodeRoleUsesTheKey"]
    assert node["Principal"] == {"AWS": role_arn}
    assert sorted(node["Action"]) == sorted(KMS_ACTIONS)
    assert not any(action.endswith("*") for action in node["Action"])
    # kms:* only for the account root (administration through IAM); never a wildcard principal.
    for statement in statements.values():
        assert statement["Principal"] != "*" and statement["Principal"].get("AWS") != "*"
        if statement["Action"] == "kms:*":
            assert statement["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    grants = statements["AutoScalingGrantsVolumeAttachments"]
    assert grants["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}


def test_the_node_may_do_everything_the_services_kms_module_needs_on_its_key_only(baseline: MockRun) -> None:
    """service/security/kms/aws.py's docstring lists what it calls; its rewrap is kms:ReEncrypt* (From and To)."""
    docstring = (ROOT / "service/security/kms/aws.py").read_text().split('"""')[1]
    needed = set(re.findall(r"kms:[A-Za-z]+\*?", re.search(r"Needs (.+?) on the key", docstring, re.S)[1]))
    assert "kms:ReEncrypt*" in needed
    granted = set(KMS_ACTIONS)
    for action in needed:
        covered = {a for a in granted if a == action or (action.endswith("*") and a.startswith(action[:-1]))}
        assert covered, action
    assert {"kms:ReEncryptFrom", "kms:ReEncryptTo"} <= granted
    key_arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    (inline,) = json.loads(baseline.one("aws:iam/rolePolicy:RolePolicy").props["policy"])["Statement"]
    assert {"kms:ReEncryptFrom", "kms:ReEncryptTo"} <= set(inline["Action"]) and inline["Resource"] == key_arn
    statements = {s["Sid"]: s for s in json.loads(baseline.one(KMS_KEY).props["policy"])["Statement"]}
    assert {"kms:ReEncryptFrom", "kms:ReEncryptTo"} <= set(statements["NodeRoleUsesTheKey"]["Action"])


def test_every_ebs_volume_is_encrypted_with_the_stack_key(baseline: MockRun) -> None:
    key_arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    mappings = baseline.one(LAUNCH_TEMPLATE).props["blockDeviceMappings"]
    assert [m["deviceName"] for m in mappings] == ["/dev/sda1", "/dev/sdf"]
    for mapping in mappings:
        assert mapping["ebs"]["encrypted"] == "true"
        assert mapping["ebs"]["kmsKeyId"] == key_arn
    assert mappings[1]["ebs"]["volumeSize"] == 100
    assert not baseline.of_type("aws:ebs/volume:Volume")


def test_own_vpc_keeps_the_node_private_behind_a_nat(baseline: MockRun) -> None:
    assert baseline.one("aws:ec2/vpc:Vpc").props["cidrBlock"] == "10.42.0.0/16"
    subnets = baseline.of_type("aws:ec2/subnet:Subnet")
    assert sorted(s.name for s in subnets) == [
        "foresight-private-0",
        "foresight-private-1",
        "foresight-public-0",
        "foresight-public-1",
    ]
    assert all(s.props["mapPublicIpOnLaunch"] is False for s in subnets)
    assert {s.props["availabilityZone"] for s in subnets} == {"us-east-1a", "us-east-1b"}
    baseline.one("aws:ec2/natGateway:NatGateway")
    group = baseline.one(AUTOSCALING_GROUP).props
    assert group["vpcZoneIdentifiers"] == ["foresight-private-0-id", "foresight-private-1-id"]
    interface = baseline.one(LAUNCH_TEMPLATE).props["networkInterfaces"][0]
    assert interface["associatePublicIpAddress"] == "false"


def test_only_service_ports_open_and_only_to_allowed_cidrs(baseline: MockRun) -> None:
    groups = _group_ids(baseline)
    rules = [rule.props for rule in baseline.of_type(INGRESS_RULE)]
    assert rules
    for rule in rules:
        assert rule["ipProtocol"] == "tcp"
        assert rule["fromPort"] == rule["toPort"]
        assert rule["fromPort"] in (6380, 8443)
        if rule["securityGroupId"] == groups["lb"]:
            assert rule["cidrIpv4"] == ALLOWED
        else:
            assert rule["securityGroupId"] == groups["node"]
            assert rule["referencedSecurityGroupId"] == groups["lb"]
            assert "cidrIpv4" not in rule
    assert sorted((r["securityGroupId"], r["fromPort"]) for r in rules) == sorted(
        (groups[g], p) for g in ("lb", "node") for p in (6380, 8443)
    )
    assert not any(rule.get("cidrIpv4") == "0.0.0.0/0" for rule in rules)
    assert all("ingress" not in group.props for group in baseline.of_type(SECURITY_GROUP))


def test_no_ssh_without_a_key(baseline: MockRun) -> None:
    assert not [rule for rule in baseline.of_type(INGRESS_RULE) if rule.props["fromPort"] == 22]
    assert "keyName" not in baseline.one(LAUNCH_TEMPLATE).props
    assert not baseline.of_type("aws:ec2/keyPair:KeyPair")
    assert "systemctl disable --now ssh.socket ssh.service" in user_data(baseline)


def test_node_egress_is_https_and_vault_only(baseline: MockRun) -> None:
    groups = _group_ids(baseline)
    node_egress = [r.props for r in baseline.of_type(EGRESS_RULE) if r.props["securityGroupId"] == groups["node"]]
    assert sorted(r["fromPort"] for r in node_egress) == [443, 8200]
    lb_egress = [r.props for r in baseline.of_type(EGRESS_RULE) if r.props["securityGroupId"] == groups["lb"]]
    assert all(r["referencedSecurityGroupId"] == groups["node"] for r in lb_egress)


def test_load_balancer_gives_a_stable_tls_passthrough_endpoint(baseline: MockRun) -> None:
    lb = baseline.one(LOAD_BALANCER).props
    assert lb["loadBalancerType"] == "network"
    assert lb["internal"] is False  # 203.0.113.0/24 is outside private address space
    assert lb["subnets"] == ["foresight-public-0-id", "foresight-public-1-id"]
    assert lb["securityGroups"] == [_group_ids(baseline)["lb"]]
    listeners = {r.props["port"]: r.props for r in baseline.of_type("aws:lb/listener:Listener")}
    assert sorted(listeners) == [6380, 8443]
    assert all(listener["protocol"] == "TCP" for listener in listeners.values())
    for target_group in baseline.of_type("aws:lb/targetGroup:TargetGroup"):
        check = target_group.props["healthCheck"]
        assert (check["protocol"], check["port"], check["path"]) == ("HTTPS", "8443", "/healthz")


def test_node_role_is_least_privilege(baseline: MockRun) -> None:
    role = baseline.one("aws:iam/role:Role").props
    trust = json.loads(role["assumeRolePolicy"])["Statement"]
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]
    attachment = baseline.one("aws:iam/rolePolicyAttachment:RolePolicyAttachment").props
    assert attachment["policyArn"] == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    inline = json.loads(baseline.one("aws:iam/rolePolicy:RolePolicy").props["policy"])["Statement"]
    assert inline == [
        {
            "Effect": "Allow",
            "Action": list(KMS_ACTIONS),
            "Resource": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        }
    ]
    assert not baseline.of_type("aws:iam/policy:Policy")
    profile = baseline.one("aws:iam/instanceProfile:InstanceProfile").props
    assert profile["role"] == "foresight-node-a1b2c3d"
    template = baseline.one(LAUNCH_TEMPLATE).props
    assert template["iamInstanceProfile"]["arn"].endswith(":instance-profile/foresight-node-a1b2c3d")


def test_gpu_ami_comes_from_the_ssm_public_parameter(baseline: MockRun) -> None:
    assert ("aws:ssm/getParameter:getParameter", {"name": AMI_PARAMETER}) in [
        (token, {"name": args.get("name")}) for token, args in baseline.invokes
    ]
    assert baseline.one(LAUNCH_TEMPLATE).props["imageId"] == AMI


def test_imdsv2_is_required_with_a_container_hop_limit(baseline: MockRun) -> None:
    options = baseline.one(LAUNCH_TEMPLATE).props["metadataOptions"]
    assert options["httpTokens"] == "required"
    assert options["httpEndpoint"] == "enabled"
    assert options["httpPutResponseHopLimit"] == 2


def test_auto_scaling_group_of_one_heals_on_demand_by_default(baseline: MockRun) -> None:
    group = baseline.one(AUTOSCALING_GROUP).props
    assert (group["minSize"], group["maxSize"], group["desiredCapacity"]) == (1, 1, 1)
    assert group["healthCheckType"] == "ELB"
    assert sorted(group["targetGroupArns"]) == sorted(
        f"arn:aws:lb:us-east-1:{ACCOUNT}:foresight-{name}" for name in ("resp", "https")
    )
    policy = group["mixedInstancesPolicy"]
    assert policy["instancesDistribution"]["onDemandPercentageAboveBaseCapacity"] == 100
    assert [o["instanceType"] for o in policy["launchTemplate"]["overrides"]] == ["g6.xlarge"]
    assert group["capacityRebalance"] is False
    assert baseline.one(LAUNCH_TEMPLATE).props["instanceType"] == "g6.xlarge"
    assert {tag["key"] for tag in group["tags"]} >= {"foresight:stack", "Name"}
    assert all(tag["propagateAtLaunch"] for tag in group["tags"])


def test_vault_pki_issues_for_the_endpoint_only_and_no_key_is_in_the_state(baseline: MockRun) -> None:
    host = baseline.outputs["endpointHost"].value
    layout = layout_of("aws-test", REQUIRED_CONFIG)
    assert_endpoint_tls(baseline, layout, host, is_ip=False)


def test_vault_wiring_binds_the_instance_role(baseline: MockRun) -> None:
    provider = baseline.one("pulumi:providers:vault")
    assert provider.props["address"] == "https://vault.example.test:8200"
    assert "token" not in provider.props
    for resource in baseline:
        if resource.type.startswith("vault:"):
            assert resource.provider.startswith(provider.urn + "::")
    mounts = {mount.props["type"]: mount.props for mount in baseline.of_type("vault:index/mount:Mount")}
    assert sorted(mounts) == ["kv", "pki"]
    assert (mounts["kv"]["path"], mounts["kv"]["options"]) == ("foresight-aws-test", {"version": "2"})
    assert mounts["pki"]["path"] == "foresight-aws-test-pki"
    backend = baseline.one("vault:index/authBackend:AuthBackend").props
    assert (backend["type"], backend["path"]) == ("aws", "foresight-aws-test-aws")
    role = baseline.one("vault:aws/authBackendRole:AuthBackendRole").props
    assert role["authType"] == "iam"
    assert role["boundIamPrincipalArns"] == [f"arn:aws:iam::{ACCOUNT}:role/foresight-node-a1b2c3d"]
    assert role["tokenPolicies"] == ["foresight-aws-test-node"]
    assert role["backend"] == "foresight-aws-test-aws"
    # Vault requires the login to sign its host name, which the node's settings carry to both logins
    client = baseline.one("vault:aws/authBackendClient:AuthBackendClient").props
    assert client["iamServerIdHeaderValue"] == "vault.example.test"
    assert "FORESIGHT_VAULT_AWS_HEADER_VALUE=vault.example.test\n" in user_data(baseline)


def test_vault_policy_reads_tenants_and_scrape_token_issues_its_certificate_and_writes_nothing(
    baseline: MockRun,
) -> None:
    policy = baseline.one("vault:index/policy:Policy").props
    assert policy["name"] == "foresight-aws-test-node"
    rules = dict(re.findall(r'path "([^"]+)" \{\s*capabilities = \[([^\]]*)\]', policy["policy"]))
    assert rules == {
        "foresight-aws-test/data/tenants/*": '"read"',
        "foresight-aws-test/metadata/tenants/*": '"read", "list"',
        "foresight-aws-test/data/keyids/*": '"read"',
        "foresight-aws-test/data/deployments/aws-test/metrics": '"read"',
        "foresight-aws-test-pki/issue/foresight-aws-test-endpoint": '"update"',
    }


def test_user_data_logs_in_with_instance_identity_and_runs_on_the_gpu(baseline: MockRun) -> None:
    text = user_data(baseline)
    assert text.startswith("#cloud-config\n")
    assert "--gpus all" in text
    assert "Restart=always" in text
    assert "ExecStartPre=/usr/bin/python3 /usr/local/lib/foresight/fetch_tls.py" in text
    assert "FORESIGHT_VAULT_AUTH_METHOD=aws\n" in text
    assert "FORESIGHT_VAULT_ROLE=foresight-aws-test-node\n" in text
    assert "FORESIGHT_KMS_KEY_ID=arn:aws:kms:us-east-1:" in text
    assert "FORESIGHT_TLS_VAULT_PKI_MOUNT=foresight-aws-test-pki\n" in text
    assert "FORESIGHT_TLS_NODE_PKI_ROLE=foresight-aws-test-endpoint\n" in text
    assert f"FORESIGHT_TLS_COMMON_NAME={baseline.outputs['endpointHost'].value}\n" in text
    assert "FORESIGHT_TLS_VAULT_PATH" not in text
    assert "ghcr.io/foresight/foresight:0.1.0" in text
    assert "VAULT_TOKEN" not in text and "X-Vault-Token:" not in text
    assert "PRIVATE KEY-----" not in text


def test_outputs_are_the_shared_set_and_hold_no_secret(baseline: MockRun) -> None:
    outputs = {name: output.value for name, output in baseline.outputs.items()}
    assert outputs == {
        "endpointHost": "foresight-nlb-0123456789abcdef.elb.us-east-1.amazonaws.com",
        "respPort": 6380,
        "httpsPort": 8443,
        "caCertificate": fake_pem("CERTIFICATE", "foresight-ca"),
        "kmsKeyId": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "vaultRole": "foresight-aws-test-node",
        "vaultAuthMount": "foresight-aws-test-aws",
        "vaultKvMount": "foresight-aws-test",
        "instanceId": "foresight-node-a1b2c3d",
        "nodeIdentity": f"arn:aws:iam::{ACCOUNT}:role/foresight-node-a1b2c3d",  # the role Vault's login binds
    }
    assert not any("PRIVATE KEY" in str(value) for value in outputs.values())
    assert not any(output.secret for output in baseline.outputs.values())


def test_required_tags_on_every_taggable_resource(baseline: MockRun) -> None:
    for resource in baseline:
        tags = resource.props.get("tags")
        if isinstance(tags, dict):
            assert {"foresight:project", "foresight:stack", "managed-by"} <= set(tags), resource.name
