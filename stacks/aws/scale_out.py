"""`foresight:aws:ScaleOut`: Foresight on an EKS GPU node group with an ElastiCache shared tier (`foresight:scaleOut`).

It creates, all as its children (stacks/cluster.py is the contract every cloud's scale-out keeps):
- network (`network.py`, as the single node has it): the VPC with public and private subnets, or the given
  ones; the own load balancer subnets carry the tag of Kubernetes' load balancer discovery in their own tags
  (given subnets are their owner's to tag; the single node's security groups belong to its endpoint; here EKS's
  cluster security group and the NLB's rules take their place);
- kms (`kms.py`): the customer-managed key, with rotation; its policy lets the EKS control plane's role use it
  (Kubernetes secrets), and the Auto Scaling service role for the nodes' volumes;
- cluster (`cluster.py`): the EKS cluster (secrets encrypted with the key, logs on, access entries only, the
  deployer as cluster admin), its OIDC provider, the GPU node group (IMDSv2 hop limit 1, encrypted root volumes,
  labelled and tainted for the GPU pods), the VPC CNI, CoreDNS and EBS CSI add-ons;
- tier (`tier.py`): ElastiCache for Valkey with IAM authentication, TLS and the key at rest;
- the pods' IAM role (IRSA): trusted by the cluster's OIDC provider for the workload's service account only; it
  may use the key and connect to the tier as its IAM user, nothing else;
- Kubernetes, through a provider that logs in with `aws eks get-token` (no token in the state): the namespace,
  an encrypted gp3 StorageClass on the key, NVIDIA's device plugin and the `foresight:kubernetes:Workload`
  (its LoadBalancer Service becomes an NLB through the cluster's built-in cloud controller);
- Vault (`stacks/vault.py`): the KV mount, the node policy, and a jwt auth method trusting the cluster's issuer for
  the service account; then TLS (`stacks/tls.py`): the PKI mount, its internal root CA and a role that issues
  certificates for the load balancer's name only, once the Service has it.
Its outputs are the shared `StackOutputs`; `instanceId` is the EKS cluster's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from stacks.aws.cluster import (
    GPU_POOL_LABELS,
    EksCluster,
    create_cluster,
    create_cluster_role,
    create_irsa_role,
    deployer_principal_arn,
)
from stacks.aws.compute import check_instance_types
from stacks.aws.identity import KMS_ACTIONS, grant_audit_shipping, grant_origin_read
from stacks.aws.kms import create_key
from stacks.aws.network import Network, check_network_ids, create_network
from stacks.aws.tier import PORT as TIER_PORT
from stacks.aws.tier import SharedTier, create_tier
from stacks.cluster import (
    K8S_NAMESPACE,
    PendingTls,
    create_cluster_vault_auth,
    deploy_time_settings,
    service_account_subject,
    workload_spec,
)
from stacks.kubernetes.component import Workload, WorkloadArgs, create_device_plugin
from stacks.spec import HTTPS_PORT, RESP_PORT, ConfigError, StackOutputs, StackSpec, config_key
from stacks.tls import EndpointName, EndpointTls, create_endpoint_tls
from stacks.vault import JwtNodeAuth, SharedVault, VaultLayout, create_shared_vault

COMPONENT_TYPE = "foresight:aws:ScaleOut"
STORAGE_CLASS = "foresight-encrypted"
ROLE_ARN_ANNOTATION = "eks.amazonaws.com/role-arn"
# The cluster's built-in cloud controller makes a Network Load Balancer of a LoadBalancer Service with this
# annotation (TCP passthrough, the pods terminate TLS); the AWS Load Balancer Controller is not needed.
NLB_ANNOTATIONS = {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}
INTERNAL_ANNOTATION = {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}
# Where the cloud controller looks for the load balancer's subnets.
PUBLIC_ELB_TAG = "kubernetes.io/role/elb"
INTERNAL_ELB_TAG = "kubernetes.io/role/internal-elb"
MIN_ZONES = 2  # EKS and a multi-AZ replication group both need subnets in two zones


@dataclass(frozen=True)
class ScaleOutArgs:
    """The validated inputs of an AWS scale-out stack: the shared spec, checked against what AWS accepts."""

    spec: StackSpec

    @classmethod
    def from_spec(cls, spec: StackSpec) -> ScaleOutArgs:
        check_instance_types(spec)
        check_network_ids(spec)
        if spec.subnet_ids and len(spec.subnet_ids) < MIN_ZONES:
            raise ConfigError.one(
                config_key("subnetIds"),
                "with foresight:scaleOut give private subnets in two zones or more (EKS and a multi-AZ ElastiCache "
                "need them)",
            )
        return cls(spec=spec)


def pods_policy(key_arn: str, replication_group_arn: str, user_arn: str) -> str:
    """The pods' only permissions: the service's envelope encryption with the stack's key, and an IAM login to
    the shared tier as its own user."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": list(KMS_ACTIONS), "Resource": key_arn},
                {"Effect": "Allow", "Action": "elasticache:Connect", "Resource": [replication_group_arn, user_arn]},
            ],
        }
    )


def load_balancer_annotations(spec: StackSpec) -> dict[str, str]:
    return {**NLB_ANNOTATIONS, **({} if spec.public_endpoint else INTERNAL_ANNOTATION)}


def kubeconfig(name: str, endpoint: str, certificate_authority: str, region: str) -> str:
    """A kubeconfig whose credential is `aws eks get-token`, run by the provider with the deployer's own AWS
    credentials on every `pulumi up`: no token or key is ever stored."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": name, "cluster": {"server": endpoint, "certificate-authority-data": certificate_authority}}
            ],
            "users": [
                {
                    "name": name,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "aws",
                            "args": ["eks", "get-token", "--cluster-name", name, "--region", region],
                            "interactiveMode": "Never",
                        }
                    },
                }
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
        }
    )


class ScaleOut(pulumi.ComponentResource):
    """Foresight's GPU pods on EKS behind one load balancer, sharing an ElastiCache tier, with Vault and TLS."""

    network: Network
    key: aws.kms.Key
    eks: EksCluster
    tier: SharedTier
    pods_role: aws.iam.Role
    pods_policy: aws.iam.RolePolicy
    pods_audit: aws.iam.RolePolicy | None  # write access to foresight:auditBucket, when given
    pods_origins: list[aws.iam.RolePolicy]  # read on foresight:originBuckets
    kubernetes: k8s.Provider
    namespace: k8s.core.v1.Namespace
    storage_class: k8s.storage.v1.StorageClass
    device_plugin: k8s.apps.v1.DaemonSet
    workload: Workload
    tls: EndpointTls
    vault: SharedVault
    vault_auth: JwtNodeAuth
    outputs: StackOutputs

    def __init__(self, name: str, args: ScaleOutArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        spec = args.spec
        invoke = pulumi.InvokeOptions(parent=self)
        partition = aws.get_partition(opts=invoke).partition
        caller = aws.get_caller_identity(opts=invoke)
        layout = VaultLayout.for_spec(spec)

        role = PUBLIC_ELB_TAG if spec.public_endpoint else INTERNAL_ELB_TAG
        self.network = create_network(name, spec, parent=self, lb_subnet_tags={role: "1"})
        if len(self.network.node_subnet_ids) < MIN_ZONES:
            raise ConfigError.one(
                config_key("instanceType"),
                f"{spec.instance_type} is offered in fewer than {MIN_ZONES} zones of {spec.region}; scale-out "
                "needs two",
            )
        cluster_role, cluster_role_policy = create_cluster_role(name, spec, partition, parent=self)
        node_key = create_key(name, spec, partition, caller.account_id, cluster_role.arn, parent=self)
        self.key = node_key.key
        self.eks = create_cluster(
            name,
            spec,
            partition=partition,
            role=cluster_role,
            role_policy=cluster_role_policy,
            subnet_ids=self.network.node_subnet_ids,
            key_arn=self.key.arn,
            deployer_arn=deployer_principal_arn(caller.arn, parent=self),
            parent=self,
        )
        self.tier = create_tier(
            name,
            spec,
            vpc_id=self.network.vpc_id,
            subnet_ids=self.network.node_subnet_ids,
            client_security_group_id=self.eks.security_group_id,
            key_arn=self.key.arn,
            parent=self,
        )
        self.pods_role = create_irsa_role(
            f"{name}-pods",
            spec,
            self.eks.oidc_provider,
            service_account_subject(),
            f"Foresight stack {spec.stack}: the service's pods",
            parent=self,
        )
        self.pods_policy = aws.iam.RolePolicy(
            f"{name}-pods",
            role=self.pods_role.id,
            policy=pulumi.Output.all(self.key.arn, self.tier.replication_group.arn, self.tier.pods_user.arn).apply(
                lambda arns: pods_policy(*arns)
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.pods_audit = grant_audit_shipping(f"{name}-pods", spec, self.pods_role, partition, parent=self)
        self.pods_origins = grant_origin_read(f"{name}-pods", spec, self.pods_role, partition, parent=self)
        self._create_kubernetes(name, spec)
        pending_tls = PendingTls.pending()
        self.workload = Workload(
            name,
            WorkloadArgs(
                spec=workload_spec(
                    spec,
                    layout,
                    kms_provider="aws",
                    tier_port=TIER_PORT,
                    node_selector=GPU_POOL_LABELS,
                    storage_class=STORAGE_CLASS,
                    service_annotations=load_balancer_annotations(spec),
                    extra_env={"AWS_REGION": spec.region, "AWS_DEFAULT_REGION": spec.region},
                ),
                provider=self.kubernetes,
                settings=deploy_time_settings(
                    kms_key_id=self.key.arn,
                    tier_url=self.tier.url,
                    tier_auth="aws",
                    tier_username=self.tier.pods_user.user_id,
                    tier_aws_cache=self.tier.replication_group.replication_group_id,
                    tls_host=pending_tls.host,
                ),
                service_account_annotations={ROLE_ARN_ANNOTATION: self.pods_role.arn},
                pod_annotations=pending_tls.annotations,
                # Its objects live in the namespace; the pods want their role's permissions and a disk to mount.
                depends_on=[self.namespace, self.pods_policy, self.storage_class,
                            *([self.pods_audit] if self.pods_audit else []), *self.pods_origins],
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        # The PKI role names the load balancer, so it comes after the Service; the pods come after the role (their
        # template carries the issuer's digest).
        self.vault = create_shared_vault(name, spec, layout, parent=self)
        self.tls = create_endpoint_tls(
            name, spec, layout, EndpointName(self.workload.endpoint, is_ip=False), self.vault.provider, parent=self
        )
        pending_tls.settle(self.tls)
        self.vault_auth = create_cluster_vault_auth(
            name, spec, layout, self.eks.issuer, self.vault.node_policy, self.vault.provider, parent=self
        )
        self.outputs = StackOutputs(
            endpoint_host=self.workload.endpoint,
            resp_port=RESP_PORT,
            https_port=HTTPS_PORT,
            ca_certificate=self.tls.ca_certificate,
            kms_key_id=self.key.arn,
            vault_role=self.vault_auth.role.role_name,
            vault_auth_mount=self.vault_auth.backend.path.apply(lambda path: path or layout.auth_mount),
            vault_kv_mount=self.vault.kv_mount.path,
            instance_id=self.eks.name,
            node_identity=self.pods_role.arn,
        )
        self.register_outputs(self.outputs.as_dict())

    def _create_kubernetes(self, name: str, spec: StackSpec) -> None:
        """The provider (once the deployer is cluster admin), the namespace, the StorageClass, the device plugin."""
        cluster = self.eks.cluster
        self.kubernetes = k8s.Provider(
            f"{name}-eks",
            kubeconfig=pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(
                lambda values: kubeconfig(values[0], values[1], values[2], spec.region)
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.eks.admin_policy]),
        )
        opts = pulumi.ResourceOptions(parent=self, provider=self.kubernetes)
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=K8S_NAMESPACE, labels={"app.kubernetes.io/managed-by": "pulumi"}),
            opts=opts,
        )
        self.storage_class = k8s.storage.v1.StorageClass(
            f"{name}-storage-class",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=STORAGE_CLASS),
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true", "kmsKeyId": self.key.arn},
            volume_binding_mode="WaitForFirstConsumer",
            reclaim_policy="Delete",
            allow_volume_expansion=True,
            opts=pulumi.ResourceOptions(
                parent=self, provider=self.kubernetes, depends_on=[self.eks.addons["aws-ebs-csi-driver"]]
            ),
        )
        self.device_plugin = create_device_plugin(name, GPU_POOL_LABELS, self.kubernetes, parent=self)
