"""Azure compute: a virtual machine scale set (flexible orchestration) that keeps exactly one GPU node running.

Why a scale set of one rather than a bare VM: it replaces the node when the VM or the service fails
(automatic repairs, judged by the Application Health extension on HTTPS /healthz), it is how Azure expresses
fallback sizes (an instance mix: `foresight:instanceType`, then each fallback, in rank order) and Spot with
replacement (Try & restore recreates an evicted node when capacity returns, within SPOT_RESTORE_TIMEOUT), and it
applies a changed model to the node (automatic upgrade mode).

The image is Microsoft's Ubuntu HPC image (Ubuntu 22.04 with the NVIDIA driver, Docker and the NVIDIA
container toolkit for the N-series sizes), the newest version at deploy time. OS and data disks are Premium
SSD, encrypted through the stack's disk encryption set with its Key Vault key. Azure requires a login method
on a Linux VM: with no `foresight:sshPublicKey` the node gets NO_LOGIN_KEY, whose private half exists nowhere,
no password is ever set, and cloud-init turns sshd off.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure

from stacks.azure.network import Endpoint, Network
from stacks.spec import HTTPS_PORT, ConfigError, StackSpec, config_key

IMAGE = {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"}
# N-series sizes with NVIDIA GPUs the image supports: NCasT4_v3 (T4), NC A100 v4, NC H100 v5.
GPU_SERIES = frozenset({"NCas_T4_v3", "NCads_A100_v4", "NCads_H100_v5"})
ADMIN_USER = "foresight"
OS_DISK_GB = 100  # the image uses about 40 GB; the rest holds the service image
DATA_DISK_LUN = 0
DATA_DISK_PATH = f"/dev/disk/azure/scsi1/lun{DATA_DISK_LUN}"  # the Azure udev rules' stable name
REPAIR_GRACE = "PT20M"  # first boot pulls a multi-GB CUDA image
# Binary Health States: a 200 from /healthz is Healthy, anything else (or no answer) Unhealthy, which automatic
# repairs replace. Rich Health States ("2.0") would need {"ApplicationHealthState": "Healthy"} in the body, which
# the service's /healthz does not send, and would call an unreachable node Unknown.
HEALTH_EXTENSION_VERSION = "1.0"
# Spot Try & restore: Azure recreates an evicted (deleted) Spot node when capacity returns, for at most this long
# (15 to 120 minutes); without it a Delete eviction leaves the scale set empty.
SPOT_RESTORE_TIMEOUT = "PT2H"
_SIZE_RE = re.compile(r"Standard_([A-Z]+)\d+([a-z]*)_(.+)")


def gpu_series(size: str) -> str:
    """`Standard_NC4as_T4_v3` -> `NCas_T4_v3`: the size without its vCPU count."""
    match = _SIZE_RE.fullmatch(size)
    return f"{match[1]}{match[2]}_{match[3]}" if match else ""


def check_instance_types(spec: StackSpec) -> None:
    for key, sizes in (("instanceType", [spec.instance_type]), ("fallbackInstanceTypes", spec.fallback_instance_types)):
        for size in sizes:
            if gpu_series(size) not in GPU_SERIES:
                raise ConfigError.one(
                    config_key(key),
                    f"{size!r} is not an Azure size with an NVIDIA GPU; use one of the series "
                    f"{', '.join(sorted(GPU_SERIES))} (e.g. Standard_NC4as_T4_v3)",
                )


def _no_login_key() -> str:
    """An OpenSSH RSA public key whose modulus is a hash: nobody knows its factors, so no private key opens it."""
    stream = hashlib.shake_256(b"foresight: this node admits no SSH login").digest(384)  # 3072 bits
    modulus = int.from_bytes(stream, "big") | (1 << 3071) | 1

    def field(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    def mpint(value: int) -> bytes:
        raw = value.to_bytes((value.bit_length() + 8) // 8, "big")
        return field(raw)

    blob = field(b"ssh-rsa") + mpint(65537) + mpint(modulus)
    return f"ssh-rsa {base64.b64encode(blob).decode()} foresight-no-login"


NO_LOGIN_KEY = _no_login_key()


@dataclass(frozen=True)
class NodeCompute:
    scale_set: azure.compute.VirtualMachineScaleSet


def create_compute(
    name: str,
    spec: StackSpec,
    group: azure.resources.ResourceGroup,
    network: Network,
    endpoint: Endpoint,
    identity_id: pulumi.Input[str],
    encryption_set_id: pulumi.Input[str],
    user_data: pulumi.Input[str],
    parent: pulumi.Resource,
) -> NodeCompute:
    disk = azure.compute.VirtualMachineScaleSetManagedDiskParametersArgs(
        storage_account_type="Premium_LRS",
        disk_encryption_set=azure.compute.DiskEncryptionSetParametersArgs(id=encryption_set_id),
    )
    mixed = bool(spec.fallback_instance_types)
    scale_set = azure.compute.VirtualMachineScaleSet(
        f"{name}-node",
        resource_group_name=group.name,
        location=spec.region,
        orchestration_mode="Flexible",
        platform_fault_domain_count=1,
        sku=azure.compute.SkuArgs(name="Mix" if mixed else spec.instance_type, capacity=1),
        sku_profile=azure.compute.SkuProfileArgs(
            allocation_strategy="Prioritized",
            vm_sizes=[
                azure.compute.SkuProfileVMSizeArgs(name=size, rank=rank)
                for rank, size in enumerate(spec.instance_types)
            ],
        )
        if mixed
        else None,
        identity=azure.compute.VirtualMachineScaleSetIdentityArgs(
            type=azure.compute.ResourceIdentityType.USER_ASSIGNED, user_assigned_identities=[identity_id]
        ),
        automatic_repairs_policy=azure.compute.AutomaticRepairsPolicyArgs(
            enabled=True, grace_period=REPAIR_GRACE, repair_action="Replace"
        ),
        upgrade_policy=azure.compute.UpgradePolicyArgs(mode=azure.compute.UpgradeMode.AUTOMATIC),
        spot_restore_policy=azure.compute.SpotRestorePolicyArgs(enabled=True, restore_timeout=SPOT_RESTORE_TIMEOUT)
        if spec.spot
        else None,
        virtual_machine_profile=azure.compute.VirtualMachineScaleSetVMProfileArgs(
            priority="Spot" if spec.spot else "Regular",
            eviction_policy="Delete" if spec.spot else None,
            billing_profile=azure.compute.BillingProfileArgs(max_price=-1) if spec.spot else None,
            os_profile=azure.compute.VirtualMachineScaleSetOSProfileArgs(
                computer_name_prefix="foresight",
                admin_username=ADMIN_USER,
                custom_data=pulumi.Output.from_input(user_data).apply(
                    lambda text: base64.b64encode(text.encode()).decode()
                ),
                linux_configuration=azure.compute.LinuxConfigurationArgs(
                    disable_password_authentication=True,
                    ssh=azure.compute.SshConfigurationArgs(
                        public_keys=[
                            azure.compute.SshPublicKeyArgs(
                                path=f"/home/{ADMIN_USER}/.ssh/authorized_keys",
                                key_data=spec.ssh_public_key or NO_LOGIN_KEY,
                            )
                        ]
                    ),
                ),
            ),
            storage_profile=azure.compute.VirtualMachineScaleSetStorageProfileArgs(
                image_reference=azure.compute.ImageReferenceArgs(**IMAGE),
                os_disk=azure.compute.VirtualMachineScaleSetOSDiskArgs(
                    create_option="FromImage",
                    caching=azure.compute.CachingTypes.READ_WRITE,
                    disk_size_gb=OS_DISK_GB,
                    managed_disk=disk,
                    delete_option="Delete",
                ),
                data_disks=[
                    azure.compute.VirtualMachineScaleSetDataDiskArgs(
                        lun=DATA_DISK_LUN,
                        create_option="Empty",
                        disk_size_gb=spec.volume_size_gb,
                        caching=azure.compute.CachingTypes.READ_ONLY,
                        managed_disk=disk,
                        delete_option="Delete",
                    )
                ],
            ),
            network_profile=azure.compute.VirtualMachineScaleSetNetworkProfileArgs(
                network_api_version="2020-11-01",
                network_interface_configurations=[
                    azure.compute.VirtualMachineScaleSetNetworkConfigurationArgs(
                        name="nic",
                        primary=True,
                        delete_option="Delete",
                        network_security_group=azure.compute.SubResourceArgs(id=network.security_group.id),
                        ip_configurations=[
                            azure.compute.VirtualMachineScaleSetIPConfigurationArgs(
                                name="ip",
                                primary=True,
                                subnet=azure.compute.ApiEntityReferenceArgs(id=network.subnet_id),
                                load_balancer_backend_address_pools=[
                                    azure.compute.SubResourceArgs(id=endpoint.backend_pool_id)
                                ],
                            )
                        ],
                    )
                ],
            ),
            extension_profile=azure.compute.VirtualMachineScaleSetExtensionProfileArgs(
                extensions=[
                    azure.compute.VirtualMachineScaleSetExtensionArgs(
                        name="health",
                        publisher="Microsoft.ManagedServices",
                        type="ApplicationHealthLinux",
                        type_handler_version=HEALTH_EXTENSION_VERSION,
                        auto_upgrade_minor_version=True,
                        settings={
                            "protocol": "https",
                            "port": HTTPS_PORT,
                            "requestPath": "/healthz",
                            "intervalInSeconds": 10,
                            "numberOfProbes": 3,
                        },
                    )
                ]
            ),
        ),
        tags={**spec.tags(), "Name": f"{spec.name}-node"},
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[endpoint.load_balancer]),
    )
    return NodeCompute(scale_set=scale_set)
