"""`foresight:gcp:ScaleOut`: Foresight on GKE, `foresight:nodes` GPU pods behind one load balancer, all sharing
one Memorystore for Valkey instance (`foresight:scaleOut: true`; stacks/cluster.py has the shared contract).

It creates, all as its children:
- network (`network.py`): the same VPC, subnet, Cloud Router and NAT as a single node (or the given network);
  GKE adds the pod and service ranges to the subnet and makes the load balancer's own firewall rules;
- kms (`kms.py`): the Cloud KMS key ring and key with 90-day rotation, used by the pods' service account, by
  Compute Engine's service agent (CMEK node boot disks and data volumes), and, added here, by GKE's service
  agent (etcd secrets) and Memorystore's (the tier's data), each granted on the key alone;
- cluster (`cluster.py`): the node and pod service accounts, the regional GKE cluster, a system pool and the
  GPU pool, and the Workload Identity binding of the workload's Kubernetes service account;
- tier (`tier.py`): the service connection policy, the Memorystore for Valkey instance (IAM auth, TLS, CMEK),
  the pods' connection role, and a ConfigMap holding the instance's CA;
- Kubernetes: a provider whose kubeconfig runs gke-gcloud-auth-plugin (no credential in state), the
  `foresight` namespace (restricted Pod Security), a CMEK StorageClass (pd-balanced, or hyperdisk-balanced for a
  GPU type that takes no Persistent Disk), and the `foresight:kubernetes:Workload`
  (stacks/kubernetes/component.py), whose objects wait for the namespace, the StorageClass, the CA ConfigMap and
  every grant the pods use;
- Vault (`stacks/vault.py`, `stacks/cluster.py`): the provider, KV mount and node policy, and a jwt auth method
  trusting the cluster's OIDC issuer with a role bound to the workload's service account;
- TLS (`stacks/tls.py`): the PKI mount, its internal root CA and a role that issues certificates for the load
  balancer's IP address only, once GKE assigns it.
Its outputs are the shared `StackOutputs`: the load balancer's IP, the cluster's name as the instance id.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from stacks.cluster import (
    K8S_NAMESPACE,
    PendingTls,
    create_cluster_vault_auth,
    deploy_time_settings,
    workload_spec,
)
from stacks.gcp.cluster import (
    GPU_POOL_LABELS,
    WORKLOAD_IDENTITY_ANNOTATION,
    ClusterIdentity,
    GkeCluster,
    check_cluster_spec,
    create_cluster_identity,
    create_gke,
    kubeconfig,
    oidc_issuer,
)
from stacks.gcp.compute import check_instance_types, node_disk_type
from stacks.gcp.identity import grant_audit_shipping, grant_origin_read
from stacks.gcp.kms import KEY_USER_ROLE, NodeKey, create_key
from stacks.gcp.network import Network, check_network_ids, create_network
from stacks.gcp.tier import (
    CA_CONFIG_MAP,
    TIER_PORT,
    SharedTier,
    create_tier,
    create_tier_ca_config_map,
    memorystore_service_agent,
)
from stacks.kubernetes.component import Workload, WorkloadArgs
from stacks.spec import HTTPS_PORT, RESP_PORT, ConfigError, StackOutputs, StackSpec
from stacks.tls import EndpointName, EndpointTls, create_endpoint_tls
from stacks.vault import JwtNodeAuth, SharedVault, VaultLayout, create_shared_vault

COMPONENT_TYPE = "foresight:gcp:ScaleOut"
STORAGE_CLASS = "foresight-cmek"
# GKE's metadata server, which hands the pods their Workload Identity tokens: 169.254.169.254:80, and 988 on
# the node itself under Dataplane V2.
METADATA_PORTS = (80, 988)
INTERNAL_LB = {"networking.gke.io/load-balancer-type": "Internal"}


@dataclass(frozen=True)
class ScaleOutArgs:
    """The validated inputs of a Google Cloud scale-out stack: the shared spec, checked against GKE."""

    spec: StackSpec

    @classmethod
    def from_spec(cls, spec: StackSpec) -> ScaleOutArgs:
        check_instance_types(spec)
        check_network_ids(spec)
        check_cluster_spec(spec)
        return cls(spec=spec)


def gke_service_agent(project_number: str) -> str:
    return f"serviceAccount:service-{project_number}@container-engine-robot.iam.gserviceaccount.com"


class ScaleOut(pulumi.ComponentResource):
    """Foresight's GPU pods on GKE with a Memorystore shared tier, their key, identity, certificates and Vault."""

    outputs: StackOutputs
    network: Network
    identity: ClusterIdentity
    audit_grants: list[gcp.storage.BucketIAMMember]  # the pods' access to foresight:auditBucket, when given
    origin_grants: list[gcp.storage.BucketIAMMember]  # the pods' read on foresight:originBuckets
    key: NodeKey
    key_grants: list[gcp.kms.CryptoKeyIAMMember]
    gke: GkeCluster
    tier: SharedTier
    kubernetes: k8s.Provider
    namespace: k8s.core.v1.Namespace
    storage_class: k8s.storage.v1.StorageClass
    tier_ca: k8s.core.v1.ConfigMap
    workload: Workload
    tls: EndpointTls
    vault: SharedVault
    vault_auth: JwtNodeAuth

    def __init__(self, name: str, args: ScaleOutArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        spec = args.spec
        project = gcp.organizations.get_project(opts=pulumi.InvokeOptions(parent=self))
        if not project.project_id or not project.number:
            raise ConfigError.one("gcp:project", "required; set it with `pulumi config set gcp:project <project id>`")
        project_id, project_number = project.project_id, project.number
        layout = VaultLayout.for_spec(spec)

        self.network = create_network(name, spec, parent=self)
        self.identity = create_cluster_identity(name, spec, project_id, parent=self)
        self.key = create_key(name, spec, project_number, self.identity.pod_email, parent=self)
        self.audit_grants = grant_audit_shipping(f"{name}-pods", spec, self.identity.pod_email, parent=self)
        self.origin_grants = grant_origin_read(f"{name}-pods", spec, self.identity.pod_email, parent=self)
        key_id = self.key.key.id
        self.key_grants = [
            gcp.kms.CryptoKeyIAMMember(
                f"{name}-key-{who}",
                crypto_key_id=key_id,
                role=KEY_USER_ROLE,
                member=member,
                opts=pulumi.ResourceOptions(parent=self),
            )
            for who, member in (
                ("gke", gke_service_agent(project_number)),
                ("memorystore", memorystore_service_agent(project_number)),
            )
        ]
        gke_grant, memorystore_grant = self.key_grants
        self.gke = create_gke(
            name,
            spec,
            project_id,
            self.network,
            self.identity,
            key_id,
            key_grants=[gke_grant, *self.key.users],
            parent=self,
        )
        self.tier = create_tier(
            name, spec, project_id, self.network, self.identity.pod_email, key_id, memorystore_grant, parent=self
        )

        self.kubernetes = k8s.Provider(
            f"{name}-gke",
            kubeconfig=kubeconfig(self.gke.cluster),
            delete_unreachable=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=self.kubernetes)
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=K8S_NAMESPACE,
                labels={
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "app.kubernetes.io/managed-by": "pulumi",
                },
            ),
            opts=k8s_opts,
        )
        self.storage_class = k8s.storage.v1.StorageClass(
            f"{name}-storage",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=STORAGE_CLASS),
            provisioner="pd.csi.storage.gke.io",
            parameters={"type": node_disk_type([spec.instance_type]), "disk-encryption-kms-key": key_id},
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            reclaim_policy="Delete",
            opts=k8s_opts,
        )
        self.tier_ca = create_tier_ca_config_map(name, self.tier, self.kubernetes, self.namespace, parent=self)

        workload = workload_spec(
            spec,
            layout,
            kms_provider="gcp",
            tier_port=TIER_PORT,
            node_selector=GPU_POOL_LABELS,
            storage_class=STORAGE_CLASS,
            service_annotations={} if spec.public_endpoint else INTERNAL_LB,
            extra_env={"GOOGLE_CLOUD_PROJECT": project_id},
            extra_egress_ports=METADATA_PORTS,
            shared_tier_ca_config_map=CA_CONFIG_MAP,
        )
        pending_tls = PendingTls.pending()
        self.workload = Workload(
            name,
            WorkloadArgs(
                spec=workload,
                provider=self.kubernetes,
                settings=deploy_time_settings(
                    kms_key_id=key_id, tier_url=self.tier.url, tier_auth="gcp", tls_host=pending_tls.host
                ),
                service_account_annotations={WORKLOAD_IDENTITY_ANNOTATION: self.identity.pod_email},
                pod_annotations=pending_tls.annotations,
                # The pods start once their namespace, disks, tier CA, GPUs and every grant they use exist.
                depends_on=[
                    self.namespace,
                    self.storage_class,
                    self.tier_ca,
                    self.gke.gpu_pool,
                    self.gke.workload_identity,
                    self.tier.connection_user,
                    *self.key.users,
                    *self.audit_grants,
                    *self.origin_grants,
                ],
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )

        self.vault = create_shared_vault(name, spec, layout, parent=self)
        self.tls = create_endpoint_tls(
            name, spec, layout, EndpointName(self.workload.endpoint, is_ip=True), self.vault.provider, parent=self
        )
        pending_tls.settle(self.tls)
        self.vault_auth = create_cluster_vault_auth(
            name,
            spec,
            layout,
            issuer=oidc_issuer(project_id, self.gke.cluster),
            node_policy=self.vault.node_policy,
            provider=self.vault.provider,
            parent=self,
        )
        self.outputs = StackOutputs(
            endpoint_host=self.workload.endpoint,
            resp_port=RESP_PORT,
            https_port=HTTPS_PORT,
            ca_certificate=self.tls.ca_certificate,
            kms_key_id=key_id,
            vault_role=self.vault_auth.role.role_name,
            vault_auth_mount=self.vault_auth.backend.path.apply(str),
            vault_kv_mount=self.vault.kv_mount.path,
            instance_id=self.gke.cluster.name,
            node_identity=self.identity.pod_email,
        )
        self.register_outputs(self.outputs.as_dict())
