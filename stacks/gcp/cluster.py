"""Google Cloud scale-out compute: the GKE cluster, its GPU node pool, and the pods' Google identity.

- Cluster: regional (three replicas of the control plane in `gcp:region`), its nodes only in the zones whose
  machine types include `foresight:instanceType` (`compute.zones_offering`). VPC-native on the stack's subnet,
  with pod and service ranges GKE picks and adds to the subnet. Private nodes (no public address; Cloud NAT
  pulls images). The control plane's endpoint is public only when an allowed CIDR is public, and then only the
  allowed CIDRs may reach it (master authorized networks); otherwise it is private to the VPC, and the same
  ranges (private ones) are what may reach it there. Kubernetes secrets in etcd are encrypted with the stack's
  Cloud KMS key (application-layer secrets encryption); GKE Dataplane V2 (`ADVANCED_DATAPATH`) enforces the
  workload's NetworkPolicy; Workload Identity (`<project>.svc.id.goog`); shielded nodes; release channel
  REGULAR; deletion protection on. The default node pool is removed: node pools are their own resources.
- System pool: one small node per zone of the GPU pool, for kube-dns, konnectivity and the CSI driver, which
  do not tolerate the GPU nodes' taint.
- GPU pool: `foresight:nodes` nodes of `foresight:instanceType`, spread evenly over as many of those zones as
  divide the count (3 nodes in 3 zones: one each; 4 in 3: two each in 2 zones; 5: all in one). The machine
  type's own accelerator (read from Compute Engine's machine type, e.g. one nvidia-l4 for g2-standard-4) with
  GKE-installed drivers (`gpu_driver_version: LATEST`), so GKE also runs NVIDIA's device plugin and taints the
  nodes `nvidia.com/gpu=present:NoSchedule`; the workload tolerates it and selects `GPU_POOL_LABELS`.
- Both pools: CMEK boot disks, Shielded VM (secure boot: GKE's drivers are signed), the GKE metadata server
  (pods see only their own Workload Identity, never the node's account), auto-repair and auto-upgrade, and a
  node service account that may only write logs and metrics.
- Pod identity: a Google service account for the pods that the `foresight/foresight` Kubernetes service
  account may impersonate (roles/iam.workloadIdentityUser on that account alone); its roles are the key's
  (granted on the key, `kms.py`) and Memorystore's connection role (`tier.py`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp

from stacks.cluster import K8S_NAMESPACE, WORKLOAD_NAME
from stacks.gcp.compute import DISK_TYPE, SCOPES, node_disk_type, zones_offering
from stacks.gcp.network import Network
from stacks.spec import ConfigError, StackSpec, config_key

RELEASE_CHANNEL = "REGULAR"
SYSTEM_MACHINE_TYPE = "e2-standard-2"
NODE_BOOT_DISK_GB = 100  # COS plus the multi-GB CUDA service image
GPU_DRIVER_VERSION = "LATEST"
GPU_POOL_LABELS = {"foresight.dev/pool": "gpu"}
# Netmask-only ranges: GKE picks free ranges in the VPC and adds them to the subnet as secondary ranges.
POD_RANGE = "/17"  # 32k pod addresses: 64 nodes of 110 pods (a /24 each) fit with room for surge
SERVICE_RANGE = "/22"
NODE_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter")
WORKLOAD_IDENTITY_USER = "roles/iam.workloadIdentityUser"
WORKLOAD_IDENTITY_ANNOTATION = "iam.gke.io/gcp-service-account"


@dataclass(frozen=True)
class Accelerator:
    type: str
    count: int


@dataclass(frozen=True)
class PoolPlacement:
    """The zones of the GPU pool and the nodes in each: a regional pool's node count is per zone."""

    zones: list[str]
    per_zone: int


@dataclass(frozen=True)
class ClusterIdentity:
    node_account: gcp.serviceaccount.Account
    node_roles: list[gcp.projects.IAMMember]
    pod_account: gcp.serviceaccount.Account

    @property
    def pod_email(self) -> pulumi.Output[str]:
        return self.pod_account.email


@dataclass(frozen=True)
class GkeCluster:
    cluster: gcp.container.Cluster
    system_pool: gcp.container.NodePool
    gpu_pool: gcp.container.NodePool
    placement: PoolPlacement
    accelerator: Accelerator
    workload_identity: gcp.serviceaccount.IAMMember


def check_cluster_spec(spec: StackSpec) -> None:
    """What a GKE node pool cannot do: it has one machine type, so no fallbacks."""
    if spec.fallback_instance_types:
        raise ConfigError.one(
            config_key("fallbackInstanceTypes"),
            "not with foresight:scaleOut on Google Cloud: a GKE node pool has one machine type; leave it empty",
        )


def place_pool(nodes: int, zones: list[str]) -> PoolPlacement:
    """The most zones (in name order) that take the same number of nodes each, adding up to `nodes`."""
    count = max(k for k in range(1, len(zones) + 1) if nodes % k == 0)
    return PoolPlacement(zones=zones[:count], per_zone=nodes // count)


def machine_accelerator(spec: StackSpec, zone: str, parent: pulumi.Resource) -> Accelerator:
    """The GPU that `foresight:instanceType` carries, as Compute Engine describes the machine type."""
    found = gcp.compute.get_machine_types(
        zone=zone, filter=f"name = {spec.instance_type}", opts=pulumi.InvokeOptions(parent=parent)
    ).machine_types
    accelerators = [a for machine in found for a in machine.accelerators]
    if not accelerators:
        raise ConfigError.one(
            config_key("instanceType"), f"{spec.instance_type} has no GPU in {zone}; use a g2, a2 or a3 machine type"
        )
    return Accelerator(type=accelerators[0].guest_accelerator_type, count=accelerators[0].guest_accelerator_count)


def _account_id(spec: StackSpec, role: str) -> str:
    """`fs-<role>-<stack>-<digest>`, at most 30 characters, unique to the project and stack."""
    stem = re.sub(r"[^a-z0-9-]", "-", spec.stack.lower()).strip("-")[: 19 - len(role)].strip("-")
    digest = hashlib.sha256(f"{spec.name}/{role}".encode()).hexdigest()[:6]
    return f"fs-{role}-{stem}-{digest}" if stem else f"fs-{role}-{digest}"


def workload_member(project_id: str) -> str:
    """The Workload Identity principal of the workload's Kubernetes service account, and of no other."""
    return f"serviceAccount:{project_id}.svc.id.goog[{K8S_NAMESPACE}/{WORKLOAD_NAME}]"


def create_cluster_identity(name: str, spec: StackSpec, project_id: str, parent: pulumi.Resource) -> ClusterIdentity:
    opts = pulumi.ResourceOptions(parent=parent)
    node_account = gcp.serviceaccount.Account(
        f"{name}-gke-node",
        account_id=_account_id(spec, "gke"),
        display_name=f"Foresight GKE nodes of stack {spec.stack}",
        description="Runs the GKE nodes; writes their logs and metrics, nothing else.",
        opts=opts,
    )
    node_roles = [
        gcp.projects.IAMMember(
            f"{name}-gke-node-{role.rsplit('.', 1)[1]}",
            project=project_id,
            role=role,
            member=pulumi.Output.concat("serviceAccount:", node_account.email),
            opts=opts,
        )
        for role in NODE_ROLES
    ]
    pod_account = gcp.serviceaccount.Account(
        f"{name}-pods",
        account_id=_account_id(spec, "pod"),
        display_name=f"Foresight pods of stack {spec.stack}",
        description="The Foresight pods' Workload Identity: the stack's KMS key and its Memorystore instance.",
        opts=opts,
    )
    return ClusterIdentity(node_account=node_account, node_roles=node_roles, pod_account=pod_account)


def _node_config(
    spec: StackSpec, key_id: pulumi.Input[str], node_email: pulumi.Input[str], machine_type: str,
    disk_type: str = DISK_TYPE,
) -> dict[str, Any]:
    """What both pools' nodes share, as keyword arguments of a node config."""
    return {
        "machine_type": machine_type,
        "image_type": "COS_CONTAINERD",
        "disk_type": disk_type,
        "disk_size_gb": NODE_BOOT_DISK_GB,
        "boot_disk_kms_key": key_id,
        "service_account": node_email,
        "oauth_scopes": SCOPES,
        "resource_labels": spec.labels(),
        "metadata": {"disable-legacy-endpoints": "true"},
    }


def create_gke(
    name: str,
    spec: StackSpec,
    project_id: str,
    network: Network,
    identity: ClusterIdentity,
    key_id: pulumi.Input[str],
    key_grants: list[pulumi.Resource],
    parent: pulumi.Resource,
) -> GkeCluster:
    """The cluster and both pools; `key_grants` (GKE's and Compute Engine's use of the key) come first."""
    opts = pulumi.ResourceOptions(parent=parent)
    zones = zones_offering(spec, parent)
    placement = place_pool(spec.nodes, zones)
    accelerator = machine_accelerator(spec, placement.zones[0], parent)
    node_email = identity.node_account.email
    public = spec.public_endpoint
    system_config = _node_config(spec, key_id, node_email, SYSTEM_MACHINE_TYPE)
    cluster = gcp.container.Cluster(
        f"{name}-gke",
        description=f"Foresight stack {spec.stack}: the scale-out GPU cluster",
        location=spec.region,
        node_locations=placement.zones,
        network=network.network,
        subnetwork=network.subnetwork,
        networking_mode="VPC_NATIVE",
        ip_allocation_policy=gcp.container.ClusterIpAllocationPolicyArgs(
            cluster_ipv4_cidr_block=POD_RANGE, services_ipv4_cidr_block=SERVICE_RANGE
        ),
        remove_default_node_pool=True,
        initial_node_count=1,
        # The default pool lives only until the cluster exists, but its nodes still get the hardened config.
        node_config=gcp.container.ClusterNodeConfigArgs(
            **system_config,
            workload_metadata_config=gcp.container.ClusterNodeConfigWorkloadMetadataConfigArgs(mode="GKE_METADATA"),
            shielded_instance_config=gcp.container.ClusterNodeConfigShieldedInstanceConfigArgs(
                enable_secure_boot=True, enable_integrity_monitoring=True
            ),
        ),
        private_cluster_config=gcp.container.ClusterPrivateClusterConfigArgs(
            enable_private_nodes=True, enable_private_endpoint=not public
        ),
        master_authorized_networks_config=gcp.container.ClusterMasterAuthorizedNetworksConfigArgs(
            cidr_blocks=[
                gcp.container.ClusterMasterAuthorizedNetworksConfigCidrBlockArgs(
                    cidr_block=str(cidr), display_name=f"foresight:allowedCidrs {index}"
                )
                for index, cidr in enumerate(spec.allowed_cidrs)
            ],
            gcp_public_cidrs_access_enabled=False,
        ),
        # No client certificate (no credential in state): kubectl and Pulumi log in with Google identities.
        master_auth=gcp.container.ClusterMasterAuthArgs(
            client_certificate_config=gcp.container.ClusterMasterAuthClientCertificateConfigArgs(
                issue_client_certificate=False
            )
        ),
        workload_identity_config=gcp.container.ClusterWorkloadIdentityConfigArgs(
            workload_pool=f"{project_id}.svc.id.goog"
        ),
        database_encryption=gcp.container.ClusterDatabaseEncryptionArgs(state="ENCRYPTED", key_name=key_id),
        datapath_provider="ADVANCED_DATAPATH",
        release_channel=gcp.container.ClusterReleaseChannelArgs(channel=RELEASE_CHANNEL),
        enable_shielded_nodes=True,
        enable_legacy_abac=False,
        addons_config=gcp.container.ClusterAddonsConfigArgs(
            gce_persistent_disk_csi_driver_config=gcp.container.ClusterAddonsConfigGcePersistentDiskCsiDriverConfigArgs(
                enabled=True
            ),
        ),
        resource_labels=spec.labels(),
        deletion_protection=True,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=key_grants),
    )

    def pool(
        suffix: str,
        config: dict[str, Any],
        count: int,
        labels: dict[str, str],
        accelerators: list[gcp.container.NodePoolNodeConfigGuestAcceleratorArgs] | None = None,
    ) -> gcp.container.NodePool:
        return gcp.container.NodePool(
            f"{name}-{suffix}",
            cluster=cluster.id,
            location=spec.region,
            node_locations=placement.zones,
            node_count=count,
            node_config=gcp.container.NodePoolNodeConfigArgs(
                **config,
                labels=labels,
                guest_accelerators=accelerators,
                spot=spec.spot if accelerators else False,
                workload_metadata_config=gcp.container.NodePoolNodeConfigWorkloadMetadataConfigArgs(
                    mode="GKE_METADATA"
                ),
                shielded_instance_config=gcp.container.NodePoolNodeConfigShieldedInstanceConfigArgs(
                    enable_secure_boot=True, enable_integrity_monitoring=True
                ),
            ),
            management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
            # A second GPU may not be free: replace one node at a time, which the workload's budget allows.
            upgrade_settings=gcp.container.NodePoolUpgradeSettingsArgs(max_surge=0, max_unavailable=1),
            opts=opts,
        )

    system_pool = pool("system", system_config, 1, {"foresight.dev/pool": "system"})
    gpu_pool = pool(
        "gpu",
        _node_config(spec, key_id, node_email, spec.instance_type, node_disk_type([spec.instance_type])),
        placement.per_zone,
        GPU_POOL_LABELS,
        [
            gcp.container.NodePoolNodeConfigGuestAcceleratorArgs(
                type=accelerator.type,
                count=accelerator.count,
                gpu_driver_installation_config=gcp.container.NodePoolNodeConfigGuestAcceleratorGpuDriverInstallationConfigArgs(
                    gpu_driver_version=GPU_DRIVER_VERSION
                ),
            )
        ],
    )
    # The pool `<project>.svc.id.goog` exists once a cluster enables it; IAM refuses the member before that.
    workload_identity = gcp.serviceaccount.IAMMember(
        f"{name}-pods-workload-identity",
        service_account_id=identity.pod_account.name,
        role=WORKLOAD_IDENTITY_USER,
        member=workload_member(project_id),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[cluster]),
    )
    return GkeCluster(
        cluster=cluster,
        system_pool=system_pool,
        gpu_pool=gpu_pool,
        placement=placement,
        accelerator=accelerator,
        workload_identity=workload_identity,
    )


def oidc_issuer(project_id: str, cluster: gcp.container.Cluster) -> pulumi.Output[str]:
    """The `iss` of the cluster's service-account tokens; its discovery document and keys are public at
    `<issuer>/.well-known/openid-configuration` and `<issuer>/jwks`, so Vault needs no Google credential."""
    return pulumi.Output.concat(
        "https://container.googleapis.com/v1/projects/",
        project_id,
        "/locations/",
        cluster.location,
        "/clusters/",
        cluster.name,
    )


def kubeconfig(cluster: gcp.container.Cluster) -> pulumi.Output[str]:
    """A kubeconfig for the cluster's endpoint whose user runs gke-gcloud-auth-plugin: the deployer's own Google
    credentials, fetched at each call, so no token or key of the cluster ever sits in Pulumi's state."""
    return pulumi.Output.all(cluster.endpoint, cluster.master_auth.cluster_ca_certificate).apply(
        lambda values: _kubeconfig_json("foresight-gke", str(values[0]), str(values[1]))
    )


def _kubeconfig_json(context: str, endpoint: str, ca: str) -> str:
    cluster = {"server": f"https://{endpoint}", "certificate-authority-data": ca}
    plugin = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": "gke-gcloud-auth-plugin",
        "installHint": "gcloud components install gke-gcloud-auth-plugin",
        "provideClusterInfo": True,
        "interactiveMode": "Never",
    }
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": {"exec": plugin}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
            "current-context": context,
        }
    )
