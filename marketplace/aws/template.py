"""The AWS Marketplace "AMI with CloudFormation" template: one Foresight GPU node, built from the AWS stack's parts.

Ports, GPU families, volume layout, IMDS settings, the node's KMS actions and key policy come from `stacks/`,
so the template cannot drift from `foresight:aws:GpuNode`. Where it differs, it is because a marketplace buyer
has no Vault and runs one node:
- a single instance (from a launch template: IMDSv2, every volume encrypted with the stack's KMS key) instead of
  an Auto Scaling group, and no load balancer: the node keeps its state (certificate, tenants file, data volume)
  on its own volumes, so a replacement would mint a new key and certificate;
- one public subnet and an Elastic IP instead of private subnets behind a NAT gateway and a load balancer: the
  address survives stop/start, the certificate names it, and the security group admits the service ports (and
  SSH, only with a key pair and never from 0.0.0.0/0) from `AllowedCidr` alone; the node may leave only to HTTPS;
- TLS and the first API key are minted on the instance at first boot (`marketplace/first_boot.sh`,
  `first_boot.py`); the key reaches the buyer through a Secrets Manager secret encrypted with the same key,
  the role's only write.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

from annotated_types import Ge, Le

from marketplace.first_boot import CONF_DIR
from marketplace.launch import CIDR_PATTERN, PLACEHOLDER, SSH_OFF, cloud_config
from service.tenancy import TENANT_NAME_PATTERN
from stacks.aws.compute import (
    DATA_DEVICE,
    DATA_DISK_MODEL,
    GPU_FAMILIES,
    METADATA_HOP_LIMIT,
    ROOT_DEVICE,
    ROOT_VOLUME_GB,
    instance_family,
)
from stacks.aws.identity import KMS_ACTIONS, SSM_CORE_POLICY, audit_shipping_statements, origin_read_statements
from stacks.aws.kms import key_policy
from stacks.aws.network import OWN_VPC_CIDR, SSH_PORT, WORLD
from stacks.cloudinit import DATA_DIR
from stacks.spec import (
    AUDIT_FOLDER,
    BUCKET_PATTERNS,
    DEFAULT_INSTANCE_TYPES,
    DEFAULT_VOLUME_SIZE_GB,
    HTTPS_PORT,
    RESP_PORT,
    SERVICE_PORTS,
    Cloud,
    StackSpec,
)

SUBNET_BITS = 12  # one /20, the size of the stack's subnets
VPC_CIDR_PATTERN = CIDR_PATTERN.removesuffix(r"/(3[0-2]|[12]?[0-9])$") + r"/(1[6-9]|20)$"
# The stack's key-policy statements for its Auto Scaling group; a single instance has none.
_AUTOSCALING_SIDS = frozenset({"AutoScalingEncryptsVolumes", "AutoScalingGrantsVolumeAttachments"})
AUDIT_PREFIX = f"{AUDIT_FOLDER}/${{AWS::StackName}}"  # the stacks' foresight/<project>-<stack>, for this stack


def instance_types() -> list[str]:
    """Every EC2 type botocore knows whose family the stack accepts (`GPU_FAMILIES`), default first."""
    import botocore.session

    known = botocore.session.get_session().get_service_model("ec2").shape_for("InstanceType").enum
    default = DEFAULT_INSTANCE_TYPES[Cloud.AWS]
    return [default, *sorted(t for t in known if instance_family(t) in GPU_FAMILIES and t != default)]


def service_environment() -> dict[str, str]:
    """foresight.env for a node without Vault: its own TLS files and tenants file, data keys wrapped by AWS KMS."""
    return {
        "FORESIGHT_TLS_CERT_FILE": f"{CONF_DIR}/tls.crt",
        "FORESIGHT_TLS_KEY_FILE": f"{CONF_DIR}/tls.key",
        "FORESIGHT_TENANTS_FILE": f"{CONF_DIR}/tenants.json",
        "FORESIGHT_KMS_PROVIDER": "aws",
        "FORESIGHT_KMS_KEY_ID": "@@KeyArn@@",
        "FORESIGHT_DATA_DIR": DATA_DIR,
        "AWS_REGION": "@@Region@@",
        "AWS_DEFAULT_REGION": "@@Region@@",
        "FORESIGHT_AUDIT_SHIP_URL": "@@AuditShipUrl@@",  # empty (no AuditBucket): the trail stays on the node
    }


def user_data_text() -> str:
    """The `#cloud-config` document with `@@Name@@` where a stack value goes (see `_intrinsics`)."""
    options = {"--secret-arn": "SecretArn", "--tenant": "Tenant", "--public-ip": "PublicIp"}
    return cloud_config("aws", service_environment(), DATA_DISK_MODEL, options)


def render(version: str | None = None) -> dict[str, Any]:
    """The CloudFormation template (a JSON-able dict) for `foresight marketplace build`."""
    version = version or importlib.metadata.version("foresight")
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"Foresight {version}: a Redis-compatible GPU cache with a learned prefetcher, on one node",
        "Metadata": {"AWS::CloudFormation::Interface": _interface(), "Foresight": {"Version": version}},
        "Parameters": _parameters(),
        "Conditions": {
            "HasKeyName": {"Fn::Not": [{"Fn::Equals": [{"Ref": "KeyName"}, ""]}]},
            "HasAuditBucket": {"Fn::Not": [{"Fn::Equals": [{"Ref": "AuditBucket"}, ""]}]},
            "HasOriginBuckets": {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "OriginBuckets"}]}, ""]}]},
            **{condition: {"Fn::Equals": [{"Ref": "AWS::Partition"}, partition]}
               for condition, partition in OTHER_PARTITIONS.items()},
            "SshAllowed": {
                "Fn::And": [
                    {"Condition": "HasKeyName"},
                    {"Fn::Not": [{"Fn::Equals": [{"Ref": "AllowedCidr"}, str(WORLD)]}]},
                ]
            },
        },
        "Resources": {**_network(), **_key_and_secret(), **_identity(), **_compute()},
        "Outputs": _outputs(),
    }


def _parameters() -> dict[str, Any]:
    volume = StackSpec.model_fields["volume_size_gb"].metadata
    return {
        "ImageId": {
            "Type": "AWS::EC2::Image::Id",
            "Description": "The Foresight AMI of this listing (AWS Marketplace fills it in)",
        },
        "InstanceType": {
            "Type": "String",
            "Default": DEFAULT_INSTANCE_TYPES[Cloud.AWS],
            "AllowedValues": instance_types(),
            "Description": "An NVIDIA GPU instance type; the zone below must offer it",
        },
        "AvailabilityZone": {
            "Type": "AWS::EC2::AvailabilityZone::Name",
            "Description": "A zone of this region that offers the instance type",
        },
        "VolumeSizeGb": {
            "Type": "Number",
            "Default": DEFAULT_VOLUME_SIZE_GB,
            "MinValue": next(m.ge for m in volume if isinstance(m, Ge)),
            "MaxValue": next(m.le for m in volume if isinstance(m, Le)),
            "Description": "Size of the encrypted data volume (snapshots, audit log), GiB",
        },
        "AllowedCidr": {
            "Type": "String",
            "AllowedPattern": CIDR_PATTERN,
            "ConstraintDescription": "an IPv4 CIDR such as 203.0.113.0/24",
            "Description": f"The only range that may reach ports {', '.join(map(str, SERVICE_PORTS))} (and SSH)",
        },
        "KeyName": {
            "Type": "String",
            "Default": "",
            "Description": "Optional EC2 key pair for SSH from AllowedCidr (never from 0.0.0.0/0); empty: no SSH",
        },
        "VpcCidr": {
            "Type": "String",
            "Default": str(OWN_VPC_CIDR),
            "AllowedPattern": VPC_CIDR_PATTERN,
            "ConstraintDescription": "an IPv4 CIDR of /16 to /20",
            "Description": "Address range of the VPC this stack creates",
        },
        "AuditBucket": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": f"^$|{BUCKET_PATTERNS[Cloud.AWS].pattern}",
            "ConstraintDescription": "an S3 bucket name, or empty",
            "Description": "Optional existing S3 bucket for the audit trail (give it object lock): rotated audit files "
            "go to foresight/<stack name>/, and the node deletes one only once its copy is there. Empty: kept on "
            "the node only",
        },
        "OriginBuckets": {
            "Type": "CommaDelimitedList",
            "Default": "",
            "AllowedPattern": f"^$|{BUCKET_PATTERNS[Cloud.AWS].pattern}",
            "ConstraintDescription": "S3 bucket names separated by commas, or empty",
            "Description": "Optional existing S3 buckets the tenants' origins live in, separated by commas: the node "
            "may read and list them, nothing more. Empty: grant NodeRoleArn read yourself",
        },
        "TenantName": {
            "Type": "String",
            "Default": "default",
            "AllowedPattern": TENANT_NAME_PATTERN,
            "ConstraintDescription": "a DNS label: lowercase letters, digits and '-'",
            "Description": "The first tenant; its API key goes into the secret this stack creates",
        },
    }


def _interface() -> dict[str, Any]:
    groups = [
        ("Instance", ["ImageId", "InstanceType", "AvailabilityZone", "VolumeSizeGb"]),
        ("Access", ["AllowedCidr", "KeyName", "VpcCidr"]),
        ("Service", ["TenantName", "AuditBucket", "OriginBuckets"]),
    ]
    labels = {
        "ImageId": "Foresight AMI",
        "InstanceType": "GPU instance type",
        "AvailabilityZone": "Availability zone",
        "VolumeSizeGb": "Data volume size (GiB)",
        "AllowedCidr": "Allowed client CIDR",
        "KeyName": "SSH key pair (optional)",
        "VpcCidr": "VPC CIDR",
        "TenantName": "First tenant",
        "AuditBucket": "Audit trail bucket (optional)",
        "OriginBuckets": "Origin buckets (optional)",
    }
    return {
        "ParameterGroups": [{"Label": {"default": label}, "Parameters": names} for label, names in groups],
        "ParameterLabels": {name: {"default": label} for name, label in labels.items()},
    }


def _name(suffix: str) -> list[dict[str, Any]]:
    return [{"Key": "Name", "Value": {"Fn::Sub": f"${{AWS::StackName}}-{suffix}"}}]


def _network() -> dict[str, Any]:
    ingress = [
        {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "CidrIp": {"Ref": "AllowedCidr"},
            "Description": f"Foresight port {port} from the allowed CIDR",
        }
        for port in SERVICE_PORTS
    ]
    return {
        "Vpc": {
            "Type": "AWS::EC2::VPC",
            "Properties": {
                "CidrBlock": {"Ref": "VpcCidr"},
                "EnableDnsHostnames": True,
                "EnableDnsSupport": True,
                "Tags": _name("vpc"),
            },
        },
        "InternetGateway": {"Type": "AWS::EC2::InternetGateway", "Properties": {"Tags": _name("igw")}},
        "GatewayAttachment": {
            "Type": "AWS::EC2::VPCGatewayAttachment",
            "Properties": {"VpcId": {"Ref": "Vpc"}, "InternetGatewayId": {"Ref": "InternetGateway"}},
        },
        "Subnet": {
            "Type": "AWS::EC2::Subnet",
            "Properties": {
                "VpcId": {"Ref": "Vpc"},
                "AvailabilityZone": {"Ref": "AvailabilityZone"},
                "CidrBlock": {"Fn::Select": [0, {"Fn::Cidr": [{"Ref": "VpcCidr"}, 1, SUBNET_BITS]}]},
                "MapPublicIpOnLaunch": False,
                "Tags": _name("public"),
            },
        },
        "RouteTable": {
            "Type": "AWS::EC2::RouteTable",
            "Properties": {"VpcId": {"Ref": "Vpc"}, "Tags": _name("public")},
        },
        "DefaultRoute": {
            "Type": "AWS::EC2::Route",
            "DependsOn": "GatewayAttachment",
            "Properties": {
                "RouteTableId": {"Ref": "RouteTable"},
                "DestinationCidrBlock": str(WORLD),
                "GatewayId": {"Ref": "InternetGateway"},
            },
        },
        "SubnetRoutes": {
            "Type": "AWS::EC2::SubnetRouteTableAssociation",
            "Properties": {"SubnetId": {"Ref": "Subnet"}, "RouteTableId": {"Ref": "RouteTable"}},
        },
        "SecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "Foresight: service ports from the allowed CIDR only; out to HTTPS only",
                "VpcId": {"Ref": "Vpc"},
                "SecurityGroupIngress": ingress,
                "SecurityGroupEgress": [
                    {
                        "IpProtocol": "tcp",
                        "FromPort": 443,
                        "ToPort": 443,
                        "CidrIp": str(WORLD),
                        "Description": "HTTPS out (Secrets Manager, KMS, SSM, origins)",
                    }
                ],
                "Tags": _name("node"),
            },
        },
        "SshIngress": {
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Condition": "SshAllowed",
            "Properties": {
                "GroupId": {"Ref": "SecurityGroup"},
                "IpProtocol": "tcp",
                "FromPort": SSH_PORT,
                "ToPort": SSH_PORT,
                "CidrIp": {"Ref": "AllowedCidr"},
                "Description": "break-glass SSH from the allowed CIDR",
            },
        },
    }


def _sub_strings(value: Any) -> Any:
    """The stack's policy with `${...}` strings as Fn::Sub, so CloudFormation fills in what Pulumi knew."""
    if isinstance(value, dict):
        return {key: _sub_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_sub_strings(item) for item in value]
    return {"Fn::Sub": value} if isinstance(value, str) and "${" in value else value


def node_key_policy() -> dict[str, Any]:
    """The stack's key policy (account administers, node role uses), without its Auto Scaling statements."""
    policy = json.loads(key_policy("${AWS::Partition}", "${AWS::AccountId}", "${NodeRole.Arn}"))
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] not in _AUTOSCALING_SIDS]
    return dict(_sub_strings(policy))


def _key_and_secret() -> dict[str, Any]:
    return {
        "Key": {
            "Type": "AWS::KMS::Key",
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Delete",
            "Properties": {
                "Description": {
                    "Fn::Sub": "Foresight stack ${AWS::StackName}: EBS volumes, data keys, the API key secret"
                },
                "KeySpec": "SYMMETRIC_DEFAULT",
                "KeyUsage": "ENCRYPT_DECRYPT",
                "EnableKeyRotation": True,
                "PendingWindowInDays": 30,
                "KeyPolicy": node_key_policy(),
                "Tags": _name("key"),
            },
        },
        "KeyAlias": {
            "Type": "AWS::KMS::Alias",
            "Properties": {
                "AliasName": {"Fn::Sub": "alias/${AWS::StackName}-foresight"},
                "TargetKeyId": {"Ref": "Key"},
            },
        },
        "ApiKeySecret": {
            "Type": "AWS::SecretsManager::Secret",
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Delete",
            "Properties": {
                "Name": {"Fn::Sub": "${AWS::StackName}-foresight-api-key"},
                "Description": "Foresight: the first API key and the CA certificate, set at first boot",
                "KmsKeyId": {"Ref": "Key"},
                "Tags": _name("api-key"),
            },
        },
    }


def node_policy_statements() -> list[dict[str, Any]]:
    """The role's own statements: the stack's KMS actions on this key, and writing this one secret."""
    return [
        {
            "Sid": "UseTheStackKey",
            "Effect": "Allow",
            "Action": list(KMS_ACTIONS),
            "Resource": {"Fn::GetAtt": ["Key", "Arn"]},
        },
        {
            "Sid": "PutTheFirstApiKey",
            "Effect": "Allow",
            "Action": "secretsmanager:PutSecretValue",
            "Resource": {"Ref": "ApiKeySecret"},
        },
    ]


def _identity() -> dict[str, Any]:
    return {
        "NodeRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": "Foresight node: its KMS key, its API key secret, Session Manager",
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
                    ],
                },
                "ManagedPolicyArns": [{"Fn::Sub": f"arn:${{AWS::Partition}}:iam::aws:policy/{SSM_CORE_POLICY}"}],
                "Tags": _name("node"),
            },
        },
        # Its own resource: the key policy names the role and this policy names the key.
        "NodePolicy": {
            "Type": "AWS::IAM::RolePolicy",
            "Properties": {
                "RoleName": {"Ref": "NodeRole"},
                "PolicyName": "foresight-node",
                "PolicyDocument": {"Version": "2012-10-17", "Statement": node_policy_statements()},
            },
        },
        "AuditPolicy": {
            "Type": "AWS::IAM::RolePolicy",
            "Condition": "HasAuditBucket",
            "Properties": {
                "RoleName": {"Ref": "NodeRole"},
                "PolicyName": "foresight-audit",
                "PolicyDocument": {"Version": "2012-10-17", "Statement": audit_statements()},
            },
        },
        "OriginPolicy": {
            "Type": "AWS::IAM::RolePolicy",
            "Condition": "HasOriginBuckets",
            "Properties": {
                "RoleName": {"Ref": "NodeRole"},
                "PolicyName": "foresight-origins",
                "PolicyDocument": {"Version": "2012-10-17",
                                   "Statement": origin_read_statements(origin_arns("/*"), origin_arns(""))},
            },
        },
        "InstanceProfile": {"Type": "AWS::IAM::InstanceProfile", "Properties": {"Roles": [{"Ref": "NodeRole"}]}},
    }


def audit_statements() -> list[dict[str, Any]]:
    """The stacks' audit shipping statements (stacks.aws.identity), on this stack's folder of AuditBucket."""
    return audit_shipping_statements(
        {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::${{AuditBucket}}/{AUDIT_PREFIX}/*"},
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::${AuditBucket}"},
        {"Fn::Sub": f"{AUDIT_PREFIX}/*"},
    )


# The partitions besides `aws` a stack may run in, by the condition that tells: Fn::Join's delimiter takes no
# function, so each gets its own join (origin_arns).
OTHER_PARTITIONS = {"InAwsCn": "aws-cn", "InAwsUsGov": "aws-us-gov"}


def origin_arns(suffix: str) -> dict[str, Any]:
    """The ARN of each bucket OriginBuckets lists, with `suffix` (`/*`: its objects), in the stack's partition."""
    def joined(partition: str) -> dict[str, Any]:
        prefix = f"arn:{partition}:s3:::"
        names = {"Fn::Join": [f"{suffix},{prefix}", {"Ref": "OriginBuckets"}]}
        return {"Fn::Split": [",", {"Fn::Join": ["", [prefix, names, suffix]]}]}

    arns = joined("aws")
    for condition, partition in OTHER_PARTITIONS.items():
        arns = {"Fn::If": [condition, joined(partition), arns]}
    return arns


def _volume(device: str, size: Any) -> dict[str, Any]:
    return {
        "DeviceName": device,
        "Ebs": {
            "VolumeSize": size,
            "VolumeType": "gp3",
            "Encrypted": True,
            "KmsKeyId": {"Fn::GetAtt": ["Key", "Arn"]},
            "DeleteOnTermination": True,
        },
    }


def _intrinsics() -> dict[str, Any]:
    return {
        "KeyArn": {"Fn::GetAtt": ["Key", "Arn"]},
        "Region": {"Ref": "AWS::Region"},
        "SecretArn": {"Ref": "ApiKeySecret"},
        "Tenant": {"Ref": "TenantName"},
        "PublicIp": {"Fn::GetAtt": ["ElasticIp", "PublicIp"]},
        "SshOff": {"Fn::If": ["HasKeyName", "true", SSH_OFF]},
        "AuditShipUrl": {"Fn::If": ["HasAuditBucket", {"Fn::Sub": f"s3://${{AuditBucket}}/{AUDIT_PREFIX}"}, ""]},
    }


def user_data() -> dict[str, Any]:
    """`user_data_text()` as Fn::Base64 of Fn::Join, each placeholder replaced by its intrinsic."""
    intrinsics = _intrinsics()
    parts = PLACEHOLDER.split(user_data_text())
    joined = [intrinsics[part] if index % 2 else part for index, part in enumerate(parts) if part]
    return {"Fn::Base64": {"Fn::Join": ["", joined]}}


def _compute() -> dict[str, Any]:
    tags = [{"ResourceType": kind, "Tags": _name("node")} for kind in ("instance", "volume", "network-interface")]
    return {
        "LaunchTemplate": {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {
                "LaunchTemplateData": {
                    "ImageId": {"Ref": "ImageId"},
                    "InstanceType": {"Ref": "InstanceType"},
                    "IamInstanceProfile": {"Arn": {"Fn::GetAtt": ["InstanceProfile", "Arn"]}},
                    "KeyName": {"Fn::If": ["HasKeyName", {"Ref": "KeyName"}, {"Ref": "AWS::NoValue"}]},
                    "EbsOptimized": True,
                    "Monitoring": {"Enabled": True},
                    "MetadataOptions": {
                        "HttpEndpoint": "enabled",
                        "HttpTokens": "required",
                        "HttpPutResponseHopLimit": METADATA_HOP_LIMIT,
                        "InstanceMetadataTags": "disabled",
                    },
                    "BlockDeviceMappings": [
                        _volume(ROOT_DEVICE, ROOT_VOLUME_GB),
                        _volume(DATA_DEVICE, {"Ref": "VolumeSizeGb"}),
                    ],
                    "NetworkInterfaces": [
                        {
                            "DeviceIndex": 0,
                            "SubnetId": {"Ref": "Subnet"},
                            "Groups": [{"Ref": "SecurityGroup"}],
                            "AssociatePublicIpAddress": False,
                            "DeleteOnTermination": True,
                        }
                    ],
                    "UserData": user_data(),
                    "TagSpecifications": tags,
                },
            },
        },
        "Instance": {
            "Type": "AWS::EC2::Instance",
            # The role's policy must exist before first boot puts the key into the secret.
            "DependsOn": ["NodePolicy", "SubnetRoutes", "DefaultRoute"],
            "Properties": {
                "LaunchTemplate": {
                    "LaunchTemplateId": {"Ref": "LaunchTemplate"},
                    "Version": {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]},
                },
            },
        },
        "ElasticIp": {
            "Type": "AWS::EC2::EIP",
            "DependsOn": "GatewayAttachment",
            "Properties": {"Domain": "vpc", "Tags": _name("node")},
        },
        "ElasticIpAssociation": {
            "Type": "AWS::EC2::EIPAssociation",
            "Properties": {
                "AllocationId": {"Fn::GetAtt": ["ElasticIp", "AllocationId"]},
                "InstanceId": {"Ref": "Instance"},
            },
        },
    }


def _outputs() -> dict[str, Any]:
    host = "${ElasticIp.PublicIp}"
    return {
        "RespEndpoint": {
            "Description": "Redis protocol over TLS (AUTH with the API key)",
            "Value": {"Fn::Sub": f"rediss://{host}:{RESP_PORT}"},
        },
        "HttpsEndpoint": {"Description": "HTTPS API", "Value": {"Fn::Sub": f"https://{host}:{HTTPS_PORT}"}},
        "ApiKeySecretArn": {
            "Description": "Secret holding the API key and the CA certificate (a few minutes after "
            "the stack completes)",
            "Value": {"Ref": "ApiKeySecret"},
        },
        "ApiKeySecretConsoleUrl": {
            "Description": "Read the API key in the console",
            "Value": {
                "Fn::Sub": "https://${AWS::Region}.console.aws.amazon.com/secretsmanager/secret"
                "?name=${AWS::StackName}-foresight-api-key&region=${AWS::Region}"
            },
        },
        "GetApiKeyCommand": {
            "Description": "Read the API key with the AWS CLI",
            "Value": {
                "Fn::Sub": "aws secretsmanager get-secret-value --region ${AWS::Region} --secret-id "
                "${ApiKeySecret} --query SecretString --output text"
            },
        },
        "KmsKeyArn": {"Description": "The stack's KMS key", "Value": {"Fn::GetAtt": ["Key", "Arn"]}},
        "InstanceId": {"Description": "The node", "Value": {"Ref": "Instance"}},
        "NodeRoleArn": {
            "Description": "The node's role: grant it s3:GetObject and s3:ListBucket on each tenant's origin bucket "
            "that OriginBuckets does not list",
            "Value": {"Fn::GetAtt": ["NodeRole", "Arn"]},
        },
    }
