"""The policy pack on Google Cloud properties: the case table (test_policies.py runs it) and checks of its messages."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from stacks.policies import rules
from tests.stacks.policy_harness import TAGS, Case, violations

KMS_KEY_LINK = "projects/foresight-dev/locations/us-central1/keyRings/foresight/cryptoKeys/disks"
LABELS = {"foresight-project": "foresight", "foresight-stack": "dev", "managed-by": "pulumi"}


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
GC, NP = rules.GCP_CLUSTER, rules.GCP_NODE_POOL
SSH, HTTPS = {"protocol": "tcp", "ports": ["22"]}, {"protocol": "tcp", "ports": ["443"]}
GCP_CASES: list[Case] = [
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
    # GKE: a pool or standard cluster without nodeConfig boots from disks under Google's key
    ("ebs-encrypted-with-customer-key", NP, {"nodeConfig": {"bootDiskKmsKey": KMS_KEY_LINK}}, None),
    ("ebs-encrypted-with-customer-key", NP, {"nodeCount": 1}, "node boot disk is encrypted with Google's default"),
    ("ebs-encrypted-with-customer-key", NP, {"nodeConfig": {"machineType": "g2-standard-4"}}, "nodeConfig.bootDisk"),
    ("ebs-encrypted-with-customer-key", GC, {"initialNodeCount": 1}, "set nodeConfig.bootDiskKmsKey"),
    (
        "ebs-encrypted-with-customer-key",
        GC,
        {"nodeConfig": {"bootDiskKmsKey": KMS_KEY_LINK}, "nodePools": [{"name": "extra", "nodeCount": 1}]},
        "node pool extra boot disk",
    ),
    ("ebs-encrypted-with-customer-key", GC, {"enableAutopilot": True}, "autoProvisioningDefaults.bootDiskKmsKey"),
    (
        "ebs-encrypted-with-customer-key",
        GC,
        {"enableAutopilot": True, "clusterAutoscaling": {"autoProvisioningDefaults": {"bootDiskKmsKey": KMS_KEY_LINK}}},
        None,
    ),
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
    # an ingress rule with no source at all admits every source
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall(SSH, sourceRanges=[]), "from 0.0.0.0/0 opens an admin"),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall(SSH, sourceRanges=None), "from 0.0.0.0/0 opens an admin"),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall(SSH, sourceRanges=None, sourceTags=["bastion"]), None),
    (
        "no-world-admin-ingress",
        rules.GCP_FIREWALL,
        _firewall(SSH, sourceRanges=None, sourceServiceAccounts=["bastion@acme.iam.gserviceaccount.com"]),
        None,
    ),
    ("no-world-admin-ingress", rules.GCP_FIREWALL, _firewall(SSH, sourceRanges=None, direction="EGRESS"), None),
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
    ("shared-tier-tls-and-identity", "gcp:memorystore/instance:Instance",
     {"transitEncryptionMode": "SERVER_AUTHENTICATION", "authorizationMode": "IAM_AUTH"}, None),
    ("shared-tier-tls-and-identity", "gcp:memorystore/instance:Instance",
     {"transitEncryptionMode": "SERVER_AUTHENTICATION", "authorizationMode": "AUTH_DISABLED"}, "IAM_AUTH"),
]


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
