"""AWS compute: the launch template and the Auto Scaling group that keeps exactly one GPU node running.

Why an Auto Scaling group of one rather than a bare instance: it replaces the node when the instance or the
service fails (ELB health checks on HTTPS /healthz), it is how EC2 expresses spot with fallback types
(a mixed-instances policy tries `foresight:instanceType`, then each fallback), and it rolls the node when the
launch template changes. The load balancer in front gives the node a stable name for its certificate.

The AMI is the Deep Learning Base OSS NVIDIA Driver GPU AMI (Ubuntu 24.04: driver, Docker, NVIDIA container
toolkit), resolved from its public SSM parameter at deploy time. IMDSv2 only, hop limit 2 (the service
container reaches the instance role through the Docker bridge); root and data volumes gp3, encrypted with the
stack's KMS key.
"""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from stacks.aws.network import Endpoint, Network
from stacks.spec import ConfigError, StackSpec, config_key

AMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
# x86_64 NVIDIA families the AMI above supports (its release notes' supported_ec2_instances).
GPU_FAMILIES = frozenset({"g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200"})
ROOT_DEVICE = "/dev/sda1"  # the Ubuntu DLAMI's root device name
DATA_DEVICE = "/dev/sdf"
ROOT_VOLUME_GB = 100  # the AMI uses about 50 GB; the rest holds the service image
DATA_DISK_MODEL = "Amazon Elastic Block Store"
METADATA_HOP_LIMIT = 2
HEALTH_CHECK_GRACE_SECONDS = 1200  # first boot pulls a multi-GB CUDA image
USER_DATA_LIMIT_BYTES = 16 * 1024  # EC2 limit, before base64


def encode_user_data(text: str) -> str:
    """Base64 of the gzipped document (cloud-init inflates it); mtime 0 keeps it identical across runs."""
    packed = gzip.compress(text.encode(), mtime=0)
    if len(packed) > USER_DATA_LIMIT_BYTES:
        raise ValueError(f"user data is {len(packed)} bytes gzipped, over EC2's {USER_DATA_LIMIT_BYTES}")
    return base64.b64encode(packed).decode()


def instance_family(instance_type: str) -> str:
    return instance_type.rsplit(".", 1)[0]


def check_instance_types(spec: StackSpec) -> None:
    for key, types in (
        ("instanceType", [spec.instance_type]),
        ("fallbackInstanceTypes", spec.fallback_instance_types),
    ):
        for instance_type in types:
            if "." not in instance_type or instance_family(instance_type) not in GPU_FAMILIES:
                raise ConfigError.one(
                    config_key(key),
                    f"{instance_type!r} is not an NVIDIA GPU type; use one of the families "
                    f"{', '.join(sorted(GPU_FAMILIES))} (e.g. g6.xlarge)",
                )


@dataclass(frozen=True)
class NodeCompute:
    launch_template: aws.ec2.LaunchTemplate
    group: aws.autoscaling.Group
    key_pair: aws.ec2.KeyPair | None


def lookup_ami(parent: pulumi.Resource) -> str:
    """The current GPU AMI id from AWS's public SSM parameter (never a hard-coded id)."""
    return aws.ssm.get_parameter(name=AMI_PARAMETER, opts=pulumi.InvokeOptions(parent=parent)).value


def create_compute(
    name: str,
    spec: StackSpec,
    network: Network,
    endpoint: Endpoint,
    instance_profile_arn: pulumi.Input[str],
    key_arn: pulumi.Input[str],
    user_data: pulumi.Input[str],
    parent: pulumi.Resource,
) -> NodeCompute:
    opts = pulumi.ResourceOptions(parent=parent)
    tags = {**spec.tags(), "Name": f"{spec.name}-node"}
    key_pair = None
    if spec.ssh_public_key is not None:
        key_pair = aws.ec2.KeyPair(f"{name}-ssh", public_key=spec.ssh_public_key, tags=spec.tags(), opts=opts)

    def volume(device: str, size_gb: int) -> aws.ec2.LaunchTemplateBlockDeviceMappingArgs:
        return aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
            device_name=device,
            ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                volume_size=size_gb,
                volume_type="gp3",
                encrypted="true",
                kms_key_id=key_arn,
                delete_on_termination="true",
            ),
        )

    launch_template = aws.ec2.LaunchTemplate(
        f"{name}-node",
        description=f"Foresight GPU node of stack {spec.stack}",
        image_id=lookup_ami(parent),
        instance_type=spec.instance_type,
        iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=instance_profile_arn),
        key_name=key_pair.key_name if key_pair is not None else None,
        ebs_optimized="true",
        metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
            http_endpoint="enabled",
            http_tokens="required",
            http_put_response_hop_limit=METADATA_HOP_LIMIT,
            instance_metadata_tags="disabled",
        ),
        block_device_mappings=[volume(ROOT_DEVICE, ROOT_VOLUME_GB), volume(DATA_DEVICE, spec.volume_size_gb)],
        network_interfaces=[
            aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                device_index=0,
                security_groups=[endpoint.node_security_group.id],
                associate_public_ip_address="true" if network.node_public_ip else "false",
                delete_on_termination="true",
            )
        ],
        user_data=pulumi.Output.from_input(user_data).apply(encode_user_data),
        update_default_version=True,
        tag_specifications=[
            aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
            for kind in ("instance", "volume", "network-interface")
        ],
        tags=spec.tags(),
        opts=opts,
    )
    group = aws.autoscaling.Group(
        f"{name}-node",
        min_size=1,
        max_size=1,
        desired_capacity=1,
        vpc_zone_identifiers=network.node_subnet_ids,
        target_group_arns=[group.arn for group in endpoint.target_groups.values()],
        health_check_type="ELB",
        health_check_grace_period=HEALTH_CHECK_GRACE_SECONDS,
        capacity_rebalance=spec.spot,
        mixed_instances_policy=aws.autoscaling.GroupMixedInstancesPolicyArgs(
            instances_distribution=aws.autoscaling.GroupMixedInstancesPolicyInstancesDistributionArgs(
                on_demand_base_capacity=0,
                on_demand_percentage_above_base_capacity=0 if spec.spot else 100,
                on_demand_allocation_strategy="prioritized",
                spot_allocation_strategy="capacity-optimized-prioritized",
            ),
            launch_template=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateArgs(
                launch_template_specification=(
                    aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecificationArgs(
                        launch_template_id=launch_template.id,
                        version=launch_template.latest_version.apply(str),
                    )
                ),
                overrides=[
                    aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateOverrideArgs(instance_type=instance_type)
                    for instance_type in spec.instance_types
                ],
            ),
        ),
        instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
            strategy="Rolling",
            preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(min_healthy_percentage=0),
        ),
        tags=[
            aws.autoscaling.GroupTagArgs(key=key, value=value, propagate_at_launch=True) for key, value in tags.items()
        ],
        opts=opts,
    )
    return NodeCompute(launch_template=launch_template, group=group, key_pair=key_pair)
