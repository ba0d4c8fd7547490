"""Foresight's AWS, Google Cloud and Azure guardrails as pulumi_policy resource policies, one function and one
policy per rule: each check knows every cloud's resource types, so a rule lives in one place and holds on every cloud.

`__main__.py` next to this file is the PolicyPack entry point (`pulumi up --policy-pack stacks/policies`);
tests call each policy's `validate` with resource properties. Self-contained on purpose: a published pack
holds only this directory, so nothing here imports the `stacks` package.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

REQUIRED_TAGS = ("foresight:project", "foresight:stack", "managed-by")
# Google Cloud label keys cannot contain ':', so the labels are the tag keys with '-' in its place.
REQUIRED_LABELS = ("foresight-project", "foresight-stack", "managed-by")
ADMIN_PORTS = (22, 3389)
WORLD_CIDRS = ("0.0.0.0/0", "::/0")
MAX_METADATA_HOP_LIMIT = 2
MAX_KEY_ROTATION_DAYS = 365
MAX_KMS_ROTATION_SECONDS = MAX_KEY_ROTATION_DAYS * 24 * 60 * 60
# x86_64 NVIDIA families of the Deep Learning Base GPU AMI (kept equal to stacks/aws/compute.py by a test).
GPU_FAMILIES = frozenset({"g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200"})
# NVIDIA GPU machine families on Google Cloud (kept equal to stacks/gcp/compute.py by a test).
GCP_GPU_FAMILIES = frozenset({"a2", "a3", "g2"})
# NVIDIA GPU VM series on Azure (kept equal to stacks/azure/compute.py by a test).
AZURE_GPU_SERIES = frozenset({"NCas_T4_v3", "NCads_A100_v4", "NCads_H100_v5"})
# An Azure size is its series with the vCPU count inside: Standard_NC4as_T4_v3 is 4 vCPUs of NCas_T4_v3.
AZURE_SIZE = re.compile(r"Standard_([A-Z]+)\d+([a-z]*)_(.+)")
# Azure sources that mean anyone besides the world CIDRs: the wildcard and the Internet service tag (lower case).
AZURE_WORLD_SOURCES = ("*", "any", "internet")
AZURE_PLATFORM_KEY = "EncryptionAtRestWithPlatformKey"
AWS_MANAGED_EBS_KEYS = ("alias/aws/ebs",)

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
LAUNCH_CONFIGURATION = "aws:ec2/launchConfiguration:LaunchConfiguration"
INSTANCE = "aws:ec2/instance:Instance"
# Root device names of the AMIs an instance boots (Ubuntu and Windows: /dev/sda1; Amazon Linux and most others:
# /dev/xvda). A launch template without a mapping for it leaves the root volume as the AMI says, not under the key.
ROOT_DEVICE_NAMES = ("/dev/sda1", "/dev/xvda")
VOLUME = "aws:ebs/volume:Volume"
KMS_KEY = "aws:kms/key:Key"
AUTOSCALING_GROUP = "aws:autoscaling/group:Group"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
# AWS scale-out (EKS, ElastiCache): a managed node group's instances come from its launch template.
EKS_NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
TAGGABLE_TYPES = frozenset(
    {
        AUTOSCALING_GROUP,
        INSTANCE,
        INGRESS_RULE,
        KMS_KEY,
        LAUNCH_TEMPLATE,
        SECURITY_GROUP,
        VOLUME,
        "aws:ec2/eip:Eip",
        "aws:ec2/internetGateway:InternetGateway",
        "aws:ec2/keyPair:KeyPair",
        "aws:ec2/natGateway:NatGateway",
        "aws:ec2/routeTable:RouteTable",
        "aws:ec2/subnet:Subnet",
        "aws:ec2/vpc:Vpc",
        "aws:iam/instanceProfile:InstanceProfile",
        "aws:iam/role:Role",
        "aws:lb/listener:Listener",
        "aws:lb/loadBalancer:LoadBalancer",
        "aws:lb/targetGroup:TargetGroup",
        "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
        EKS_NODE_GROUP,
        "aws:eks/accessEntry:AccessEntry",
        "aws:eks/addon:Addon",
        "aws:eks/cluster:Cluster",
        "aws:elasticache/parameterGroup:ParameterGroup",
        "aws:elasticache/replicationGroup:ReplicationGroup",
        "aws:elasticache/subnetGroup:SubnetGroup",
        "aws:elasticache/user:User",
        "aws:elasticache/userGroup:UserGroup",
        "aws:iam/openIdConnectProvider:OpenIdConnectProvider",
    }
)
GCP_INSTANCE_TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
GCP_INSTANCE = "gcp:compute/instance:Instance"
GCP_DISK = "gcp:compute/disk:Disk"
GCP_CRYPTO_KEY = "gcp:kms/cryptoKey:CryptoKey"
GCP_GROUP_MANAGER = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
GCP_FIREWALL = "gcp:compute/firewall:Firewall"
# Google Cloud scale-out (GKE, Memorystore): node boot disks are a node config's, the tier is labeled.
GCP_CLUSTER = "gcp:container/cluster:Cluster"
GCP_NODE_POOL = "gcp:container/nodePool:NodePool"
GCP_MEMORYSTORE = "gcp:memorystore/instance:Instance"
GCP_LABELED_TYPES = frozenset(
    {
        GCP_CRYPTO_KEY,
        GCP_DISK,
        GCP_INSTANCE,
        GCP_INSTANCE_TEMPLATE,
        "gcp:compute/address:Address",
        "gcp:compute/forwardingRule:ForwardingRule",
        GCP_MEMORYSTORE,
    }
)
AZURE_SCALE_SET = "azure-native:compute:VirtualMachineScaleSet"
AZURE_VM = "azure-native:compute:VirtualMachine"
AZURE_DISK = "azure-native:compute:Disk"
AZURE_KEY = "azure-native:keyvault:Key"
AZURE_VAULT = "azure-native:keyvault:Vault"
AZURE_NSG = "azure-native:network:NetworkSecurityGroup"
AZURE_SECURITY_RULE = "azure-native:network:SecurityRule"
# Azure scale-out (AKS, Azure Cache for Redis): every node disk of a cluster goes through its disk encryption set.
AZURE_MANAGED_CLUSTER = "azure-native:containerservice:ManagedCluster"
# The scale-out stacks' shared tiers (service/shared_tier.py): TLS only, reached with a cloud identity, no password.
ELASTICACHE_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
ELASTICACHE_USER = "aws:elasticache/user:User"
AZURE_REDIS = "azure-native:redis:Redis"
AZURE_TAGGED_TYPES = frozenset(
    {
        AZURE_DISK,
        AZURE_KEY,
        AZURE_NSG,
        AZURE_SCALE_SET,
        AZURE_VAULT,
        AZURE_VM,
        "azure-native:compute:DiskEncryptionSet",
        "azure-native:managedidentity:UserAssignedIdentity",
        "azure-native:network:LoadBalancer",
        "azure-native:network:NatGateway",
        "azure-native:network:PublicIPAddress",
        "azure-native:network:VirtualNetwork",
        "azure-native:resources:ResourceGroup",
        AZURE_MANAGED_CLUSTER,
        "azure-native:containerservice:AgentPool",
        "azure-native:network:PrivateEndpoint",
        "azure-native:privatedns:PrivateZone",
        "azure-native:privatedns:VirtualNetworkLink",
        AZURE_REDIS,
    }
)
# Cloud KMS rotation periods: seconds with up to nine fractional digits, then 's' ("7776000s").
KMS_DURATION = re.compile(r"(\d+(?:\.\d{1,9})?)s")
# Key Vault rotation times: ISO 8601 durations of years, months and days ("P90D", "P3M", "P1Y10D").
ISO_DURATION = re.compile(r"P(?=\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?")
# Resources that keep a private key or secret data in Pulumi's state (encrypted or not), and why that is avoidable.
TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
# Resources whose outputs are a credential, so that the state holds it whatever the program does with it.
CREDENTIAL_TYPES = {
    "vault:index/token:Token": "a Vault token",
    "vault:appRole/authBackendRoleSecretId:AuthBackendRoleSecretId": "an AppRole secret id",
    "aws:iam/accessKey:AccessKey": "an IAM access key",
    "gcp:serviceaccount/key:Key": "a service account key",
    "azuread:index/servicePrincipalPassword:ServicePrincipalPassword": "a service principal password",
    "azuread:index/applicationPassword:ApplicationPassword": "an application password",
    "random:index/randomPassword:RandomPassword": "a generated password",
}
KV_SECRET_TYPES = ("vault:kv/secretV2:SecretV2", "vault:kv/secret:Secret", "vault:generic/secret:Secret")
PKI_ROOT_CERT = "vault:pkiSecret/secretBackendRootCert:SecretBackendRootCert"
PKI_ISSUED_CERT = "vault:pkiSecret/secretBackendCert:SecretBackendCert"
VAULT_PROVIDER = "pulumi:providers:vault"
# What must never sit in user data: private keys, cloud access keys, Vault/OpenBao tokens, assigned passwords.
SECRET_PATTERNS = {
    "a private key": re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"),
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "an AWS secret access key": re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*\S+"),
    "a Vault token": re.compile(r"\bhv[sbr]\.[A-Za-z0-9_-]{20,}|\bs\.[A-Za-z0-9]{24}\b"),
    "a VAULT_TOKEN assignment": re.compile(r"\b(?:VAULT|BAO)_TOKEN\s*=\s*\S+"),
    "a password assignment": re.compile(r"(?i)\b(?:password|passwd)\s*[=:]\s*['\"]?[^\s'\"$]{4,}"),
}


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _list(value: Any) -> list[Any]:
    # The analyzer hands lists and dicts over as proxies (Sequence / Mapping), not as list and dict.
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str | bytes) else []


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _ebs_problem(ebs: Mapping[str, Any]) -> str | None:
    if not _truthy(ebs.get("encrypted")):
        return "is not encrypted"
    key = ebs.get("kmsKeyId")
    if not key:
        return "is encrypted with the AWS-managed default key; set kmsKeyId to a customer-managed key"
    if str(key).endswith(AWS_MANAGED_EBS_KEYS):
        return f"uses the AWS-managed key {key}; use a customer-managed key"
    return None


def _volumes(resource_type: str, props: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if resource_type == LAUNCH_TEMPLATE:
        for mapping in _list(props.get("blockDeviceMappings")):
            if "ebs" in mapping:
                yield f"volume {mapping.get('deviceName', '?')}", _dict(mapping["ebs"])
    elif resource_type == INSTANCE:
        yield "root volume", _dict(props.get("rootBlockDevice"))
        for device in _list(props.get("ebsBlockDevices")):
            yield f"volume {device.get('deviceName', '?')}", _dict(device)
    elif resource_type == VOLUME:
        yield "volume", props


def _launch_template_root_problem(props: Mapping[str, Any]) -> str | None:
    """A launch template's root volume is the AMI's unless a mapping names the root device."""
    mapped = {mapping.get("deviceName") for mapping in _list(props.get("blockDeviceMappings")) if "ebs" in mapping}
    if mapped & set(ROOT_DEVICE_NAMES):
        return None
    return (
        f"launch template maps no root device ({', '.join(ROOT_DEVICE_NAMES)}), so the root volume is the AMI's, "
        "not under a customer-managed key; add a blockDeviceMappings entry for it with encrypted and kmsKeyId."
    )


def _launch_configuration_problems(props: Mapping[str, Any]) -> Iterator[str]:
    """A launch configuration cannot name a KMS key for any of its volumes: at best they use the account's default."""
    volumes = [("root volume", _dict(props.get("rootBlockDevice")))]
    for device in _list(props.get("ebsBlockDevices")):
        volumes.append((f"volume {device.get('deviceName', '?')}", _dict(device)))
    for what, device in volumes:
        if not _truthy(device.get("encrypted")):
            yield f"{what} is not encrypted."
    yield (
        "launch configuration cannot give its volumes a customer-managed KMS key; use a launch template whose "
        "blockDeviceMappings set kmsKeyId."
    )


def _gcp_disks(resource_type: str, props: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(which disk, the property that names its Cloud KMS key, that key) of every Google Cloud disk."""
    if resource_type == GCP_INSTANCE_TEMPLATE:
        for index, disk in enumerate(_list(props.get("disks"))):
            what = "boot disk" if _truthy(disk.get("boot")) else f"disk {disk.get('deviceName') or index}"
            key = _dict(disk.get("diskEncryptionKey")).get("kmsKeySelfLink")
            yield what, "diskEncryptionKey.kmsKeySelfLink", key
    elif resource_type == GCP_INSTANCE:
        yield "boot disk", "bootDisk.kmsKeySelfLink", _dict(props.get("bootDisk")).get("kmsKeySelfLink")
        for disk in _list(props.get("attachedDisks")):
            what = f"disk {disk.get('deviceName') or disk.get('source', '?')}"
            yield what, "kmsKeySelfLink", disk.get("kmsKeySelfLink")
    elif resource_type == GCP_DISK:
        yield "disk", "diskEncryptionKey.kmsKeySelfLink", _dict(props.get("diskEncryptionKey")).get("kmsKeySelfLink")
    elif resource_type == GCP_NODE_POOL or (resource_type == GCP_CLUSTER and not _truthy(props.get("enableAutopilot"))):
        # Without a nodeConfig a pool's (and a standard cluster's default pool's) boot disks use Google's key.
        key = _dict(props.get("nodeConfig")).get("bootDiskKmsKey")
        yield "node boot disk", "nodeConfig.bootDiskKmsKey", key
        for index, pool in enumerate(_list(props.get("nodePools"))):
            pool_key = _dict(_dict(pool).get("nodeConfig")).get("bootDiskKmsKey")
            what = f"node pool {_dict(pool).get('name') or index} boot disk"
            yield what, f"nodePools[{index}].nodeConfig.bootDiskKmsKey", pool_key
    elif resource_type == GCP_CLUSTER:
        defaults = _dict(_dict(props.get("clusterAutoscaling")).get("autoProvisioningDefaults"))
        key_property = "clusterAutoscaling.autoProvisioningDefaults.bootDiskKmsKey"
        yield "Autopilot node boot disk", key_property, defaults.get("bootDiskKmsKey")


def _azure_vm_profile(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """What an Azure VM or each VM of a scale set is made of: storageProfile, osProfile, userData."""
    if resource_type == AZURE_SCALE_SET:
        return _dict(props.get("virtualMachineProfile"))
    return props if resource_type == AZURE_VM else None


def _disk_encryption_set(disk: Any) -> Any:
    return _dict(_dict(_dict(disk).get("managedDisk")).get("diskEncryptionSet")).get("id")


def _azure_disks(resource_type: str, props: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(which disk, how to give it a customer-managed key, its disk encryption set) of every Azure managed disk.

    A disk encryption set is what holds the customer-managed key: a disk without one uses a platform-managed key.
    """
    profile = _azure_vm_profile(resource_type, props)
    if profile is not None:
        storage = _dict(profile.get("storageProfile"))
        fix = "set managedDisk.diskEncryptionSet.id to a disk encryption set"
        yield "OS disk", fix, _disk_encryption_set(storage.get("osDisk"))
        for disk in _list(storage.get("dataDisks")):
            yield f"data disk lun {disk.get('lun', '?')}", fix, _disk_encryption_set(disk)
    elif resource_type == AZURE_DISK:
        encryption = _dict(props.get("encryption"))
        fix = "set encryption.diskEncryptionSetId to a disk encryption set, with a customer-key encryption.type"
        platform = encryption.get("type") == AZURE_PLATFORM_KEY
        yield "disk", fix, None if platform else encryption.get("diskEncryptionSetId")
    elif resource_type == AZURE_MANAGED_CLUSTER:
        yield "node OS disk", "set diskEncryptionSetID to a disk encryption set", props.get("diskEncryptionSetID")


def _node_group_without_template(resource_type: str, props: Mapping[str, Any]) -> bool:
    """An EKS node group without a launch template gets EKS's defaults: volumes under the account's default EBS
    encryption and EKS's own metadata options, neither of which the pack can see."""
    return resource_type == EKS_NODE_GROUP and not props.get("launchTemplate")


def check_volumes_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS volumes need a customer-managed KMS key; Google Cloud and Azure disks default to the provider's key."""
    if _node_group_without_template(args.resource_type, args.props):
        report("node group has no launch template; give it one whose volumes use a customer-managed key.", None)
    for what, ebs in _volumes(args.resource_type, args.props):
        problem = _ebs_problem(ebs)
        if problem:
            report(f"{what} {problem}.", None)
    if args.resource_type == LAUNCH_TEMPLATE and (root_problem := _launch_template_root_problem(args.props)):
        report(root_problem, None)
    if args.resource_type == LAUNCH_CONFIGURATION:
        for message in _launch_configuration_problems(args.props):
            report(message, None)
    for what, key_property, key in _gcp_disks(args.resource_type, args.props):
        if not key:
            report(f"{what} is encrypted with Google's default key; set {key_property} to a Cloud KMS key.", None)
    for what, fix, encryption_set in _azure_disks(args.resource_type, args.props):
        if not encryption_set:
            report(f"{what} is encrypted with a platform-managed key; {fix}.", None)


def _rotation_period_problem(period: Any) -> str | None:
    limit = f"{MAX_KMS_ROTATION_SECONDS}s (365 days)"
    if not period:
        return f"Cloud KMS key rotation is off; set rotationPeriod to at most {limit}."
    match = KMS_DURATION.fullmatch(str(period))
    if not match:
        return f"rotationPeriod {period!r} is not a duration in seconds like '7776000s'; use at most {limit}."
    seconds = Decimal(match[1])
    if seconds > MAX_KMS_ROTATION_SECONDS:
        return f"rotationPeriod {period} ({seconds / 86400:.1f} days) is too long; set it to at most {limit}."
    return None


def _iso_days(duration: Any) -> int | None:
    """Days in an ISO 8601 duration of years, months and days, a month 30 days and a year 365; None if malformed."""
    match = ISO_DURATION.fullmatch(str(duration))
    if not match:
        return None
    years, months, days = (int(part or 0) for part in match.groups())
    return years * 365 + months * 30 + days


def _key_rotation_problem(policy: Mapping[str, Any]) -> str | None:
    limit = f"rotate at least every {MAX_KEY_ROTATION_DAYS} days (P1Y)"
    triggers = [
        _dict(action.get("trigger"))
        for action in _list(policy.get("lifetimeActions"))
        if str(_dict(action.get("action")).get("type")).lower() == "rotate"
    ]
    if not triggers:
        return f"Key Vault key rotation is off; add a rotationPolicy lifetime action 'rotate' and {limit}."
    trigger = triggers[0]
    # Each duration with its sign: a key rotates timeAfterCreate after creation, or timeBeforeExpiry before it expires.
    if trigger.get("timeAfterCreate"):
        durations = [("timeAfterCreate", trigger["timeAfterCreate"], 1)]
    elif trigger.get("timeBeforeExpiry"):
        expiry = _dict(policy.get("attributes")).get("expiryTime")
        if not expiry:
            return f"rotation by timeBeforeExpiry needs rotationPolicy.attributes.expiryTime to ever rotate; {limit}."
        durations = [("expiryTime", expiry, 1), ("timeBeforeExpiry", trigger["timeBeforeExpiry"], -1)]
    else:
        return f"the 'rotate' lifetime action has no timeAfterCreate or timeBeforeExpiry; {limit}."
    after = 0
    for name, value, sign in durations:
        days = _iso_days(value)
        if days is None:
            return f"{name} {value!r} is not an ISO 8601 duration in years, months or days like 'P90D'; {limit}."
        after += sign * days
    if after > MAX_KEY_ROTATION_DAYS:
        when = " less ".join(f"{name} {value}" for name, value, _sign in durations)
        return f"rotation at {when} ({after} days after creation) is too long; {limit}."
    return None


def check_kms_rotation(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS and Google Cloud rotate only symmetric encryption keys; Key Vault rotates every key type it holds."""
    props = args.props
    if args.resource_type == KMS_KEY:
        symmetric = props.get("customerMasterKeySpec") in (None, "SYMMETRIC_DEFAULT")
        encryption = props.get("keyUsage") in (None, "ENCRYPT_DECRYPT")
        if symmetric and encryption and not _truthy(props.get("enableKeyRotation")):
            report("KMS key rotation is off; set enableKeyRotation to true.", None)
    elif args.resource_type == GCP_CRYPTO_KEY and props.get("purpose") in (None, "ENCRYPT_DECRYPT"):
        problem = _rotation_period_problem(props.get("rotationPeriod"))
        if problem:
            report(problem, None)
    elif args.resource_type == AZURE_KEY:
        problem = _key_rotation_problem(_dict(_dict(props.get("properties")).get("rotationPolicy")))
        if problem:
            report(problem, None)
    # Purge protection is the other half of a Key Vault key's lifecycle, so it is checked here rather than with the
    # disks: it keeps a deleted key and the versions rotation retires recoverable, and without them the disks
    # encrypted under them are lost (which is why disk encryption sets refuse a vault without it).
    elif args.resource_type == AZURE_VAULT and not _truthy(_dict(props.get("properties")).get("enablePurgeProtection")):
        report("Key Vault purge protection is off; set properties.enablePurgeProtection to true.", None)


def check_imdsv2(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS only: Google Cloud and Azure have no IMDSv1 to turn off, their metadata servers always require a header."""
    if _node_group_without_template(args.resource_type, args.props):
        report("node group has no launch template; give it one with metadataOptions.httpTokens 'required'.", None)
    if args.resource_type not in (LAUNCH_TEMPLATE, LAUNCH_CONFIGURATION, INSTANCE):
        return
    options = _dict(args.props.get("metadataOptions"))
    if options.get("httpEndpoint") == "disabled":
        return
    if options.get("httpTokens") != "required":
        report("IMDSv1 is allowed; set metadataOptions.httpTokens to 'required'.", None)
    hop_limit = options.get("httpPutResponseHopLimit")
    if hop_limit is not None and int(hop_limit) > MAX_METADATA_HOP_LIMIT:
        report(
            f"metadata hop limit {hop_limit} exceeds {MAX_METADATA_HOP_LIMIT}; more hops reach IMDS.",
            None,
        )


def _ingress_rules(resource_type: str, props: Mapping[str, Any]) -> Iterator[tuple[str, Any, Any, list[str]]]:
    """(protocol, from port, to port, source CIDRs) of every ingress rule a resource declares."""
    if resource_type == SECURITY_GROUP:
        for rule in _list(props.get("ingress")):
            cidrs = _list(rule.get("cidrBlocks")) + _list(rule.get("ipv6CidrBlocks"))
            yield str(rule.get("protocol")), rule.get("fromPort"), rule.get("toPort"), cidrs
    elif resource_type == SECURITY_GROUP_RULE and props.get("type") == "ingress":
        cidrs = _list(props.get("cidrBlocks")) + _list(props.get("ipv6CidrBlocks"))
        yield str(props.get("protocol")), props.get("fromPort"), props.get("toPort"), cidrs
    elif resource_type == INGRESS_RULE:
        cidrs = [cidr for cidr in (props.get("cidrIpv4"), props.get("cidrIpv6")) if cidr]
        yield str(props.get("ipProtocol")), props.get("fromPort"), props.get("toPort"), cidrs
    elif resource_type == GCP_FIREWALL and _gcp_firewall_admits(props):
        cidrs = _list(props.get("sourceRanges"))
        if not cidrs and not _list(props.get("sourceTags")) and not _list(props.get("sourceServiceAccounts")):
            cidrs = ["0.0.0.0/0"]  # an ingress rule with no source at all applies to every source
        for allow in _list(props.get("allows")):
            for low, high in _port_ranges(allow.get("ports")):
                yield str(allow.get("protocol")).lower(), low, high, cidrs
    elif resource_type == AZURE_NSG:
        for rule in _list(props.get("securityRules")):
            yield from _azure_inbound_allow(rule)
    elif resource_type == AZURE_SECURITY_RULE:
        yield from _azure_inbound_allow(props)


def _azure_inbound_allow(rule: Mapping[str, Any]) -> Iterator[tuple[str, Any, Any, list[str]]]:
    """An inbound Allow rule of an Azure network security group, once per destination port range; '*' is all."""
    if str(rule.get("direction")).lower() != "inbound" or str(rule.get("access")).lower() != "allow":
        return
    protocol = str(rule.get("protocol")).lower()
    sources = [rule["sourceAddressPrefix"]] if rule.get("sourceAddressPrefix") else []
    sources += _list(rule.get("sourceAddressPrefixes"))
    ports = [rule["destinationPortRange"]] if rule.get("destinationPortRange") else []
    ports += _list(rule.get("destinationPortRanges"))
    for low, high in _port_ranges(["0-65535" if port == "*" else port for port in ports]):
        yield "all" if protocol in ("*", "any") else protocol, low, high, sources


def _gcp_firewall_admits(props: Mapping[str, Any]) -> bool:
    """An enabled ingress rule: egress rules and disabled rules let nothing in."""
    return props.get("direction") in (None, "INGRESS") and not _truthy(props.get("disabled"))


def _port_ranges(ports: Any) -> list[tuple[int, int]]:
    """Google Cloud's and Azure's "22" and "1000-2000" port strings as ranges; a rule without ports opens them all."""
    ranges = []
    for spec in _list(ports):
        low, _, high = str(spec).partition("-")
        ranges.append((int(low), int(high or low)))
    return ranges or [(0, 65535)]


def _opens_admin_port(protocol: str, from_port: Any, to_port: Any) -> bool:
    protocol = protocol.lower()  # AWS takes "TCP" as well as "tcp"
    if protocol in ("-1", "all"):
        return True
    if protocol not in ("tcp", "6"):
        return False
    low = int(from_port) if from_port is not None else 0
    high = int(to_port) if to_port is not None else 65535
    return any(low <= port <= high for port in ADMIN_PORTS)


def _is_world(source: Any) -> bool:
    return source in WORLD_CIDRS or str(source).lower() in AZURE_WORLD_SOURCES


def check_no_world_admin_ingress(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS security groups, Google Cloud firewall rules and Azure security rules, through one list of ingress rules."""
    for protocol, from_port, to_port, cidrs in _ingress_rules(args.resource_type, args.props):
        world = [cidr for cidr in cidrs if _is_world(cidr)]
        if world and _opens_admin_port(protocol, from_port, to_port):
            report(
                f"ingress {protocol} {from_port}-{to_port} from {', '.join(world)} opens an admin port "
                f"({', '.join(map(str, ADMIN_PORTS))}) to the internet; narrow the source.",
                None,
            )


def _instance_types(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type in (LAUNCH_TEMPLATE, INSTANCE):
        return [props["instanceType"]] if props.get("instanceType") else []
    if resource_type == AUTOSCALING_GROUP:
        template = _dict(_dict(props.get("mixedInstancesPolicy")).get("launchTemplate"))
        return [o["instanceType"] for o in _list(template.get("overrides")) if o.get("instanceType")]
    if resource_type == EKS_NODE_GROUP:
        return [str(instance_type) for instance_type in _list(props.get("instanceTypes"))]
    return []


def _machine_types(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type in (GCP_INSTANCE_TEMPLATE, GCP_INSTANCE):
        return [props["machineType"]] if props.get("machineType") else []
    if resource_type == GCP_GROUP_MANAGER:
        selections = _dict(props.get("instanceFlexibilityPolicy")).get("instanceSelections")
        return [
            machine_type for selection in _list(selections) for machine_type in _list(selection.get("machineTypes"))
        ]
    return []


def _vm_sizes(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type == AZURE_VM:
        size = _dict(props.get("hardwareProfile")).get("vmSize")
        return [size] if size else []
    if resource_type == AZURE_SCALE_SET:
        # A scale set of several sizes has the sku "Mix" and lists the sizes in its skuProfile.
        sku = _dict(props.get("sku")).get("name")
        sizes = [sku] if sku and sku != "Mix" else []
        return sizes + [
            size["name"] for size in _list(_dict(props.get("skuProfile")).get("vmSizes")) if size.get("name")
        ]
    return []


def _azure_series(size: str) -> str | None:
    match = AZURE_SIZE.fullmatch(size)
    return f"{match[1]}{match[2]}_{match[3]}" if match else None


def check_gpu_instance_families(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS types are `<family>.<size>`, Google Cloud's `<family>-<rest>`, Azure's AZURE_SIZE; fallbacks count too."""
    for instance_type in _instance_types(args.resource_type, args.props):
        if str(instance_type).rsplit(".", 1)[0] not in GPU_FAMILIES:
            report(f"{instance_type} is not an NVIDIA GPU type ({', '.join(sorted(GPU_FAMILIES))}).", None)
    for machine_type in _machine_types(args.resource_type, args.props):
        if str(machine_type).split("-", 1)[0] not in GCP_GPU_FAMILIES:
            families = ", ".join(sorted(GCP_GPU_FAMILIES))
            report(f"{machine_type} is not an NVIDIA GPU machine type ({families}).", None)
    for size in _vm_sizes(args.resource_type, args.props):
        if _azure_series(str(size)) not in AZURE_GPU_SERIES:
            report(f"{size} is not an NVIDIA GPU size ({', '.join(sorted(AZURE_GPU_SERIES))}).", None)


def _decoded(encoded: Any) -> str:
    """Base64 user data as text, gunzipped where gzipped; what is not base64 stays as it is."""
    try:
        raw = base64.b64decode(str(encoded), validate=True)
    except binascii.Error:
        return str(encoded)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", "replace")


def _aws_user_data(resource_type: str, props: Mapping[str, Any]) -> str | None:
    if resource_type == LAUNCH_TEMPLATE:
        encoded = props.get("userData")
    elif resource_type == INSTANCE:
        if props.get("userData"):
            return str(props["userData"])
        encoded = props.get("userDataBase64")
    else:
        return None
    return _decoded(encoded) if encoded else None


def _user_data(resource_type: str, props: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, text) of every boot script a resource hands its instances; only Google Cloud's are plain text."""
    text = _aws_user_data(resource_type, props)
    if text is not None:
        yield "user data", text
    if resource_type in (GCP_INSTANCE_TEMPLATE, GCP_INSTANCE):
        metadata = _dict(props.get("metadata"))
        for key in ("user-data", "startup-script"):
            if metadata.get(key):
                yield f"metadata {key}", str(metadata[key])
        if props.get("metadataStartupScript"):
            yield "metadataStartupScript", str(props["metadataStartupScript"])
    profile = _azure_vm_profile(resource_type, props)
    if profile is not None:
        custom_data = _dict(profile.get("osProfile")).get("customData")
        if custom_data:
            yield "osProfile.customData", _decoded(custom_data)
        if profile.get("userData"):
            yield "userData", _decoded(profile["userData"])


def check_no_secrets_in_user_data(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Boot scripts on every cloud; on Azure also the admin password, a secret the VM's definition would carry."""
    for where, text in _user_data(args.resource_type, args.props):
        for what, pattern in SECRET_PATTERNS.items():
            if pattern.search(text):
                report(f"{where} contains {what}; deliver secrets through Vault or the KMS key instead.", None)
    profile = _azure_vm_profile(args.resource_type, args.props)
    if profile is not None and _dict(profile.get("osProfile")).get("adminPassword"):
        report("osProfile.adminPassword is set; use SSH keys; no password.", None)


def _state_secret_problem(resource_type: str, props: Mapping[str, Any]) -> str | None:
    if resource_type == TLS_PRIVATE_KEY:
        return "a pulumi-tls private key is kept in the state; let Vault's PKI engine generate keys (stacks/tls.py)"
    if resource_type in KV_SECRET_TYPES and (props.get("dataJson") or props.get("data")):
        return "a Vault secret written by Pulumi keeps its data in the state; write secrets outside Pulumi"
    if resource_type == PKI_ROOT_CERT and props.get("type") not in (None, "internal"):
        return f"a root CA of type {props.get('type')!r} hands its key out; use type 'internal' (it stays in Vault)"
    if resource_type == PKI_ISSUED_CERT:
        return "a certificate Pulumi issues keeps its private key in the state; let the node issue its own"
    if resource_type == VAULT_PROVIDER and props.get("token"):
        return "the Vault provider's token is kept in the state; give it VAULT_TOKEN in the environment instead"
    if resource_type in CREDENTIAL_TYPES:
        return (f"{CREDENTIAL_TYPES[resource_type]} made by Pulumi is kept in the state; the nodes log in with their "
                "cloud identity and need none")
    return None


def check_no_secret_in_state(args: ResourceValidationArgs, report: ReportViolation) -> None:
    problem = _state_secret_problem(args.resource_type, args.props)
    if problem is not None:
        report(f"{problem}.", None)


def _tags(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any]:
    if resource_type == AUTOSCALING_GROUP:
        return {tag.get("key"): tag.get("value") for tag in _list(props.get("tags"))}
    return _dict(props.get("tags"))


def check_required_tags(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS and Azure tags, Google Cloud labels: two lists of keys because label keys cannot contain ':'."""
    if args.resource_type in TAGGABLE_TYPES or args.resource_type in AZURE_TAGGED_TYPES:
        kind, required, carried = "tags", REQUIRED_TAGS, _tags(args.resource_type, args.props)
    elif args.resource_type in GCP_LABELED_TYPES:
        kind, required, carried = "labels", REQUIRED_LABELS, _dict(args.props.get("labels"))
    else:
        return
    missing = [key for key in required if not carried.get(key)]
    if missing:
        report(f"missing required {kind}: {', '.join(missing)}.", None)


def _shared_tier_problems(resource_type: str, props: Mapping[str, Any]) -> Iterator[str]:
    if resource_type == ELASTICACHE_GROUP:
        if not _truthy(props.get("transitEncryptionEnabled")):
            yield "requires TLS in transit (transitEncryptionEnabled)"
        elif props.get("transitEncryptionMode") not in (None, "required"):
            mode = props.get("transitEncryptionMode")
            yield f"requires TLS in transit; transitEncryptionMode {mode!r} also admits plain text, use 'required'"
        if not props.get("userGroupIds"):
            yield (
                "admits clients through a user group (userGroupIds); without one the built-in default user "
                "has full access and no password"
            )
        if not _truthy(props.get("atRestEncryptionEnabled")) or not props.get("kmsKeyId"):
            yield "encrypts at rest with a customer-managed key (atRestEncryptionEnabled and kmsKeyId)"
        if props.get("authToken") or props.get("authTokenWoVersion"):
            yield "carries no AUTH token: users that IAM authenticates"
    elif resource_type == ELASTICACHE_USER:
        mode = _dict(props.get("authenticationMode")).get("type")
        if props.get("passwords") or _dict(props.get("authenticationMode")).get("passwords") or mode == "password":
            yield "has no password: IAM authentication"
        if mode == "no-password-required" and not str(props.get("accessString", "")).startswith("off"):
            yield "without a password is switched off (access string 'off ...')"
    elif resource_type == GCP_MEMORYSTORE:
        if props.get("transitEncryptionMode") != "SERVER_AUTHENTICATION":
            yield "requires TLS in transit (transitEncryptionMode SERVER_AUTHENTICATION)"
        if props.get("authorizationMode") != "IAM_AUTH":
            yield "authenticates clients by IAM (authorizationMode IAM_AUTH)"
    elif resource_type == AZURE_REDIS:
        if _truthy(props.get("enableNonSslPort")):
            yield "has no plain-text port (enableNonSslPort false)"
        if props.get("minimumTlsVersion") != "1.2":
            yield "accepts TLS 1.2 and later only (minimumTlsVersion 1.2)"
        if not _truthy(props.get("disableAccessKeyAuthentication")):
            yield "has no access keys (disableAccessKeyAuthentication true)"
        if str(_dict(props.get("redisConfiguration")).get("aadEnabled", "")).lower() != "true":
            yield "authenticates clients with Entra ID (redisConfiguration.aadEnabled)"


def check_shared_tier(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for problem in _shared_tier_problems(args.resource_type, args.props):
        report(f"the shared tier {problem}.", None)


def _policy(name: str, description: str, validate: Callable[..., None]) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


POLICIES = [
    _policy(
        "ebs-encrypted-with-customer-key",
        "AWS: every EBS volume is encrypted with a customer-managed KMS key, an EKS node group's through its launch "
        "template; a launch template maps the root device (else the AMI's root volume goes unencrypted or under "
        "the default key), and launch configurations, which cannot name a key, are refused. "
        "Google Cloud: every persistent disk of a template, instance or Disk, and every GKE node's boot disk (a node "
        "pool or standard cluster without nodeConfig included), is encrypted with a Cloud KMS key. "
        "Azure: the OS disk and every data disk of a VM or scale set, and every Disk, are encrypted through a disk "
        "encryption set (a customer-managed key), and so are every AKS cluster's node disks (diskEncryptionSetID).",
        check_volumes_encrypted,
    ),
    _policy(
        "kms-key-rotation",
        "AWS: symmetric KMS keys rotate automatically. "
        "Google Cloud: symmetric Cloud KMS keys have a rotationPeriod of 365 days at most. "
        "Azure: Key Vault keys have a rotation policy that rotates them within 365 days, and Key Vaults have purge "
        "protection on.",
        check_kms_rotation,
    ),
    _policy(
        "imdsv2-required",
        "AWS: instances, launch templates and launch configurations require IMDSv2 tokens, hop limit 2 at most; EKS "
        "node groups get them from a launch template. "
        "Google Cloud and Azure: nothing to check, their metadata servers always require a header "
        "(Metadata-Flavor, Metadata: true).",
        check_imdsv2,
    ),
    _policy(
        "no-world-admin-ingress",
        "No ingress from anywhere (0.0.0.0/0, ::/0; on Azure also *, Any, Internet) on admin ports (SSH, RDP): "
        "AWS security groups and their rules (any protocol case), enabled Google Cloud ingress firewall rules (one "
        "without sourceRanges, sourceTags or sourceServiceAccounts admits every source), inbound Allow rules of "
        "Azure network security groups.",
        check_no_world_admin_ingress,
    ),
    _policy(
        "gpu-instance-families",
        "Only NVIDIA GPU types run the node, fallback types and EKS node groups' types included: "
        f"AWS {', '.join(sorted(GPU_FAMILIES))}; "
        f"Google Cloud {', '.join(sorted(GCP_GPU_FAMILIES))}; Azure {', '.join(sorted(AZURE_GPU_SERIES))}.",
        check_gpu_instance_families,
    ),
    _policy(
        "no-secrets-in-user-data",
        "Boot scripts hold no private key, access key, Vault token or password: AWS user data; Google Cloud "
        "metadata user-data, startup-script and metadataStartupScript; Azure customData and userData, and Azure VMs "
        "set no admin password.",
        check_no_secrets_in_user_data,
    ),
    _policy(
        "no-secret-in-state",
        "Pulumi's state holds no private key or secret: no pulumi-tls private key, no Vault KV or generic secret "
        "with data, no Vault PKI root CA other than internal (its key stays in Vault), no certificate issued by "
        "Pulumi (its key would be in the state), no token given to the Vault provider, no credential made by Pulumi "
        "(Vault tokens and AppRole secret ids, cloud access keys, service account keys, passwords).",
        check_no_secret_in_state,
    ),
    _policy(
        "shared-tier-tls-and-identity",
        "The scale-out shared tier speaks TLS only and admits clients by their cloud identity, never a password: "
        "AWS ElastiCache replication groups require TLS (transitEncryptionMode required, never preferred), encrypt "
        "at rest with a customer-managed key, carry no AUTH token and admit clients through a user group, whose "
        "users authenticate by IAM (a user without a password is switched off); Google "
        "Cloud Memorystore instances use SERVER_AUTHENTICATION and IAM_AUTH; Azure Cache for Redis has no plain "
        "port, TLS 1.2 and later, no access keys and Entra ID authentication.",
        check_shared_tier,
    ),
    _policy(
        "required-tags",
        f"AWS and Azure tagged resources carry the tags {', '.join(REQUIRED_TAGS)}; Google Cloud labeled resources "
        f"carry the labels {', '.join(REQUIRED_LABELS)}.",
        check_required_tags,
    ),
]
