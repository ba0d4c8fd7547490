"""`foresight:azure:ScaleOut`: Foresight on an AKS GPU pool with Azure Cache for Redis, from the shared `StackSpec`
(`foresight:scaleOut: true`; stacks/cluster.py has the contract every cloud follows).

It creates, all as its children, in a resource group of its own:
- network (`network.py`): the own virtual network, node subnet and NAT gateway (or the given network and subnet);
- kms (`kms.py`): the Key Vault, its rotating key and the disk encryption set, with the key's roles for the set
  and for the pods' identity (the service's envelope encryption);
- cluster (`cluster.py`): the pods' managed identity, the AKS cluster (Entra ID only, OIDC issuer, workload
  identity, CMK-encrypted node disks, Cilium network policy) and its GPU pool, the deployer's cluster role, and
  the federated credential binding the pods' identity to the workload's service account;
- tier (`tier.py`): Azure Cache for Redis behind a private endpoint, Entra ID only, with an access policy for
  the pods' identity;
- Kubernetes, through a provider whose kubeconfig holds no credential (kubelogin, Entra ID): the `foresight`
  namespace, a StorageClass whose Azure disks use the disk encryption set, NVIDIA's device plugin on the GPU
  pool, and the `foresight:kubernetes:Workload` (one pod per GPU node behind a load balancer whose public address
  has a DNS label, or an internal one when the stack is private);
- Vault (`stacks/vault.py`): the KV mount, the node policy, and a jwt auth method trusting the cluster's OIDC
  issuer with a role for the workload's service account (`stacks/cluster.py`); then TLS (`stacks/tls.py`): the PKI
  mount, its internal root CA and a role that issues certificates for the load balancer's name only.
Its outputs are the shared `StackOutputs`: the endpoint's DNS name (or private address), the key's URL, the
cluster's name as `instanceId`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure
import pulumi_kubernetes as k8s

from stacks.azure.cluster import (
    GPU_POOL_LABELS,
    create_cluster,
    create_pod_identity,
    federate_pod_identity,
    user_kubeconfig,
)
from stacks.azure.compute import check_instance_types
from stacks.azure.identity import grant_audit_shipping, grant_origin_read
from stacks.azure.kms import create_key
from stacks.azure.network import check_network_ids, create_virtual_network, dns_label
from stacks.azure.tier import TLS_PORT, check_private_dns_zone_id, create_tier
from stacks.cluster import (
    K8S_NAMESPACE,
    PendingTls,
    create_cluster_vault_auth,
    deploy_time_settings,
    workload_spec,
)
from stacks.kubernetes.component import Workload, WorkloadArgs, create_device_plugin
from stacks.spec import HTTPS_PORT, RESP_PORT, ConfigError, StackOutputs, StackSpec, config_key
from stacks.tls import EndpointName, create_endpoint_tls
from stacks.vault import VaultLayout, create_shared_vault

COMPONENT_TYPE = "foresight:azure:ScaleOut"
DNS_LABEL_ANNOTATION = "service.beta.kubernetes.io/azure-dns-label-name"
INTERNAL_LB_ANNOTATION = "service.beta.kubernetes.io/azure-load-balancer-internal"
CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
USE_WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use"
STORAGE_CLASS = "foresight-cmk"
# AKS taints every Spot node with this and lets nobody remove it; pods for a Spot pool must tolerate it.
SPOT_TOLERATION = {
    "key": "kubernetes.azure.com/scalesetpriority",
    "operator": "Equal",
    "value": "spot",
    "effect": "NoSchedule",
}


@dataclass(frozen=True)
class ScaleOutArgs:
    """The validated inputs of an Azure scale-out stack: the shared spec, checked against what AKS accepts."""

    spec: StackSpec

    @classmethod
    def from_spec(cls, spec: StackSpec) -> ScaleOutArgs:
        check_instance_types(spec)
        check_network_ids(spec)
        check_private_dns_zone_id(spec)
        if spec.fallback_instance_types:
            raise ConfigError.one(
                config_key("fallbackInstanceTypes"),
                "not with foresight:scaleOut on Azure: an AKS node pool has one VM size (foresight:instanceType)",
            )
        return cls(spec=spec)


def cloudapp_fqdn(spec: StackSpec, subscription_id: str) -> str:
    """The public load balancer address's name: the DNS label AKS gives it, in the cluster's region."""
    return f"{dns_label(spec, subscription_id)}.{spec.region}.cloudapp.azure.com"


class ScaleOut(pulumi.ComponentResource):
    """`foresight:nodes` Foresight pods on an AKS GPU pool behind one load balancer, sharing Azure Cache for Redis."""

    group: azure.resources.ResourceGroup
    kubernetes: k8s.Provider
    namespace: k8s.core.v1.Namespace
    storage_class: k8s.storage.v1.StorageClass
    device_plugin: k8s.apps.v1.DaemonSet
    workload: Workload
    outputs: StackOutputs

    def __init__(self, name: str, args: ScaleOutArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        spec = args.spec
        super().__init__(COMPONENT_TYPE, name, None, opts)
        # On a Spot GPU pool the GPU pods (the workload's and the device plugin's) tolerate AKS's Spot taint.
        gpu_tolerations = (SPOT_TOLERATION,) if spec.spot else ()
        client = azure.authorization.get_client_config(opts=pulumi.InvokeOptions(parent=self))
        layout = VaultLayout.for_spec(spec)
        child = pulumi.ResourceOptions(parent=self)

        self.group = azure.resources.ResourceGroup(f"{name}-rg", location=spec.region, tags=spec.tags(), opts=child)
        egress_cidr: pulumi.Output[str] | None = None
        if spec.vpc_id is not None:
            self.virtual_network = None
            subnet_id: pulumi.Input[str] = spec.subnet_ids[0]
            vnet_id: pulumi.Input[str] = spec.vpc_id
        else:
            self.virtual_network = create_virtual_network(name, spec, self.group, parent=self)
            subnet_id, vnet_id = self.virtual_network.subnet.id, self.virtual_network.vnet.id
            egress_cidr = self.virtual_network.egress_cidr
        self.pod_identity = create_pod_identity(name, spec, self.group, parent=self)
        self.audit_grant = grant_audit_shipping(f"{name}-pods", spec, self.pod_identity.principal_id, parent=self)
        self.origin_grants = grant_origin_read(f"{name}-pods", spec, self.pod_identity.principal_id, parent=self)
        self.key = create_key(
            name,
            spec,
            self.group,
            client.tenant_id,
            client.subscription_id,
            self.pod_identity.principal_id,
            parent=self,
        )
        self.cluster = create_cluster(
            name,
            spec,
            self.group,
            subnet_id=subnet_id,
            encryption_set_id=self.key.encryption_set.id,
            tenant_id=client.tenant_id,
            subscription_id=client.subscription_id,
            deployer_object_id=client.object_id,
            parent=self,
            egress_cidr=egress_cidr,
        )
        self.federated_credential = federate_pod_identity(
            name, self.group, self.pod_identity, self.cluster.oidc_issuer, parent=self
        )
        self.tier = create_tier(name, spec, self.group, subnet_id, vnet_id, self.pod_identity.principal_id, parent=self)

        self.kubernetes = k8s.Provider(
            f"{name}-k8s", kubeconfig=user_kubeconfig(self.group, self.cluster, parent=self), opts=child
        )
        in_cluster = pulumi.ResourceOptions(parent=self, provider=self.kubernetes)
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={
                "name": K8S_NAMESPACE,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "baseline",
                    "pod-security.kubernetes.io/warn": "restricted",
                },
            },
            opts=in_cluster,
        )
        self.storage_class = k8s.storage.v1.StorageClass(
            f"{name}-storage",
            metadata={"name": STORAGE_CLASS},
            provisioner="disk.csi.azure.com",
            parameters={
                "skuName": "Premium_LRS",
                "diskEncryptionSetID": self.key.encryption_set.id,
                "networkAccessPolicy": "DenyAll",  # no SAS export of the data disks
            },
            reclaim_policy="Delete",
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            opts=in_cluster,
        )
        self.device_plugin = create_device_plugin(
            name, GPU_POOL_LABELS, self.kubernetes, parent=self, tolerations=gpu_tolerations
        )

        public = spec.public_endpoint
        service_annotations = (
            {DNS_LABEL_ANNOTATION: dns_label(spec, client.subscription_id)}
            if public
            else {INTERNAL_LB_ANNOTATION: "true"}
        )
        pending_tls = PendingTls.pending()
        settings = deploy_time_settings(
            kms_key_id=self.key.key.key_uri,
            tier_url=self.tier.url,
            tier_auth="azure",
            tls_host=pending_tls.host,
            tier_username=self.pod_identity.principal_id,
        )
        self.workload = Workload(
            f"{name}-workload",
            WorkloadArgs(
                spec=workload_spec(
                    spec,
                    layout,
                    kms_provider="azure",
                    tier_port=TLS_PORT,
                    node_selector=GPU_POOL_LABELS,
                    storage_class=STORAGE_CLASS,
                    service_annotations=service_annotations,
                    pod_labels={USE_WORKLOAD_IDENTITY_LABEL: "true"},
                    tolerations=gpu_tolerations,
                ),
                provider=self.kubernetes,
                settings=settings,
                service_account_annotations={CLIENT_ID_ANNOTATION: self.pod_identity.client_id},
                pod_annotations=pending_tls.annotations,
                # The pods start once their namespace, disks, GPUs and every permission they use exist.
                depends_on=[
                    self.namespace,
                    self.storage_class,
                    self.device_plugin,
                    self.cluster.gpu_pool,
                    self.federated_credential,
                    self.tier.access_assignment,
                    self.tier.dns_zone_group,
                    *self.key.users,
                    *([self.audit_grant] if self.audit_grant else []),
                    *self.origin_grants,
                ],
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )

        if public:
            fqdn = cloudapp_fqdn(spec, client.subscription_id)
            endpoint_host = self.workload.endpoint.apply(lambda _address: fqdn)  # named once the address exists
            endpoint = EndpointName(fqdn, is_ip=False)
        else:
            endpoint_host = self.workload.endpoint
            endpoint = EndpointName(self.workload.endpoint, is_ip=True)
        self.vault = create_shared_vault(name, spec, layout, parent=self)
        self.tls = create_endpoint_tls(name, spec, layout, endpoint, self.vault.provider, parent=self)
        pending_tls.settle(self.tls)
        self.vault_auth = create_cluster_vault_auth(
            name,
            spec,
            layout,
            issuer=self.cluster.oidc_issuer,
            node_policy=self.vault.node_policy,
            provider=self.vault.provider,
            parent=self,
        )
        self.outputs = StackOutputs(
            endpoint_host=endpoint_host,
            resp_port=RESP_PORT,
            https_port=HTTPS_PORT,
            ca_certificate=self.tls.ca_certificate,
            kms_key_id=self.key.key.key_uri,
            vault_role=self.vault_auth.role.role_name,
            vault_auth_mount=self.vault_auth.backend.path.apply(str),
            vault_kv_mount=self.vault.kv_mount.path,
            instance_id=self.cluster.cluster.name,
            node_identity=self.pod_identity.principal_id,
        )
        self.register_outputs(self.outputs.as_dict())
