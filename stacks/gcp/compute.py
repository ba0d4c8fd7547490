"""Google Cloud compute: the instance template and the regional managed instance group that keeps exactly one GPU
node running.

Why a managed instance group of one rather than a bare VM: it recreates the node when the VM or the service
fails (autohealing on HTTPS /healthz), it is how Compute Engine expresses fallback machine types (an instance
flexibility policy tries `foresight:instanceType`, then each fallback, in rank order), it places the node in
whichever of the region's zones has the GPU free (the BALANCED shape), and it rolls the node when the
template changes. The G2, A2 and A3 machine types carry their GPUs, so no accelerator is attached separately;
GPUs cannot live-migrate, so host maintenance stops the VM (`on_host_maintenance=TERMINATE`).

The image is the newest of Canonical's Ubuntu accelerator family (Ubuntu 22.04 with the NVIDIA driver), resolved at
deploy time; cloud-init adds Docker and the NVIDIA container toolkit where it lacks them (the marketplace image's
own script). Not a Deep Learning VM image: those cannot boot G2, the default type (Google's accelerator-optimized
machine family page: "You can't use Deep Learning VM Images as boot disks for instances that use the G2 machine
type"). Boot and data disks are pd-balanced, or hyperdisk-balanced where a
machine type takes no Persistent Disk (A3 Ultra), and encrypted with the stack's Cloud KMS key. OS Login guards
SSH when a key is not given (cloud-init also turns sshd off then); project-wide SSH keys are blocked. Shielded
VM's vTPM and integrity monitoring are on; secure boot is off, because the image's NVIDIA kernel modules are not
signed with a key the firmware trusts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from stacks.gcp.network import Network
from stacks.spec import HTTPS_PORT, ConfigError, StackSpec, config_key

IMAGE_PROJECT = "ubuntu-os-accelerator-images"
IMAGE_FAMILY = "ubuntu-accelerator-2204-amd64-with-nvidia-580"
# Machine families whose types carry NVIDIA GPUs.
GPU_FAMILIES = frozenset({"a2", "a3", "g2"})
BOOT_DISK_GB = 100  # the image uses about 50 GB; the rest holds the service image
DISK_TYPE = "pd-balanced"  # the disk type wherever every machine type of the group takes it
HYPERDISK_TYPE = "hyperdisk-balanced"
# The boot and data disk types each series takes, most specific prefix first (Google's "Accelerator-optimized
# machine family", "Supported disk types"): A3 Ultra takes no Persistent Disk, A2 and G2 no Hyperdisk Balanced.
SERIES_DISK_TYPES: tuple[tuple[str, frozenset[str]], ...] = (
    ("a3-ultragpu-", frozenset({HYPERDISK_TYPE})),
    ("a3-", frozenset({DISK_TYPE, HYPERDISK_TYPE})),  # A3 Mega, High, Edge
    ("a2-", frozenset({DISK_TYPE})),
    ("g2-", frozenset({DISK_TYPE})),
)
DATA_DEVICE_NAME = "foresight-data"
DATA_DISK_PATH = f"/dev/disk/by-id/google-{DATA_DEVICE_NAME}"
HEALTH_CHECK_GRACE_SECONDS = 1200  # first boot pulls a multi-GB CUDA image
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]  # IAM, not scopes, limits what the account may do
_MACHINE_TYPE_RE = re.compile(r"(?P<family>[a-z][a-z0-9]*)-[a-z0-9-]+")


def machine_family(machine_type: str) -> str:
    match = _MACHINE_TYPE_RE.fullmatch(machine_type)
    return match["family"] if match else ""


def check_instance_types(spec: StackSpec) -> None:
    for key, types in (
        ("instanceType", [spec.instance_type]),
        ("fallbackInstanceTypes", spec.fallback_instance_types),
    ):
        for machine_type in types:
            if machine_family(machine_type) not in GPU_FAMILIES:
                raise ConfigError.one(
                    config_key(key),
                    f"{machine_type!r} is not a Google Cloud machine type with an NVIDIA GPU; use one of the "
                    f"families {', '.join(sorted(GPU_FAMILIES))} (e.g. g2-standard-4)",
                )
    node_disk_type(spec.instance_types)


def series_disk_types(machine_type: str) -> frozenset[str]:
    """The disk types a machine type's series takes as boot and data disks."""
    return next((types for prefix, types in SERIES_DISK_TYPES if machine_type.startswith(prefix)), frozenset())


def node_disk_type(machine_types: Sequence[str]) -> str:
    """The one disk type of the template's disks: pd-balanced where every type takes it (existing groups keep their
    template), else hyperdisk-balanced where every type takes that."""
    for disk_type in (DISK_TYPE, HYPERDISK_TYPE):
        if all(disk_type in series_disk_types(machine_type) for machine_type in machine_types):
            return disk_type
    takes = ", ".join(f"{t} takes {' or '.join(sorted(series_disk_types(t)))}" for t in machine_types)
    raise ConfigError.one(
        config_key("fallbackInstanceTypes"),
        f"no disk type fits every machine type: {takes}, and the group's one instance template has one. "
        "With a3-ultragpu, fall back to a3-highgpu, a3-megagpu or a3-edgegpu, not a2 or g2",
    )


@dataclass(frozen=True)
class NodeCompute:
    template: gcp.compute.InstanceTemplate
    autohealing: gcp.compute.HealthCheck
    group: gcp.compute.RegionInstanceGroupManager
    zones: list[str]


def lookup_image(parent: pulumi.Resource) -> str:
    """The self link of the image family's newest image (never a hard-coded image name)."""
    image = gcp.compute.get_image(family=IMAGE_FAMILY, project=IMAGE_PROJECT, opts=pulumi.InvokeOptions(parent=parent))
    return image.self_link


def zones_offering(spec: StackSpec, parent: pulumi.Resource) -> list[str]:
    """The region's zones that offer the primary machine type, in name order."""
    invoke = pulumi.InvokeOptions(parent=parent)
    zones = gcp.compute.get_zones(region=spec.region, status="UP", opts=invoke).names
    offering = [
        zone
        for zone in sorted(zones)
        if gcp.compute.get_machine_types(zone=zone, filter=f"name = {spec.instance_type}", opts=invoke).machine_types
    ]
    if not offering:
        raise ConfigError.one(
            config_key("instanceType"), f"{spec.instance_type} is not offered in any zone of {spec.region}"
        )
    return offering


def node_metadata(spec: StackSpec, user_data: str) -> dict[str, str]:
    metadata = {"user-data": user_data, "block-project-ssh-keys": "TRUE"}
    if spec.ssh_public_key is None:
        metadata["enable-oslogin"] = "TRUE"
    else:  # OS Login would ignore the key
        metadata["enable-oslogin"] = "FALSE"
        metadata["ssh-keys"] = f"foresight:{spec.ssh_public_key}"
    return metadata


def create_compute(
    name: str,
    spec: StackSpec,
    network: Network,
    node_email: pulumi.Input[str],
    key_id: pulumi.Input[str],
    user_data: pulumi.Input[str],
    parent: pulumi.Resource,
) -> NodeCompute:
    opts = pulumi.ResourceOptions(parent=parent)
    zones = zones_offering(spec, parent)
    encryption = gcp.compute.InstanceTemplateDiskDiskEncryptionKeyArgs(kms_key_self_link=key_id)
    disk_type = node_disk_type(spec.instance_types)
    template = gcp.compute.InstanceTemplate(
        f"{name}-node",
        description=f"Foresight GPU node of stack {spec.stack}",
        machine_type=spec.instance_type,
        disks=[
            gcp.compute.InstanceTemplateDiskArgs(
                boot=True,
                source_image=lookup_image(parent),
                disk_size_gb=BOOT_DISK_GB,
                disk_type=disk_type,
                auto_delete=True,
                disk_encryption_key=encryption,
                labels=spec.labels(),
            ),
            gcp.compute.InstanceTemplateDiskArgs(
                boot=False,
                device_name=DATA_DEVICE_NAME,
                disk_size_gb=spec.volume_size_gb,
                disk_type=disk_type,
                auto_delete=True,
                disk_encryption_key=encryption,
                labels=spec.labels(),
            ),
        ],
        network_interfaces=[
            gcp.compute.InstanceTemplateNetworkInterfaceArgs(subnetwork=network.subnetwork, nic_type="GVNIC")
        ],
        service_account=gcp.compute.InstanceTemplateServiceAccountArgs(email=node_email, scopes=SCOPES),
        scheduling=gcp.compute.InstanceTemplateSchedulingArgs(
            on_host_maintenance="TERMINATE",
            automatic_restart=not spec.spot,
            preemptible=spec.spot,
            provisioning_model="SPOT" if spec.spot else "STANDARD",
            instance_termination_action="DELETE" if spec.spot else None,
        ),
        shielded_instance_config=gcp.compute.InstanceTemplateShieldedInstanceConfigArgs(
            enable_secure_boot=False, enable_vtpm=True, enable_integrity_monitoring=True
        ),
        metadata=pulumi.Output.from_input(user_data).apply(lambda text: node_metadata(spec, text)),
        labels=spec.labels(),
        opts=opts,
    )
    autohealing = gcp.compute.HealthCheck(
        f"{name}-node-health",
        check_interval_sec=10,
        timeout_sec=5,
        healthy_threshold=2,
        unhealthy_threshold=6,
        https_health_check=gcp.compute.HealthCheckHttpsHealthCheckArgs(port=HTTPS_PORT, request_path="/healthz"),
        opts=opts,
    )
    flexibility = None
    if spec.fallback_instance_types:
        flexibility = gcp.compute.RegionInstanceGroupManagerInstanceFlexibilityPolicyArgs(
            instance_selections=[
                gcp.compute.RegionInstanceGroupManagerInstanceFlexibilityPolicyInstanceSelectionArgs(
                    name=f"rank-{rank}", rank=rank, machine_types=[machine_type]
                )
                for rank, machine_type in enumerate(spec.instance_types)
            ]
        )
    group = gcp.compute.RegionInstanceGroupManager(
        f"{name}-node",
        region=spec.region,
        base_instance_name=re.sub(r"[^a-z0-9-]", "-", spec.name.lower())[:50].strip("-") or "foresight",
        versions=[
            gcp.compute.RegionInstanceGroupManagerVersionArgs(name="node", instance_template=template.self_link_unique)
        ],
        target_size=1,
        distribution_policy_zones=zones,
        distribution_policy_target_shape="BALANCED",
        instance_flexibility_policy=flexibility,
        auto_healing_policies=gcp.compute.RegionInstanceGroupManagerAutoHealingPoliciesArgs(
            health_check=autohealing.id, initial_delay_sec=HEALTH_CHECK_GRACE_SECONDS
        ),
        # One node: replace it in place (a second GPU may not be free); a regional group needs at least one
        # unavailable instance per zone for that.
        update_policy=gcp.compute.RegionInstanceGroupManagerUpdatePolicyArgs(
            type="PROACTIVE",
            minimal_action="REPLACE",
            instance_redistribution_type="NONE",
            max_surge_fixed=0,
            max_unavailable_fixed=len(zones),
            replacement_method="RECREATE",
        ),
        wait_for_instances=False,
        opts=opts,
    )
    return NodeCompute(template=template, autohealing=autohealing, group=group, zones=zones)
