"""Foresight's AWS and Google Cloud guardrails as pulumi_policy resource policies, one function and one policy
per rule: each check knows every cloud's resource types, so a rule lives in one place and holds on both clouds.

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
MAX_KMS_ROTATION_SECONDS = 365 * 24 * 60 * 60
# x86_64 NVIDIA families of the Deep Learning Base GPU AMI (kept equal to stacks/aws/compute.py by a test).
GPU_FAMILIES = frozenset({"g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200"})
# NVIDIA GPU machine families on Google Cloud (kept equal to stacks/gcp/compute.py by a test).
GCP_GPU_FAMILIES = frozenset({"a2", "a3", "g2"})
AWS_MANAGED_EBS_KEYS = ("alias/aws/ebs",)

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
KMS_KEY = "aws:kms/key:Key"
AUTOSCALING_GROUP = "aws:autoscaling/group:Group"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
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
    }
)
GCP_INSTANCE_TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
GCP_INSTANCE = "gcp:compute/instance:Instance"
GCP_DISK = "gcp:compute/disk:Disk"
GCP_CRYPTO_KEY = "gcp:kms/cryptoKey:CryptoKey"
GCP_GROUP_MANAGER = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
GCP_FIREWALL = "gcp:compute/firewall:Firewall"
GCP_LABELED_TYPES = frozenset(
    {
        GCP_CRYPTO_KEY,
        GCP_DISK,
        GCP_INSTANCE,
        GCP_INSTANCE_TEMPLATE,
        "gcp:compute/address:Address",
        "gcp:compute/forwardingRule:ForwardingRule",
    }
)
# Cloud KMS rotation periods: seconds with up to nine fractional digits, then 's' ("7776000s").
KMS_DURATION = re.compile(r"(\d+(?:\.\d{1,9})?)s")
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


def check_volumes_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS volumes need a customer-managed KMS key; Google Cloud disks without a Cloud KMS key use Google's."""
    for what, ebs in _volumes(args.resource_type, args.props):
        problem = _ebs_problem(ebs)
        if problem:
            report(f"{what} {problem}.", None)
    for what, key_property, key in _gcp_disks(args.resource_type, args.props):
        if not key:
            report(f"{what} is encrypted with Google's default key; set {key_property} to a Cloud KMS key.", None)


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


def check_kms_rotation(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Only symmetric encryption keys rotate on their own, on AWS and on Google Cloud alike."""
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


def check_imdsv2(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS only: Google Cloud has no IMDSv1 to turn off, its metadata server always requires Metadata-Flavor."""
    if args.resource_type not in (LAUNCH_TEMPLATE, INSTANCE):
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
        for allow in _list(props.get("allows")):
            for low, high in _port_ranges(allow.get("ports")):
                yield str(allow.get("protocol")).lower(), low, high, cidrs


def _gcp_firewall_admits(props: Mapping[str, Any]) -> bool:
    """An enabled ingress rule: egress rules and disabled rules let nothing in."""
    return props.get("direction") in (None, "INGRESS") and not _truthy(props.get("disabled"))


def _port_ranges(ports: Any) -> list[tuple[int, int]]:
    """Google Cloud's "22" and "1000-2000" port strings as ranges; a rule without ports opens them all."""
    ranges = []
    for spec in _list(ports):
        low, _, high = str(spec).partition("-")
        ranges.append((int(low), int(high or low)))
    return ranges or [(0, 65535)]


def _opens_admin_port(protocol: str, from_port: Any, to_port: Any) -> bool:
    if protocol in ("-1", "all"):
        return True
    if protocol not in ("tcp", "6"):
        return False
    low = int(from_port) if from_port is not None else 0
    high = int(to_port) if to_port is not None else 65535
    return any(low <= port <= high for port in ADMIN_PORTS)


def check_no_world_admin_ingress(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS security groups and their rules, and Google Cloud firewall rules, through one list of ingress rules."""
    for protocol, from_port, to_port, cidrs in _ingress_rules(args.resource_type, args.props):
        world = [cidr for cidr in cidrs if cidr in WORLD_CIDRS]
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


def check_gpu_instance_families(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS types are `<family>.<size>`, Google Cloud machine types `<family>-<rest>`; fallback types count too."""
    for instance_type in _instance_types(args.resource_type, args.props):
        if str(instance_type).rsplit(".", 1)[0] not in GPU_FAMILIES:
            report(f"{instance_type} is not an NVIDIA GPU type ({', '.join(sorted(GPU_FAMILIES))}).", None)
    for machine_type in _machine_types(args.resource_type, args.props):
        if str(machine_type).split("-", 1)[0] not in GCP_GPU_FAMILIES:
            families = ", ".join(sorted(GCP_GPU_FAMILIES))
            report(f"{machine_type} is not an NVIDIA GPU machine type ({families}).", None)


def _aws_user_data(resource_type: str, props: Mapping[str, Any]) -> str | None:
    if resource_type == LAUNCH_TEMPLATE:
        encoded = props.get("userData")
    elif resource_type == INSTANCE:
        if props.get("userData"):
            return str(props["userData"])
        encoded = props.get("userDataBase64")
    else:
        return None
    if not encoded:
        return None
    try:
        raw = base64.b64decode(str(encoded), validate=True)
    except binascii.Error:
        return str(encoded)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", "replace")


def _user_data(resource_type: str, props: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, text) of every boot script a resource hands its instances; Google Cloud's are plain text."""
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


def check_no_secrets_in_user_data(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for where, text in _user_data(args.resource_type, args.props):
        for what, pattern in SECRET_PATTERNS.items():
            if pattern.search(text):
                report(f"{where} contains {what}; deliver secrets through Vault or the KMS key instead.", None)


def _tags(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any]:
    if resource_type == AUTOSCALING_GROUP:
        return {tag.get("key"): tag.get("value") for tag in _list(props.get("tags"))}
    return _dict(props.get("tags"))


def check_required_tags(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """AWS tags and Google Cloud labels: two lists of keys because label keys cannot contain ':'."""
    if args.resource_type in TAGGABLE_TYPES:
        kind, required, carried = "tags", REQUIRED_TAGS, _tags(args.resource_type, args.props)
    elif args.resource_type in GCP_LABELED_TYPES:
        kind, required, carried = "labels", REQUIRED_LABELS, _dict(args.props.get("labels"))
    else:
        return
    missing = [key for key in required if not carried.get(key)]
    if missing:
        report(f"missing required {kind}: {', '.join(missing)}.", None)


def _policy(name: str, description: str, validate: Callable[..., None]) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


POLICIES = [
    _policy(
        "ebs-encrypted-with-customer-key",
        "AWS: every EBS volume is encrypted with a customer-managed KMS key. "
        "Google Cloud: every persistent disk of a template, instance or Disk is encrypted with a Cloud KMS key.",
        check_volumes_encrypted,
    ),
    _policy(
        "kms-key-rotation",
        "AWS: symmetric KMS keys rotate automatically. "
        "Google Cloud: symmetric Cloud KMS keys have a rotationPeriod of 365 days at most.",
        check_kms_rotation,
    ),
    _policy(
        "imdsv2-required",
        "AWS: instances require IMDSv2 tokens, hop limit 2 at most. "
        "Google Cloud: nothing to check, its metadata server always requires the Metadata-Flavor header.",
        check_imdsv2,
    ),
    _policy(
        "no-world-admin-ingress",
        "No ingress from 0.0.0.0/0 or ::/0 on admin ports (SSH, RDP): AWS security groups and their rules, "
        "enabled Google Cloud ingress firewall rules.",
        check_no_world_admin_ingress,
    ),
    _policy(
        "gpu-instance-families",
        f"Only NVIDIA GPU types run the node, fallback types included: AWS {', '.join(sorted(GPU_FAMILIES))}; "
        f"Google Cloud {', '.join(sorted(GCP_GPU_FAMILIES))}.",
        check_gpu_instance_families,
    ),
    _policy(
        "no-secrets-in-user-data",
        "Boot scripts hold no private key, access key, Vault token or password: AWS user data; Google Cloud "
        "metadata user-data, startup-script and metadataStartupScript.",
        check_no_secrets_in_user_data,
    ),
    _policy(
        "required-tags",
        f"AWS taggable resources carry the tags {', '.join(REQUIRED_TAGS)}; Google Cloud labeled resources "
        f"carry the labels {', '.join(REQUIRED_LABELS)}.",
        check_required_tags,
    ),
]
