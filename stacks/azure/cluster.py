"""Azure scale-out cluster: AKS with a GPU node pool, Entra ID only, and the pods' workload identity.

It creates, as children of the calling component (`scale_out.py`):
- the control plane's user-assigned managed identity, with Network Contributor on the node subnet (the nodes and
  an internal load balancer join it) and Reader on the disk encryption set (the disk CSI driver names it);
- an AKS cluster that knows no credential of its own: Entra ID integration with Azure RBAC for Kubernetes
  authorization and local accounts disabled, so no admin kubeconfig, client certificate or static token exists
  (`list_managed_cluster_admin_credentials` fails on it). Its OIDC issuer and workload identity are on; node OS
  disks are encrypted through the stack's disk encryption set (the Key Vault key); Azure CNI overlay with the
  Cilium dataplane enforces NetworkPolicy; a system pool of `SYSTEM_NODES` x `SYSTEM_VM_SIZE`; the stable
  upgrade channel and weekly node image upgrades. Its API server admits only `foresight:allowedCidrs` and the
  nodes' own egress address (the NAT gateway's, which AKS does not add by itself: without it the nodes cannot
  reach their control plane and never join) when the stack is public, and is private (reachable from the
  virtual network only) when the stack is private. A given network's egress address must be in
  `foresight:allowedCidrs`;
- the GPU pool (mode User): `foresight:nodes` x `foresight:instanceType`, Spot when `foresight:spot`, with
  the NVIDIA driver that AKS installs, tainted `nvidia.com/gpu` and labelled `GPU_POOL_LABELS` (the workload's
  node selector);
- the deployer's "Azure Kubernetes Service RBAC Cluster Admin" role on this cluster only, so `pulumi up` can
  create the Kubernetes objects with its own Entra ID login (`user_kubeconfig`);
- the pods' user-assigned managed identity and its federated credential: only tokens from this cluster's issuer
  for the workload's service account (`system:serviceaccount:foresight:foresight`) and audience
  `api://AzureADTokenExchange` can act as it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_azure_native as azure
import yaml

from stacks.azure.kms import role_definition
from stacks.cluster import service_account_subject
from stacks.spec import StackSpec

# The system pool runs only AKS's own pods (CoreDNS, Cilium, CSI, konnectivity, the workload identity webhook):
# two small general-purpose nodes, so one can be upgraded while the other serves.
SYSTEM_VM_SIZE = "Standard_D2s_v5"
SYSTEM_NODES = 2
GPU_POOL = "gpu"
GPU_POOL_LABELS = {"foresight.dev/pool": "gpu"}
GPU_TAINT = "nvidia.com/gpu=present:NoSchedule"
GPU_OS_DISK_GB = 128  # the node image and the multi-GB CUDA service image
# Overlay networking: pods and services get addresses outside the virtual network, which only needs the nodes'.
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.245.0.0/16"
DNS_SERVICE_IP = "10.245.0.10"
WORKLOAD_IDENTITY_AUDIENCE = "api://AzureADTokenExchange"
# Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"
# How `pulumi up` runs kubelogin: with the deployer's `az login` (AKS's default, devicecode, waits for a browser).
KUBELOGIN_LOGIN = "azurecli"


def dns_prefix(spec: StackSpec) -> str:
    """The API server's DNS prefix: letters, digits and hyphens, starting and ending with an alphanumeric."""
    return re.sub(r"[^a-z0-9-]", "-", spec.name.lower()).strip("-")[:40].rstrip("-")


@dataclass(frozen=True)
class AksCluster:
    control_plane_identity: azure.managedidentity.UserAssignedIdentity
    control_plane_grants: list[azure.authorization.RoleAssignment]
    cluster: azure.containerservice.ManagedCluster
    gpu_pool: azure.containerservice.AgentPool
    deployer_admin: azure.authorization.RoleAssignment

    @property
    def oidc_issuer(self) -> pulumi.Output[str]:
        """The issuer of the cluster's service-account tokens; its discovery document and keys are public."""
        return self.cluster.oidc_issuer_profile.apply(lambda profile: (profile.issuer_url or "") if profile else "")


def create_pod_identity(
    name: str, spec: StackSpec, group: azure.resources.ResourceGroup, parent: pulumi.Resource
) -> azure.managedidentity.UserAssignedIdentity:
    """The pods' identity; its permissions are role assignments on the key and an access policy on the tier."""
    return azure.managedidentity.UserAssignedIdentity(
        f"{name}-pods",
        resource_group_name=group.name,
        location=spec.region,
        tags=spec.tags(),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def create_cluster(
    name: str,
    spec: StackSpec,
    group: azure.resources.ResourceGroup,
    subnet_id: pulumi.Input[str],
    encryption_set_id: pulumi.Input[str],
    tenant_id: str,
    subscription_id: str,
    deployer_object_id: str,
    parent: pulumi.Resource,
    egress_cidr: pulumi.Input[str] | None = None,
) -> AksCluster:
    """The cluster; `egress_cidr` is the own network's NAT address (None for a given network)."""
    opts = pulumi.ResourceOptions(parent=parent)
    identity = azure.managedidentity.UserAssignedIdentity(
        f"{name}-control-plane",
        resource_group_name=group.name,
        location=spec.region,
        tags=spec.tags(),
        opts=opts,
    )
    grants = [
        azure.authorization.RoleAssignment(
            f"{name}-control-plane-{what}",
            scope=scope,
            principal_id=identity.principal_id,
            principal_type="ServicePrincipal",
            role_definition_id=role_definition(subscription_id, role),
            opts=opts,
        )
        for what, scope, role in (
            ("subnet", subnet_id, NETWORK_CONTRIBUTOR),
            ("disks", encryption_set_id, READER),
        )
    ]
    if spec.public_endpoint:
        allowed: list[pulumi.Input[str]] = [str(cidr) for cidr in spec.allowed_cidrs]
        api_server = azure.containerservice.ManagedClusterAPIServerAccessProfileArgs(
            authorized_ip_ranges=[*allowed, *([egress_cidr] if egress_cidr is not None else [])]
        )
    else:
        api_server = azure.containerservice.ManagedClusterAPIServerAccessProfileArgs(enable_private_cluster=True)
    cluster = azure.containerservice.ManagedCluster(
        f"{name}-aks",
        resource_group_name=group.name,
        location=spec.region,
        dns_prefix=dns_prefix(spec),
        sku=azure.containerservice.ManagedClusterSKUArgs(name="Base", tier="Standard"),
        identity=azure.containerservice.ManagedClusterIdentityArgs(
            type=azure.containerservice.ResourceIdentityType.USER_ASSIGNED, user_assigned_identities=[identity.id]
        ),
        enable_rbac=True,
        disable_local_accounts=True,
        aad_profile=azure.containerservice.ManagedClusterAADProfileArgs(
            managed=True, enable_azure_rbac=True, tenant_id=tenant_id
        ),
        oidc_issuer_profile=azure.containerservice.ManagedClusterOIDCIssuerProfileArgs(enabled=True),
        security_profile=azure.containerservice.ManagedClusterSecurityProfileArgs(
            workload_identity=azure.containerservice.ManagedClusterSecurityProfileWorkloadIdentityArgs(enabled=True)
        ),
        api_server_access_profile=api_server,
        disk_encryption_set_id=encryption_set_id,
        network_profile=azure.containerservice.ContainerServiceNetworkProfileArgs(
            network_plugin="azure",
            network_plugin_mode="overlay",
            network_dataplane="cilium",
            network_policy="cilium",
            outbound_type="userAssignedNATGateway",
            load_balancer_sku="standard",
            pod_cidr=POD_CIDR,
            service_cidr=SERVICE_CIDR,
            dns_service_ip=DNS_SERVICE_IP,
        ),
        agent_pool_profiles=[
            azure.containerservice.ManagedClusterAgentPoolProfileArgs(
                name="system",
                mode="System",
                vm_size=SYSTEM_VM_SIZE,
                count=SYSTEM_NODES,
                os_type="Linux",
                os_sku="Ubuntu",
                os_disk_type="Managed",
                vnet_subnet_id=subnet_id,
                enable_node_public_ip=False,
                tags=spec.tags(),
            )
        ],
        auto_upgrade_profile=azure.containerservice.ManagedClusterAutoUpgradeProfileArgs(
            upgrade_channel="stable", node_os_upgrade_channel="NodeImage"
        ),
        tags=spec.tags(),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=grants),
    )
    gpu_pool = azure.containerservice.AgentPool(
        f"{name}-gpu",
        resource_group_name=group.name,
        resource_name_=cluster.name,
        agent_pool_name=GPU_POOL,
        mode="User",
        vm_size=spec.instance_type,
        count=spec.nodes,
        os_type="Linux",
        os_sku="Ubuntu",
        os_disk_type="Managed",  # encrypted through the cluster's disk encryption set
        os_disk_size_gb=GPU_OS_DISK_GB,
        vnet_subnet_id=subnet_id,
        enable_node_public_ip=False,
        gpu_profile=azure.containerservice.GPUProfileArgs(driver="Install"),
        node_taints=[GPU_TAINT],
        node_labels=GPU_POOL_LABELS,
        scale_set_priority="Spot" if spec.spot else "Regular",
        scale_set_eviction_policy="Delete" if spec.spot else None,
        spot_max_price=-1 if spec.spot else None,  # up to the on-demand price: evicted for capacity, never price
        tags=spec.tags(),
        opts=opts,
    )
    deployer_admin = azure.authorization.RoleAssignment(
        f"{name}-deployer-cluster-admin",
        scope=cluster.id,
        principal_id=deployer_object_id,
        role_definition_id=role_definition(subscription_id, AKS_RBAC_CLUSTER_ADMIN),
        opts=opts,
    )
    return AksCluster(
        control_plane_identity=identity,
        control_plane_grants=grants,
        cluster=cluster,
        gpu_pool=gpu_pool,
        deployer_admin=deployer_admin,
    )


def federate_pod_identity(
    name: str,
    group: azure.resources.ResourceGroup,
    identity: azure.managedidentity.UserAssignedIdentity,
    issuer: pulumi.Input[str],
    parent: pulumi.Resource,
) -> azure.managedidentity.FederatedIdentityCredential:
    """Entra ID accepts the workload's projected token from this cluster as the pods' identity, and no other."""
    return azure.managedidentity.FederatedIdentityCredential(
        f"{name}-pods-federation",
        resource_group_name=group.name,
        resource_name_=identity.name,
        issuer=issuer,
        subject=service_account_subject(),
        audiences=[WORKLOAD_IDENTITY_AUDIENCE],
        opts=pulumi.ResourceOptions(parent=parent),
    )


def user_kubeconfig(
    group: azure.resources.ResourceGroup, cluster: AksCluster, parent: pulumi.Resource
) -> pulumi.Output[str]:
    """The cluster's user kubeconfig in the exec format: the API server, its CA and a kubelogin command that gets
    the caller's own Entra ID token. With local accounts disabled it holds no credential; it is a secret anyway,
    because the same call returns a client certificate for a cluster whose local accounts were turned back on."""
    credentials = azure.containerservice.list_managed_cluster_user_credentials_output(
        resource_group_name=group.name,
        resource_name=cluster.cluster.name,
        format="exec",
        # The deployer's role must exist before anything uses this kubeconfig.
        opts=pulumi.InvokeOutputOptions(parent=parent, depends_on=[cluster.deployer_admin]),
    )
    return pulumi.Output.secret(
        credentials.apply(lambda result: with_kubelogin_login(base64.b64decode(result.kubeconfigs[0].value).decode()))
    )


def with_kubelogin_login(kubeconfig: str, login: str = KUBELOGIN_LOGIN) -> str:
    """`kubeconfig` with every kubelogin exec user set to `--login <login>`."""
    config: dict[str, Any] = yaml.safe_load(kubeconfig)
    for user in config.get("users") or []:
        exec_config = (user.get("user") or {}).get("exec")
        if not exec_config or exec_config.get("command") != "kubelogin":
            continue
        args = list(exec_config.get("args") or [])
        if "--login" in args:
            del args[args.index("--login") : args.index("--login") + 2]
        exec_config["args"] = [*args, "--login", login]
    return yaml.safe_dump(config, sort_keys=False)
