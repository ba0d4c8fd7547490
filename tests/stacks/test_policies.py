"""The policy pack: each policy on good and bad AWS, Google Cloud and Azure properties, on the stack's own resources,
and served over gRPC."""

from __future__ import annotations

import base64
import copy
import gzip
import importlib
import inspect
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs, ResourceValidationPolicy
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.proxy import unknown_checking_proxy

from stacks.aws.compute import GPU_FAMILIES
from stacks.azure.compute import GPU_SERIES as AZURE_GPU_SERIES
from stacks.gcp.compute import GPU_FAMILIES as GCP_GPU_FAMILIES
from stacks.policies import rules
from stacks.spec import StackSpec
from tests.stacks.conftest import RunStack
from tests.stacks.mockrun import REQUIRED_CONFIG, ROOT, MockRun, Registered

POLICIES: dict[str, ResourceValidationPolicy] = {policy.name: policy for policy in rules.POLICIES}
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
TAGS = {"foresight:project": "foresight", "foresight:stack": "dev", "managed-by": "pulumi"}
KMS_KEY_LINK = "projects/foresight-dev/locations/us-central1/keyRings/foresight/cryptoKeys/disks"
LABELS = {"foresight-project": "foresight", "foresight-stack": "dev", "managed-by": "pulumi"}
ENCRYPTION_SET_ID = (
    "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/foresight-dev"
    "/providers/Microsoft.Compute/diskEncryptionSets/foresight-dev"
)


def violations(policy_name: str, resource_type: str, props: dict[str, Any]) -> list[str]:
    """Run one policy the way the analyzer does: engine-style properties behind the unknown-checking proxy."""
    found: list[str] = []
    options = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
    args = ResourceValidationArgs(
        resource_type, unknown_checking_proxy(deserialize_properties(props)), "urn:test", "test", options, None
    )
    policy = POLICIES[policy_name]
    assert policy.validate is not None and not isinstance(policy.validate, list)

    def report(message: str, _urn: str | None = None) -> None:
        found.append(message)

    policy.validate(args, report)
    return found


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
CASES = [
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
]


def _gcp_disk(device_name: str, *, boot: bool = False, key: bool = True) -> dict[str, Any]:
    disk: dict[str, Any] = {"boot": boot, "deviceName": device_name, "diskType": "pd-balanced", "autoDelete": True}
    if key:
        disk["diskEncryptionKey"] = {"kmsKeySelfLink": KMS_KEY_LINK}
    return disk


def _gcp_template(**changes: Any) -> dict[str, Any]:
    template = {
        "machineType": "g2-standard-4",
        "disks": [_gcp_disk("boot", boot=True), _gcp_disk("data")],
        "metadata": {
            "user-data": "#cloud-config\nruncmd: [[echo, hi]]\n",
            "enable-oslogin": "TRUE",
            "block-project-ssh-keys": "TRUE",
        },
        "labels": LABELS,
    }
    template.update(changes)
    return template


def _firewall(*allows: dict[str, Any], **changes: Any) -> dict[str, Any]:
    firewall = {"network": "foresight", "sourceRanges": ["0.0.0.0/0"], "allows": list(allows)}
    firewall.update(changes)
    return firewall


def _flexible_group(*machine_types: str) -> dict[str, Any]:
    selection = {"name": "gpus", "rank": 1, "machineTypes": list(machine_types)}
    return {"baseInstanceName": "foresight", "instanceFlexibilityPolicy": {"instanceSelections": [selection]}}


GT, GI = rules.GCP_INSTANCE_TEMPLATE, rules.GCP_INSTANCE
SSH, HTTPS = {"protocol": "tcp", "ports": ["22"]}, {"protocol": "tcp", "ports": ["443"]}
GCP_CASES = [
    ("ebs-encrypted-with-customer-key", GT, _gcp_template(), None),
    (
        "ebs-encrypted-with-customer-key",
        GT,
        _gcp_template(disks=[_gcp_disk("boot", boot=True, key=False)]),
        "boot disk",
    ),
    ("ebs-encrypted-with-customer-key", GT, _gcp_template(disks=[_gcp_disk("cache", key=False)]), "disk cache"),
    ("ebs-encrypted-with-customer-key", GI, {"bootDisk": {"kmsKeySelfLink": KMS_KEY_LINK}}, None),
    ("ebs-encrypted-with-customer-key", GI, {"bootDisk": {"initializeParams": {"size": 100}}}, "boot disk"),
    (
        "ebs-encrypted-with-customer-key",
        GI,
        {"bootDisk": {"kmsKeySelfLink": KMS_KEY_LINK}, "attachedDisks": [{"source": "foresight-data"}]},
        "disk foresight-data is encrypted with Google's default key",
    ),
    ("ebs-encrypted-with-customer-key", rules.GCP_DISK, {"diskEncryptionKey": {"kmsKeySelfLink": KMS_KEY_LINK}}, None),
    ("ebs-encrypted-with-customer-key", rules.GCP_DISK, {"size": 500}, "set diskEncryptionKey.kmsKeySelfLink"),
    ("kms-key-rotation", rules.GCP_CRYPTO_KEY, {"rotationPeriod": "7776000s"}, None),
    ("kms-key-rotation", rules.GCP_CRYPTO_KEY, {"rotationPeriod": "31536000s", "purpose": "ENCRYPT_DECRYPT"}, None),
    ("kms-key-rotation", rules.GCP_CRYPTO_KEY, {"rotationPeriod": "34560000s"}, "(400.0 days) is too long"),
    ("kms-key-rotation", rules.GCP_CRYPTO_KEY, {"rotationPeriod": "31536000.5s"}, "is too long"),
    ("kms-key-rotation", rules.GCP_CRYPTO_KEY, {"rotationPeriod": "90d"}, "is not a duration in seconds"),
    ("kms-key-rotation", rules.GCP_CRYPTO_KEY, {}, "Cloud KMS key rotation is off"),
    ("kms-key-rotation", rules.GCP_CRYPTO_KEY, {"purpose": "ENCRYPT_DECRYPT"}, "rotation is off"),
    ("kms-key-rotation", rules.GCP_CRYPTO_KEY, {"purpose": "ASYMMETRIC_SIGN"}, None),
    ("imdsv2-required", GT, _gcp_template(), None),
    ("imdsv2-required", GI, {}, None),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall(HTTPS), None),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall({"protocol": "tcp", "ports": ["6380"]}), None),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall(HTTPS, SSH), "ingress tcp 22-22 from 0.0.0.0/0"),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall(SSH, sourceRanges=["203.0.113.0/24"]), None),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall(SSH, direction="EGRESS"), None),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall(SSH, disabled=True), None),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall(SSH, direction="INGRESS"), "opens an admin port"),
    (
        "no-world-admin-ingress",
        rules.GCP_FIREWALL,
        _firewall({"protocol": "tcp", "ports": ["443", "20-30"]}),
        "ingress tcp 20-30 from 0.0.0.0/0",
    ),
    (
        "no-world-admin-ingress",
        rules.GCP_FIREWALL,
        _firewall({"protocol": "6", "ports": ["3389"]}, sourceRanges=["10.0.0.0/8", "::/0"]),
        "from ::/0 opens an admin port",
    ),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall({"protocol": "all"}), "ingress all 0-65535"),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall({"protocol": "tcp"}), "ingress tcp 0-65535"),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall({"protocol": "udp", "ports": ["22"]}), None),
    ("gpu-instance-families", GT, _gcp_template(), None),
    ("gpu-instance-families", GT, _gcp_template(machineType="n1-standard-4"), "n1-standard-4 is not an NVIDIA GPU"),
    ("gpu-instance-families", GT, _gcp_template(machineType="g6.xlarge"), "g6.xlarge is not an NVIDIA GPU"),
    ("gpu-instance-families", GI, {"machineType": "a3-highgpu-8g"}, None),
    ("gpu-instance-families", GI, {"machineType": "e2-medium"}, "e2-medium"),
    ("gpu-instance-families", rules.GCP_GROUP_MANAGER, _flexible_group("g2-standard-8", "a2-highgpu-1g"), None),
    (
        "gpu-instance-families",
        rules.GCP_GROUP_MANAGER,
        _flexible_group("g2-standard-8", "n2-standard-8"),
        "n2-standard-8",
    ),
    ("no-secrets-in-user-data", GT, _gcp_template(), None),
    (
        "no-secrets-in-user-data",
        GT,
        _gcp_template(
            metadata={"user-data": "#cloud-config\nwrite_files:\n- content: |\n    -----BEGIN PRIVATE KEY-----\n"}
        ),
        "metadata user-data contains a private key",
    ),
    (
        "no-secrets-in-user-data",
        GI,
        {"metadata": {"startup-script": "#!/bin/sh\nVAULT_TOKEN=hvs.CAESIabcdefghijklmnopqrstuv vault login\n"}},
        "metadata startup-script contains a VAULT_TOKEN assignment",
    ),
    (
        "no-secrets-in-user-data",
        GI,
        {"metadataStartupScript": "echo 'root:x' | chpasswd\npassword=hunter22\n"},
        "metadataStartupScript contains a password assignment",
    ),
    ("required-tags", GT, _gcp_template(), None),
    ("required-tags", GT, _gcp_template(labels={}), "labels: foresight-project, foresight-stack, managed-by."),
    ("required-tags", GT, _gcp_template(labels=TAGS), "missing required labels: foresight-project, foresight-stack."),
    ("required-tags", rules.GCP_CRYPTO_KEY, {"labels": {"managed-by": "pulumi"}}, "foresight-project"),
    ("required-tags", "gcp:compute/address:Address", {}, "missing required labels"),
    ("required-tags", "gcp:compute/forwardingRule:ForwardingRule", {"labels": LABELS}, None),
    ("required-tags", rules.GCP_FIREWALL, _firewall(HTTPS), None),
]


def _azure_disk(lun: int | None = None, *, encrypted: bool = True) -> dict[str, Any]:
    managed_disk: dict[str, Any] = {"storageAccountType": "Premium_LRS"}
    if encrypted:
        managed_disk["diskEncryptionSet"] = {"id": ENCRYPTION_SET_ID}
    disk: dict[str, Any] = {"createOption": "FromImage" if lun is None else "Empty", "managedDisk": managed_disk}
    if lun is not None:
        disk.update(lun=lun, diskSizeGB=512)
    return disk


def _custom_data(text: bytes, *, gzipped: bool = False) -> str:
    return base64.b64encode(gzip.compress(text) if gzipped else text).decode()


def _azure_profile(*data_disks: dict[str, Any], **os_profile: Any) -> dict[str, Any]:
    """What a VM is made of: an encrypted OS disk and data disk lun 0 unless `data_disks` says otherwise."""
    ssh_key = {"path": "/home/foresight/.ssh/authorized_keys", "keyData": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ops"}
    profile = {
        "adminUsername": "foresight",
        "customData": _custom_data(b"#cloud-config\nruncmd: [[echo, hi]]\n"),
        "linuxConfiguration": {"disablePasswordAuthentication": True, "ssh": {"publicKeys": [ssh_key]}},
    }
    profile.update(os_profile)
    storage = {"osDisk": _azure_disk(), "dataDisks": list(data_disks) or [_azure_disk(0)]}
    return {"storageProfile": storage, "osProfile": profile}


def _scale_set(*sizes: str, profile: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """A scale set of one size as its sku, or of several as a "Mix" sku that lists them in its skuProfile."""
    sizes = sizes or ("Standard_NC4as_T4_v3",)
    scale_set: dict[str, Any] = {
        "orchestrationMode": "Flexible",
        "sku": {"name": sizes[0] if len(sizes) == 1 else "Mix", "capacity": 1},
        "virtualMachineProfile": profile or _azure_profile(),
        "tags": TAGS,
    }
    if len(sizes) > 1:
        vm_sizes = [{"name": size, "rank": rank} for rank, size in enumerate(sizes)]
        scale_set["skuProfile"] = {"vmSizes": vm_sizes, "allocationStrategy": "Prioritized"}
    scale_set.update(changes)
    return scale_set


def _vm(size: str = "Standard_NC4as_T4_v3", **changes: Any) -> dict[str, Any]:
    vm = {"hardwareProfile": {"vmSize": size}, **_azure_profile(), "tags": TAGS}
    vm.update(changes)
    return vm


def _rotate(action: str = "rotate", **trigger: str) -> dict[str, Any]:
    return {"action": {"type": action}, "trigger": trigger}


def _key(*lifetime_actions: dict[str, Any], expiry: str | None = "P2Y", kty: str = "RSA") -> dict[str, Any]:
    """A Key Vault key whose rotation policy has `lifetime_actions` (none: no rotation policy at all)."""
    properties: dict[str, Any] = {"kty": kty, "keySize": 3072}
    if lifetime_actions:
        attributes = {"expiryTime": expiry} if expiry else {}
        properties["rotationPolicy"] = {"attributes": attributes, "lifetimeActions": list(lifetime_actions)}
    return {"keyName": "disks", "properties": properties, "tags": TAGS}


def _vault(**properties: Any) -> dict[str, Any]:
    return {
        "properties": {
            "tenantId": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "enableRbacAuthorization": True,
            **properties,
        },
        "tags": TAGS,
    }


def _security_rule(**changes: Any) -> dict[str, Any]:
    """An inbound Allow TCP 22 rule from 203.0.113.0/24; a change to None drops the field."""
    rule = {
        "name": "ssh-in",
        "priority": 120,
        "direction": "Inbound",
        "access": "Allow",
        "protocol": "Tcp",
        "sourceAddressPrefix": "203.0.113.0/24",
        "sourcePortRange": "*",
        "destinationAddressPrefix": "*",
        "destinationPortRange": "22",
    }
    rule.update(changes)
    return {field: value for field, value in rule.items() if value is not None}


def _nsg(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"securityRules": list(rules), "tags": TAGS}


AS, AV, AK = rules.AZURE_SCALE_SET, rules.AZURE_VM, rules.AZURE_KEY
T4, A100, H100 = "Standard_NC4as_T4_v3", "Standard_NC24ads_A100_v4", "Standard_NC40ads_H100_v5"
OPEN_SSH = "opens an admin port"
CUSTOMER_KEY = {"diskEncryptionSetId": ENCRYPTION_SET_ID, "type": "EncryptionAtRestWithCustomerKey"}
AZURE_CASES = [
    ("ebs-encrypted-with-customer-key", AS, _scale_set(), None),
    (
        "ebs-encrypted-with-customer-key",
        AS,
        _scale_set(profile={"storageProfile": {"osDisk": _azure_disk(encrypted=False)}}),
        "OS disk is encrypted with a platform-managed key",
    ),
    (
        "ebs-encrypted-with-customer-key",
        AS,
        _scale_set(profile=_azure_profile(_azure_disk(0), _azure_disk(3, encrypted=False))),
        "data disk lun 3",
    ),
    ("ebs-encrypted-with-customer-key", AV, _vm(), None),
    ("ebs-encrypted-with-customer-key", AV, {"storageProfile": {"osDisk": {"createOption": "FromImage"}}}, "OS disk"),
    ("ebs-encrypted-with-customer-key", AV, _vm(storageProfile={"osDisk": _azure_disk()}), None),
    (
        "ebs-encrypted-with-customer-key",
        AV,
        _vm(storageProfile={"osDisk": _azure_disk(), "dataDisks": [{"lun": 2, "createOption": "Empty"}]}),
        "data disk lun 2",
    ),
    ("ebs-encrypted-with-customer-key", rules.AZURE_DISK, {"encryption": CUSTOMER_KEY}, None),
    (
        "ebs-encrypted-with-customer-key",
        rules.AZURE_DISK,
        {"encryption": {"diskEncryptionSetId": ENCRYPTION_SET_ID}},
        None,
    ),
    (
        "ebs-encrypted-with-customer-key",
        rules.AZURE_DISK,
        {"encryption": {**CUSTOMER_KEY, "type": "EncryptionAtRestWithPlatformAndCustomerKeys"}},
        None,
    ),
    (
        "ebs-encrypted-with-customer-key",
        rules.AZURE_DISK,
        {"encryption": {**CUSTOMER_KEY, "type": "EncryptionAtRestWithPlatformKey"}},
        "disk is encrypted with a platform-managed key",
    ),
    ("ebs-encrypted-with-customer-key", rules.AZURE_DISK, {"diskSizeGB": 512}, "set encryption.diskEncryptionSetId"),
    ("kms-key-rotation", AK, _key(_rotate(timeAfterCreate="P90D"), _rotate("notify", timeBeforeExpiry="P30D")), None),
    ("kms-key-rotation", AK, _key(_rotate(timeAfterCreate="P1Y")), None),
    ("kms-key-rotation", AK, _key(_rotate(timeAfterCreate="P12M")), None),
    ("kms-key-rotation", AK, _key(_rotate("Rotate", timeAfterCreate="P365D"), kty="EC-HSM"), None),
    ("kms-key-rotation", AK, _key(_rotate(timeAfterCreate="P366D")), "(366 days after creation) is too long"),
    ("kms-key-rotation", AK, _key(_rotate(timeAfterCreate="P13M")), "(390 days after creation) is too long"),
    ("kms-key-rotation", AK, _key(_rotate(timeAfterCreate="P1Y1D")), "timeAfterCreate P1Y1D (366 days"),
    ("kms-key-rotation", AK, _key(_rotate(timeAfterCreate="90d")), "timeAfterCreate '90d' is not an ISO 8601"),
    ("kms-key-rotation", AK, _key(_rotate(timeAfterCreate="PT48H")), "is not an ISO 8601 duration"),
    ("kms-key-rotation", AK, _key(_rotate(timeBeforeExpiry="P30D"), expiry="P1Y"), None),
    (
        "kms-key-rotation",
        AK,
        _key(_rotate(timeBeforeExpiry="P30D"), expiry="P2Y"),
        "rotation at expiryTime P2Y less timeBeforeExpiry P30D (700 days after creation) is too long",
    ),
    ("kms-key-rotation", AK, _key(_rotate(timeBeforeExpiry="P30D"), expiry=None), "needs rotationPolicy.attributes"),
    ("kms-key-rotation", AK, _key(_rotate(timeBeforeExpiry="P30D"), expiry="2 years"), "expiryTime '2 years'"),
    ("kms-key-rotation", AK, _key(_rotate()), "no timeAfterCreate or timeBeforeExpiry"),
    ("kms-key-rotation", AK, _key(_rotate("notify", timeBeforeExpiry="P30D")), "Key Vault key rotation is off"),
    ("kms-key-rotation", AK, _key(), "Key Vault key rotation is off"),
    ("kms-key-rotation", AK, _key(kty="RSA-HSM"), "rotation is off"),
    ("kms-key-rotation", AK, _key(kty="EC"), "rotation is off"),
    ("kms-key-rotation", rules.AZURE_VAULT, _vault(enablePurgeProtection=True, enableSoftDelete=True), None),
    ("kms-key-rotation", rules.AZURE_VAULT, _vault(enableSoftDelete=True), "purge protection is off"),
    ("kms-key-rotation", rules.AZURE_VAULT, _vault(enablePurgeProtection=False), "enablePurgeProtection to true"),
    ("imdsv2-required", AS, _scale_set(), None),
    ("imdsv2-required", AV, _vm(), None),
    ("no-world-admin-ingress", rules.AZURE_NSG, _nsg(_security_rule()), None),
    ("no-world-admin-ingress", rules.AZURE_NSG, _nsg(_security_rule(sourceAddressPrefix="*")), "tcp 22-22 from *"),
    (
        "no-world-admin-ingress",
        rules.AZURE_NSG,
        _nsg(_security_rule(destinationPortRange="443", sourceAddressPrefix="Internet"), _security_rule(priority=130)),
        None,
    ),
    (
        "no-world-admin-ingress",
        rules.AZURE_NSG,
        _nsg(_security_rule(destinationPortRange="3389", sourceAddressPrefix="Internet")),
        "ingress tcp 3389-3389 from Internet opens an admin port",
    ),
    (
        "no-world-admin-ingress",
        rules.AZURE_NSG,
        _nsg(_security_rule(sourceAddressPrefix=None, sourceAddressPrefixes=["10.0.0.0/8", "0.0.0.0/0"])),
        "from 0.0.0.0/0 opens",
    ),
    (
        "no-world-admin-ingress",
        rules.AZURE_NSG,
        _nsg(_security_rule(sourceAddressPrefix="::/0", destinationPortRange="20-30")),
        "ingress tcp 20-30 from ::/0",
    ),
    (
        "no-world-admin-ingress",
        rules.AZURE_NSG,
        _nsg(_security_rule(sourceAddressPrefix="*", destinationPortRange=None, destinationPortRanges=["443", "22"])),
        "ingress tcp 22-22 from *",
    ),
    (
        "no-world-admin-ingress",
        rules.AZURE_NSG,
        _nsg(_security_rule(protocol="*", sourceAddressPrefix="Any", destinationPortRange="*")),
        "ingress all 0-65535 from Any",
    ),
    (
        "no-world-admin-ingress",
        rules.AZURE_NSG,
        _nsg(_security_rule(protocol="Any", sourceAddressPrefix="*")),
        OPEN_SSH,
    ),
    ("no-world-admin-ingress", rules.AZURE_NSG, _nsg(_security_rule(protocol="Udp", sourceAddressPrefix="*")), None),
    (
        "no-world-admin-ingress",
        rules.AZURE_NSG,
        _nsg(_security_rule(direction="Outbound", sourceAddressPrefix="*")),
        None,
    ),
    ("no-world-admin-ingress", rules.AZURE_NSG, _nsg(_security_rule(access="Deny", sourceAddressPrefix="*")), None),
    ("no-world-admin-ingress", rules.AZURE_SECURITY_RULE, _security_rule(sourceAddressPrefix="Internet"), OPEN_SSH),
    (
        "no-world-admin-ingress",
        rules.AZURE_SECURITY_RULE,
        _security_rule(sourceAddressPrefix="AzureLoadBalancer"),
        None,
    ),
    ("gpu-instance-families", AS, _scale_set(), None),
    ("gpu-instance-families", AS, _scale_set(T4, A100, H100), None),
    ("gpu-instance-families", AS, _scale_set("Standard_D4s_v5"), "Standard_D4s_v5 is not an NVIDIA GPU size"),
    ("gpu-instance-families", AS, _scale_set(H100, "Standard_NV12s_v3"), "Standard_NV12s_v3 is not"),
    ("gpu-instance-families", AV, _vm(A100), None),
    ("gpu-instance-families", AV, _vm("Standard_ND96asr_v4"), "Standard_ND96asr_v4 is not an NVIDIA GPU size"),
    ("gpu-instance-families", AV, _vm("Standard_B2s"), "Standard_B2s is not"),
    ("no-secrets-in-user-data", AS, _scale_set(), None),
    ("no-secrets-in-user-data", AV, _vm(userData=_custom_data(b"#!/bin/sh\necho ready\n")), None),
    (
        "no-secrets-in-user-data",
        AS,
        _scale_set(profile=_azure_profile(customData=_custom_data(b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n"))),
        "osProfile.customData contains a private key",
    ),
    (
        "no-secrets-in-user-data",
        AS,
        _scale_set(
            profile=_azure_profile(customData=_custom_data(b"#!/bin/sh\nexport VAULT_TOKEN=s.1234\n", gzipped=True))
        ),
        "osProfile.customData contains a VAULT_TOKEN assignment",
    ),
    (
        "no-secrets-in-user-data",
        AS,
        _scale_set(profile={**_azure_profile(), "userData": _custom_data(b"aws_secret_access_key = wJalrXUtnFEMI\n")}),
        "userData contains an AWS secret access key",
    ),
    (
        "no-secrets-in-user-data",
        AV,
        _vm(userData=_custom_data(b"AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n", gzipped=True)),
        "userData contains an AWS access key id",
    ),
    (
        "no-secrets-in-user-data",
        AV,
        _vm(osProfile={"adminUsername": "foresight", "adminPassword": "Correct-Horse-9"}),
        "osProfile.adminPassword is set; use SSH keys",
    ),
    ("no-secrets-in-user-data", AS, _scale_set(profile=_azure_profile(adminPassword="x")), "adminPassword is set"),
    ("required-tags", AS, _scale_set(), None),
    (
        "required-tags",
        AS,
        _scale_set(tags={}),
        "missing required tags: foresight:project, foresight:stack, managed-by.",
    ),
    (
        "required-tags",
        rules.AZURE_VAULT,
        _vault() | {"tags": {"managed-by": "pulumi"}},
        "foresight:project, foresight:stack.",
    ),
    ("required-tags", "azure-native:resources:ResourceGroup", {"location": "westeurope"}, "missing required tags"),
    ("required-tags", "azure-native:network:NatGateway", {"tags": TAGS}, None),
    ("required-tags", "azure-native:compute:DiskEncryptionSet", {"tags": LABELS}, "foresight:project"),
    ("required-tags", rules.AZURE_SECURITY_RULE, _security_rule(), None),
]


@pytest.mark.parametrize(("policy", "resource_type", "props", "expected"), CASES + GCP_CASES + AZURE_CASES)
def test_policy_on_good_and_bad_properties(
    policy: str, resource_type: str, props: dict[str, Any], expected: str | None
) -> None:
    found = violations(policy, resource_type, props)
    if expected is None:
        assert found == []
    else:
        assert found and any(expected in message for message in found), found


def test_every_policy_is_mandatory_and_covered_both_ways() -> None:
    assert all(policy.enforcement_level == rules.EnforcementLevel.MANDATORY for policy in rules.POLICIES)
    for name in POLICIES:
        outcomes = {expected is None for policy, _type, _props, expected in CASES if policy == name}
        assert outcomes == {True, False}, name


def test_every_google_cloud_branch_is_covered_both_ways() -> None:
    for name in POLICIES.keys() - {"imdsv2-required"}:
        outcomes = {expected is None for policy, _type, _props, expected in GCP_CASES if policy == name}
        assert outcomes == {True, False}, name


def test_every_azure_branch_is_covered_both_ways() -> None:
    for name in POLICIES.keys() - {"imdsv2-required"}:
        outcomes = {expected is None for policy, _type, _props, expected in AZURE_CASES if policy == name}
        assert outcomes == {True, False}, name


def test_a_template_data_disk_without_a_key_is_named_alone() -> None:
    template = _gcp_template(disks=[_gcp_disk("boot", boot=True), _gcp_disk("data", key=False)])
    assert violations("ebs-encrypted-with-customer-key", GT, template) == [
        "disk data is encrypted with Google's default key; set diskEncryptionKey.kmsKeySelfLink to a Cloud KMS key."
    ]


def test_every_fallback_machine_type_of_a_group_is_checked() -> None:
    group = _flexible_group("g2-standard-8", "n1-standard-8", "a2-highgpu-1g", "c3-standard-8")
    found = violations("gpu-instance-families", rules.GCP_GROUP_MANAGER, group)
    assert [message.split()[0] for message in found] == ["n1-standard-8", "c3-standard-8"]


def test_required_labels_are_the_tags_in_google_cloud_label_syntax() -> None:
    assert tuple(key.replace(":", "-") for key in rules.REQUIRED_TAGS) == rules.REQUIRED_LABELS
    assert all(re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) for key in rules.REQUIRED_LABELS)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_gcp.*")
def test_google_cloud_type_tokens_name_pulumi_gcp_resources() -> None:
    """A misspelt token would leave its branch unreachable without failing any other test."""
    tokens = rules.GCP_LABELED_TYPES | {rules.GCP_FIREWALL, rules.GCP_GROUP_MANAGER}
    for token in tokens:
        module, _, name = token.removeprefix("gcp:").partition(":")
        resource = getattr(importlib.import_module(f"pulumi_gcp.{module.split('/')[0]}"), name)
        assert f"'{token}'" in Path(inspect.getfile(resource)).read_text(), token


def test_an_azure_data_disk_without_an_encryption_set_is_named_by_its_lun() -> None:
    scale_set = _scale_set(profile=_azure_profile(_azure_disk(0), _azure_disk(1, encrypted=False)))
    assert violations("ebs-encrypted-with-customer-key", AS, scale_set) == [
        "data disk lun 1 is encrypted with a platform-managed key; "
        "set managedDisk.diskEncryptionSet.id to a disk encryption set."
    ]
    vm = _vm(storageProfile={"osDisk": {"createOption": "FromImage"}, "dataDisks": [_azure_disk(0)]})
    assert violations("ebs-encrypted-with-customer-key", AV, vm) == [
        "OS disk is encrypted with a platform-managed key; "
        "set managedDisk.diskEncryptionSet.id to a disk encryption set."
    ]


def test_a_mix_scale_set_is_checked_by_its_listed_sizes() -> None:
    """ "Mix" is no size; every size the skuProfile lists is, the first as much as the fallbacks."""
    scale_set = _scale_set(T4, "Standard_D8s_v5", A100, "Standard_NV36ads_A10_v5")
    assert scale_set["sku"]["name"] == "Mix"
    assert violations("gpu-instance-families", AS, scale_set) == [
        f"{size} is not an NVIDIA GPU size (NCads_A100_v4, NCads_H100_v5, NCas_T4_v3)."
        for size in ("Standard_D8s_v5", "Standard_NV36ads_A10_v5")
    ]


def test_every_azure_tagged_type_needs_the_tags() -> None:
    for resource_type in rules.AZURE_TAGGED_TYPES:
        assert violations("required-tags", resource_type, {"tags": TAGS}) == [], resource_type
        assert violations("required-tags", resource_type, {}) == [
            "missing required tags: foresight:project, foresight:stack, managed-by."
        ], resource_type


def test_azure_type_tokens_name_pulumi_azure_native_resources() -> None:
    """A misspelt token would leave its branch unreachable without failing any other test."""
    for token in rules.AZURE_TAGGED_TYPES | {rules.AZURE_SECURITY_RULE}:
        module, _, name = token.removeprefix("azure-native:").partition(":")
        resource = getattr(importlib.import_module(f"pulumi_azure_native.{module}"), name)
        assert f"'{token}'" in Path(inspect.getfile(resource)).read_text(), token


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
