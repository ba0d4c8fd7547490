"""The policy pack on Azure properties: the case table (test_policies.py runs it) and checks of its messages."""

from __future__ import annotations

import base64
import gzip
import importlib
import inspect
from pathlib import Path
from typing import Any

from stacks.policies import rules
from tests.stacks.policy_harness import TAGS, Case, violations

ENCRYPTION_SET_ID = (
    "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/foresight-dev"
    "/providers/Microsoft.Compute/diskEncryptionSets/foresight-dev"
)
LABELS = {"foresight-project": "foresight", "foresight-stack": "dev", "managed-by": "pulumi"}


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
AZURE_CASES: list[Case] = [
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
    ("shared-tier-tls-and-identity", "azure-native:redis:Redis",
     {"enableNonSslPort": False, "minimumTlsVersion": "1.2", "disableAccessKeyAuthentication": True,
      "redisConfiguration": {"aadEnabled": "true"}}, None),
    ("shared-tier-tls-and-identity", "azure-native:redis:Redis",
     {"enableNonSslPort": True, "minimumTlsVersion": "1.2", "disableAccessKeyAuthentication": True,
      "redisConfiguration": {"aadEnabled": "true"}}, "plain-text port"),
]


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
