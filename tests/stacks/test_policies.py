"""The policy pack: each policy on good and bad AWS properties (Google Cloud's and Azure's in
test_policies_gcp.py and test_policies_azure.py), on every cloud's own stack resources, and served over gRPC."""

from __future__ import annotations

import base64
import copy
import gzip
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from stacks.aws.compute import GPU_FAMILIES
from stacks.azure.compute import GPU_SERIES as AZURE_GPU_SERIES
from stacks.gcp.compute import GPU_FAMILIES as GCP_GPU_FAMILIES
from stacks.policies import rules
from stacks.spec import StackSpec
from tests.stacks.conftest import RunStack
from tests.stacks.mockrun import REQUIRED_CONFIG, ROOT, MockRun, Registered
from tests.stacks.policy_harness import POLICIES, TAGS, Case, assert_case, violations
from tests.stacks.test_policies_azure import AZURE_CASES
from tests.stacks.test_policies_gcp import GCP_CASES

KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _template(**changes: Any) -> dict[str, Any]:
    template = {
        "instanceType": "g6.xlarge",
        "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 2},
        "blockDeviceMappings": [{"deviceName": "/dev/sda1", "ebs": {"encrypted": "true", "kmsKeyId": KEY_ARN}}],
        "userData": base64.b64encode(gzip.compress(b"#cloud-config\nruncmd: [[echo, hi]]\n")).decode(),
        "tags": TAGS,
    }
    template.update(changes)
    return template


LT = rules.LAUNCH_TEMPLATE
# A launch configuration as safe as one can be: encrypted volumes (under the account's default key) and IMDSv2.
LAUNCH_CONFIGURATION: dict[str, Any] = {
    "imageId": "ami-0abcdef1234567890",
    "instanceType": "g6.xlarge",
    "rootBlockDevice": {"encrypted": True, "volumeSize": 100},
    "ebsBlockDevices": [{"deviceName": "/dev/sdf", "encrypted": True}],
    "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 2},
}
CASES: list[Case] = [
    # (policy, resource type, properties, expected violation fragment or None)
    ("ebs-encrypted-with-customer-key", LT, _template(), None),
    (
        "ebs-encrypted-with-customer-key",
        LT,
        _template(blockDeviceMappings=[{"deviceName": "/dev/sda1", "ebs": {"encrypted": "false"}}]),
        "volume /dev/sda1 is not encrypted",
    ),
    (
        "ebs-encrypted-with-customer-key",
        LT,
        _template(blockDeviceMappings=[{"deviceName": "/dev/sdf", "ebs": {"encrypted": "true"}}]),
        "AWS-managed default key",
    ),
    ("ebs-encrypted-with-customer-key", rules.VOLUME, {"encrypted": True, "kmsKeyId": "alias/aws/ebs"}, "AWS-managed"),
    ("ebs-encrypted-with-customer-key", rules.VOLUME, {"encrypted": True, "kmsKeyId": KEY_ARN}, None),
    ("ebs-encrypted-with-customer-key", rules.INSTANCE, {"rootBlockDevice": {"encrypted": False}}, "root volume"),
    ("kms-key-rotation", rules.KMS_KEY, {"enableKeyRotation": True}, None),
    ("kms-key-rotation", rules.KMS_KEY, {"enableKeyRotation": False}, "rotation is off"),
    ("kms-key-rotation", rules.KMS_KEY, {}, "rotation is off"),
    ("kms-key-rotation", rules.KMS_KEY, {"customerMasterKeySpec": "RSA_2048", "keyUsage": "SIGN_VERIFY"}, None),
    ("imdsv2-required", LT, _template(), None),
    ("imdsv2-required", LT, _template(metadataOptions={"httpTokens": "optional"}), "IMDSv1 is allowed"),
    ("imdsv2-required", rules.INSTANCE, {}, "IMDSv1 is allowed"),
    (
        "imdsv2-required",
        LT,
        _template(metadataOptions={"httpTokens": "required", "httpPutResponseHopLimit": 5}),
        "hop limit 5",
    ),
    ("imdsv2-required", LT, _template(metadataOptions={"httpEndpoint": "disabled"}), None),
    (
        "no-world-admin-ingress",
        rules.INGRESS_RULE,
        {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "cidrIpv4": "0.0.0.0/0"},
        "opens an admin port",
    ),
    (
        "no-world-admin-ingress",
        rules.INGRESS_RULE,
        {"ipProtocol": "-1", "cidrIpv6": "::/0"},
        "opens an admin port",
    ),
    (
        "no-world-admin-ingress",
        rules.INGRESS_RULE,
        {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "cidrIpv4": "203.0.113.0/24"},
        None,
    ),
    (
        "no-world-admin-ingress",
        rules.INGRESS_RULE,
        {"ipProtocol": "tcp", "fromPort": 8443, "toPort": 8443, "cidrIpv4": "0.0.0.0/0"},
        None,
    ),
    (
        "no-world-admin-ingress",
        rules.SECURITY_GROUP,
        {"ingress": [{"protocol": "tcp", "fromPort": 0, "toPort": 65535, "cidrBlocks": ["0.0.0.0/0"]}]},
        "opens an admin port",
    ),
    (
        "no-world-admin-ingress",
        rules.SECURITY_GROUP_RULE,
        {"type": "ingress", "protocol": "tcp", "fromPort": 3389, "toPort": 3389, "cidrBlocks": ["0.0.0.0/0"]},
        "opens an admin port",
    ),
    (
        "no-world-admin-ingress",
        rules.SECURITY_GROUP_RULE,
        {"type": "egress", "protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["0.0.0.0/0"]},
        None,
    ),
    ("gpu-instance-families", LT, _template(instanceType="p5.48xlarge"), None),
    ("gpu-instance-families", LT, _template(instanceType="m7i.large"), "m7i.large is not an NVIDIA GPU type"),
    (
        "gpu-instance-families",
        rules.AUTOSCALING_GROUP,
        {
            "mixedInstancesPolicy": {
                "launchTemplate": {"overrides": [{"instanceType": "g6.xlarge"}, {"instanceType": "t3.large"}]}
            }
        },
        "t3.large",
    ),
    ("gpu-instance-families", rules.INSTANCE, {"instanceType": "c7g.large"}, "c7g.large"),
    ("no-secrets-in-user-data", LT, _template(), None),
    (
        "no-secrets-in-user-data",
        LT,
        _template(
            userData=base64.b64encode(b"#!/bin/sh\nexport VAULT_TOKEN=hvs.CAESIabcdefghijklmnopqrstuv\n").decode()
        ),
        "a Vault token",
    ),
    (
        "no-secrets-in-user-data",
        LT,
        _template(userData=base64.b64encode(gzip.compress(b"-----BEGIN RSA PRIVATE KEY-----\nMII\n")).decode()),
        "a private key",
    ),
    ("no-secrets-in-user-data", rules.INSTANCE, {"userData": "aws_access_key_id=AKIAIOSFODNN7EXAMPLE"}, "access key"),
    ("no-secrets-in-user-data", rules.INSTANCE, {"userData": "chpasswd:\n  password: hunter22\n"}, "password"),
    ("required-tags", LT, _template(), None),
    ("required-tags", LT, _template(tags={"foresight:stack": "dev"}), "foresight:project, managed-by"),
    ("required-tags", rules.AUTOSCALING_GROUP, {"tags": [{"key": k, "value": v} for k, v in TAGS.items()]}, None),
    ("required-tags", rules.AUTOSCALING_GROUP, {"tags": []}, "missing required tags"),
    ("required-tags", "aws:kms/alias:Alias", {}, None),
    # the shared tier (tests/stacks/test_policies_tier.py has every branch)
    ("shared-tier-tls-and-identity", "aws:elasticache/replicationGroup:ReplicationGroup",
     {"transitEncryptionEnabled": True, "atRestEncryptionEnabled": True, "kmsKeyId": "arn:aws:kms:key",
      "userGroupIds": ["foresight-dev"]}, None),
    ("shared-tier-tls-and-identity", "aws:elasticache/replicationGroup:ReplicationGroup",
     {"transitEncryptionEnabled": False, "atRestEncryptionEnabled": True, "kmsKeyId": "arn:aws:kms:key",
      "userGroupIds": ["foresight-dev"]},
     "TLS in transit"),
    # the root volume: the AMI's unless a mapping names its device; launch configurations cannot name a key
    (
        "ebs-encrypted-with-customer-key",
        LT,
        _template(blockDeviceMappings=[{"deviceName": "/dev/xvda", "ebs": {"encrypted": "true", "kmsKeyId": KEY_ARN}}]),
        None,
    ),
    ("ebs-encrypted-with-customer-key", LT, _template(blockDeviceMappings=[]), "maps no root device"),
    ("ebs-encrypted-with-customer-key", LT, {k: v for k, v in _template().items() if k != "blockDeviceMappings"},
     "maps no root device"),
    (
        "ebs-encrypted-with-customer-key",
        LT,
        _template(blockDeviceMappings=[{"deviceName": "/dev/sdf", "ebs": {"encrypted": "true", "kmsKeyId": KEY_ARN}}]),
        "maps no root device",
    ),
    ("ebs-encrypted-with-customer-key", rules.LAUNCH_CONFIGURATION, LAUNCH_CONFIGURATION, "launch template"),
    ("ebs-encrypted-with-customer-key", rules.LAUNCH_CONFIGURATION, {}, "root volume is not encrypted"),
    ("imdsv2-required", rules.LAUNCH_CONFIGURATION, LAUNCH_CONFIGURATION, None),
    (
        "imdsv2-required",
        rules.LAUNCH_CONFIGURATION,
        {**LAUNCH_CONFIGURATION, "metadataOptions": {"httpTokens": "optional", "httpPutResponseHopLimit": 5}},
        "IMDSv1 is allowed",
    ),
    (
        "imdsv2-required",
        rules.LAUNCH_CONFIGURATION,
        {**LAUNCH_CONFIGURATION, "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 5}},
        "hop limit 5",
    ),
    ("imdsv2-required", rules.LAUNCH_CONFIGURATION, {}, "IMDSv1 is allowed"),
    # AWS takes the protocol in any case
    (
        "no-world-admin-ingress",
        rules.INGRESS_RULE,
        {"ipProtocol": "TCP", "fromPort": 22, "toPort": 22, "cidrIpv4": "0.0.0.0/0"},
        "opens an admin port",
    ),
    (
        "no-world-admin-ingress",
        rules.SECURITY_GROUP,
        {"ingress": [{"protocol": "Tcp", "fromPort": 3389, "toPort": 3389, "cidrBlocks": ["0.0.0.0/0"]}]},
        "opens an admin port",
    ),
    # Vault and pulumi-tls resources, the same on every cloud: what the stacks make passes, a key in the state fails
    ("no-secret-in-state", rules.PKI_ROOT_CERT, {"backend": "s-pki", "type": "internal", "commonName": "s CA"}, None),
    ("no-secret-in-state", rules.PKI_ROOT_CERT, {"backend": "s-pki", "type": "exported"}, "type 'exported'"),
    ("no-secret-in-state", "vault:generic/endpoint:Endpoint", {"path": "s-pki/roles/r", "dataJson": "{}"}, None),
    ("no-secret-in-state", rules.PKI_ISSUED_CERT, {"backend": "s-pki", "name": "r", "commonName": "a.b"}, "issues"),
    ("no-secret-in-state", rules.TLS_PRIVATE_KEY, {"algorithm": "ECDSA", "ecdsaCurve": "P256"}, "private key"),
    ("no-secret-in-state", "vault:kv/secretV2:SecretV2", {"mount": "s", "name": "x", "dataJson": "{}"}, "its data"),
    ("no-secret-in-state", "vault:kv/secretV2:SecretV2", {"mount": "s", "name": "x"}, None),
    ("no-secret-in-state", "vault:generic/secret:Secret", {"path": "s/x", "dataJson": '{"k": "v"}'}, "its data"),
    ("no-secret-in-state", rules.VAULT_PROVIDER, {"address": "https://vault.example.test:8200"}, None),
    ("no-secret-in-state", "vault:index/token:Token", {"policies": ["p"]}, "a Vault token"),
    ("no-secret-in-state", "aws:iam/accessKey:AccessKey", {"user": "u"}, "an IAM access key"),
    ("no-secret-in-state", "random:index/randomPassword:RandomPassword", {"length": 32}, "a generated password"),
    ("no-secret-in-state", rules.VAULT_PROVIDER, {"address": "https://v.test", "token": "hvs.x"}, "token"),
]


@pytest.mark.parametrize(("policy", "resource_type", "props", "expected"), CASES + GCP_CASES + AZURE_CASES)
def test_policy_on_good_and_bad_properties(
    policy: str, resource_type: str, props: dict[str, Any], expected: str | None
) -> None:
    assert_case(policy, resource_type, props, expected)


def test_every_policy_is_mandatory() -> None:
    assert all(policy.enforcement_level == rules.EnforcementLevel.MANDATORY for policy in rules.POLICIES)


# IMDSv2 has no Google Cloud or Azure counterpart, and what is in the state is the same on every cloud (its cases are
# with AWS's); every other rule has a branch per cloud.
@pytest.mark.parametrize(
    ("cases", "names"),
    [
        (CASES, POLICIES.keys()),
        (GCP_CASES, POLICIES.keys() - {"imdsv2-required", "no-secret-in-state"}),
        (AZURE_CASES, POLICIES.keys() - {"imdsv2-required", "no-secret-in-state"}),
    ],
    ids=["aws", "gcp", "azure"],
)
def test_every_cloud_branch_is_covered_both_ways(cases: list[Case], names: set[str]) -> None:
    for name in names:
        outcomes = {expected is None for policy, _type, _props, expected in cases if policy == name}
        assert outcomes == {True, False}, name


def test_pack_constants_match_the_program() -> None:
    assert rules.GPU_FAMILIES == GPU_FAMILIES
    assert rules.GCP_GPU_FAMILIES == GCP_GPU_FAMILIES
    assert rules.AZURE_GPU_SERIES == AZURE_GPU_SERIES
    spec = StackSpec.from_values("foresight", "dev", REQUIRED_CONFIG.get)
    assert set(rules.REQUIRED_TAGS) == set(spec.tags())
    assert set(rules.REQUIRED_LABELS) == set(spec.labels())


@pytest.fixture(scope="module")
def stack_runs(
    baseline: MockRun,
    run_stack: RunStack,
    gcp_baseline: MockRun,
    run_gcp_stack: RunStack,
    azure_baseline: MockRun,
    run_azure_stack: RunStack,
) -> dict[str, MockRun]:
    ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHrYwJmqmn0Dbj1o4Qh0XGnQKiqLQ9Nn3mTBRJm8Ifj8 ops@example"
    byo = {"foresight:vpcId": "vpc-0123456789abcdef0", "foresight:subnetIds": '["subnet-0aaaaaaaaaaaaaaa1"]'}
    gcp_byo = {"foresight:vpcId": "shared-vpc", "foresight:subnetIds": '["cache-subnet"]'}
    return {
        "baseline": baseline,
        "spot": run_stack({"foresight:spot": "true", "foresight:fallbackInstanceTypes": '["g5.xlarge"]'}),
        "private": run_stack({"foresight:allowedCidrs": "[]", "foresight:sshPublicKey": ssh}),
        "world": run_stack({"foresight:allowedCidrs": '["0.0.0.0/0"]', "foresight:sshPublicKey": ssh}),
        "byo": run_stack(byo),
        "gcp": gcp_baseline,
        "gcp-spot": run_gcp_stack({"foresight:spot": "true", "foresight:fallbackInstanceTypes": '["a2-highgpu-1g"]'}),
        "gcp-private": run_gcp_stack({**gcp_byo, "foresight:allowedCidrs": "[]", "foresight:sshPublicKey": ssh}),
        "gcp-world": run_gcp_stack({"foresight:allowedCidrs": '["0.0.0.0/0"]', "foresight:sshPublicKey": ssh}),
        "azure": azure_baseline,
        "azure-spot": run_azure_stack(
            {"foresight:spot": "true", "foresight:fallbackInstanceTypes": '["Standard_NC24ads_A100_v4"]'}
        ),
        "azure-private": run_azure_stack({"foresight:allowedCidrs": "[]", "foresight:sshPublicKey": ssh}),
        "azure-world": run_azure_stack({"foresight:allowedCidrs": '["0.0.0.0/0"]', "foresight:sshPublicKey": ssh}),
    }


def test_pack_passes_on_the_stacks_own_resources(stack_runs: dict[str, MockRun]) -> None:
    for variant, run in stack_runs.items():
        for resource in run:
            for name in POLICIES:
                assert violations(name, resource.type, resource.inputs) == [], (variant, resource.name, name)


def _tampered_template(run: MockRun) -> Registered:
    template = copy.deepcopy(run.one(LT))
    template.inputs["metadataOptions"]["httpTokens"] = "optional"
    template.inputs["blockDeviceMappings"][1]["ebs"]["encrypted"] = "false"
    return template


def test_pack_catches_a_weakened_launch_template(baseline: MockRun) -> None:
    template = _tampered_template(baseline)
    assert violations("imdsv2-required", LT, template.inputs)
    assert violations("ebs-encrypted-with-customer-key", LT, template.inputs) == ["volume /dev/sdf is not encrypted."]


@pytest.fixture(scope="module")
def served_pack() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """stacks/policies/__main__.py started the way a policy pack runs: it serves the Analyzer gRPC API."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "stacks/policies/__main__.py")], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().decode().strip())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def _analyze(stub: analyzer_pb2_grpc.AnalyzerStub, resource: Registered) -> list[Any]:
    properties = struct_pb2.Struct()
    properties.CopyFrom(resource.struct)
    request = analyzer_pb2.AnalyzeRequest(
        type=resource.type, properties=properties, urn=resource.urn, name=resource.name
    )
    return list(stub.Analyze(request).diagnostics)


def test_served_pack_lists_every_policy(served_pack: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = served_pack.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "foresight"
    assert sorted(policy.name for policy in info.policies) == sorted(POLICIES)


def test_served_pack_passes_the_stack_and_rejects_tampering(
    served_pack: analyzer_pb2_grpc.AnalyzerStub, baseline: MockRun
) -> None:
    for resource in baseline:
        assert _analyze(served_pack, resource) == [], resource.name
    tampered = _tampered_template(baseline)
    struct = struct_pb2.Struct()
    struct.update(tampered.inputs)
    tampered.struct = struct
    diagnostics = _analyze(served_pack, tampered)
    assert sorted(d.policyName for d in diagnostics) == ["ebs-encrypted-with-customer-key", "imdsv2-required"]
    assert all(d.enforcementLevel == analyzer_pb2.MANDATORY for d in diagnostics)
