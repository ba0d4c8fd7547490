"""AWS scale-out: the EKS cluster, its GPU node group and the IAM identities the cluster's pods take (IRSA).

- the cluster's IAM role (AmazonEKSClusterPolicy) and the cluster: the stack's private subnets, Kubernetes secrets
  envelope-encrypted with the stack's KMS key, control plane logs (api, audit, authenticator), authentication by
  access entries only (`API`: no aws-auth ConfigMap) and one access entry, cluster admin, for the identity that
  deploys (`deployer_principal_arn`). The API endpoint is private; it is public as well only when an allowed
  CIDR is public, and then only to the public allowed CIDRs (private ranges reach the private endpoint through
  the VPC, its peerings or VPN). The Kubernetes version is EKS's default at creation, upgraded by EKS itself
  at the end of standard support (`STANDARD` upgrade policy: no extended-support charges);
- the cluster's IAM OIDC provider, which IRSA roles trust (`create_irsa_role`);
- the managed GPU node group: the EKS-optimized AL2023 NVIDIA AMI, `foresight:nodes` nodes of the configured
  types (spot or on-demand), labelled `GPU_POOL_LABELS` and tainted `GPU_TAINT` so that only pods tolerating
  the GPU land there. Its launch template requires IMDSv2 with hop limit 1, so no pod (outside the host
  network) reaches the node role; pods use their own IRSA roles. The root volume is encrypted with the stack's
  key. The node role has the three standard worker policies and nothing else;
- add-ons: the VPC CNI with network policy enforcement on (the workload's NetworkPolicy holds), CoreDNS
  tolerating the GPU taint (every node carries it), and the EBS CSI driver with its IRSA role
  (AmazonEBSCSIDriverPolicy plus grants on the stack's key), so the pods' volumes are encrypted with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from stacks.aws.kms import EBS_ACTIONS
from stacks.spec import StackSpec, is_private_range

AMI_TYPE = "AL2023_x86_64_NVIDIA"
ROOT_DEVICE = "/dev/xvda"  # the AL2023 EKS AMIs' root device
ROOT_VOLUME_GB = 100  # the AMI, the CUDA service image and its layers
METADATA_HOP_LIMIT = 1  # the node itself only: pods use IRSA, never the node role
GPU_POOL_LABELS: Mapping[str, str] = {"foresight.dev/pool": "gpu"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}
CONTROL_PLANE_LOGS = ("api", "audit", "authenticator")
CLUSTER_POLICY = "AmazonEKSClusterPolicy"
NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")
EBS_CSI_POLICY = "service-role/AmazonEBSCSIDriverPolicy"
EBS_CSI_SERVICE_ACCOUNT = "system:serviceaccount:kube-system:ebs-csi-controller-sa"
ADMIN_ACCESS_POLICY = "AmazonEKSClusterAdminPolicy"
STS_AUDIENCE = "sts.amazonaws.com"
# The GPU nodes are the cluster's only nodes, so the add-ons' controllers must tolerate their taint.
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
ADDON_CONFIGURATIONS: Mapping[str, Mapping[str, Any]] = {
    "vpc-cni": {"enableNetworkPolicy": "true"},
    "coredns": {"tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}, GPU_TOLERATION]},
    "aws-ebs-csi-driver": {
        "controller": {"tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}, GPU_TOLERATION]}
    },
}
# What the EBS CSI driver needs on a customer-managed key: use it, and let EC2 hold grants for attached volumes.
EBS_GRANT_ACTIONS = ("kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant")


def cluster_name(spec: StackSpec) -> str:
    """The EKS cluster's name (`aws eks update-kubeconfig --name`): the stack's name in EKS's grammar."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", spec.name)[:100]


def deployer_principal_arn(caller_arn: str, parent: pulumi.Resource) -> str:
    """The IAM principal behind the deploying credentials: the role itself for an assumed-role session
    (`arn:aws:sts::<account>:assumed-role/<role>/<session>` names a session, which an access entry cannot), as
    IAM's own data source resolves it, else the user's ARN."""
    context = aws.iam.get_session_context(arn=caller_arn, opts=pulumi.InvokeOptions(parent=parent))
    return context.issuer_arn


def oidc_issuer(identities: Sequence[aws.eks.outputs.ClusterIdentity] | None) -> str:
    """The issuer URL in a cluster's `identities` output."""
    oidcs = (identities[0].oidcs if identities else None) or []
    issuer = oidcs[0].issuer if oidcs else None
    if not issuer:
        raise ValueError("the EKS cluster reports no OIDC issuer")
    return issuer


@dataclass(frozen=True)
class EksCluster:
    role: aws.iam.Role
    role_policy: aws.iam.RolePolicyAttachment
    cluster: aws.eks.Cluster
    admin_entry: aws.eks.AccessEntry
    admin_policy: aws.eks.AccessPolicyAssociation
    oidc_provider: aws.iam.OpenIdConnectProvider
    node_role: aws.iam.Role
    node_policies: list[aws.iam.RolePolicyAttachment]
    launch_template: aws.ec2.LaunchTemplate
    node_group: aws.eks.NodeGroup
    ebs_csi_role: aws.iam.Role
    addons: dict[str, aws.eks.Addon]

    @property
    def name(self) -> pulumi.Output[str]:
        return self.cluster.name

    @property
    def issuer(self) -> pulumi.Output[str]:
        """The cluster's OIDC issuer URL (https://oidc.eks.<region>.amazonaws.com/id/<id>)."""
        return self.cluster.identities.apply(oidc_issuer)

    @property
    def security_group_id(self) -> pulumi.Output[str]:
        """The cluster security group, which EKS puts on the control plane and on every managed node."""
        return self.cluster.vpc_config.cluster_security_group_id


def _service_role(
    name: str, spec: StackSpec, service: str, description: str, opts: pulumi.ResourceOptions
) -> aws.iam.Role:
    return aws.iam.Role(
        name,
        description=description,
        assume_role_policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
            }
        ),
        tags=spec.tags(),
        opts=opts,
    )


def create_cluster_role(
    name: str, spec: StackSpec, partition: str, parent: pulumi.Resource
) -> tuple[aws.iam.Role, aws.iam.RolePolicyAttachment]:
    """The role EKS's control plane assumes. It exists before the KMS key, whose policy lets it use the key for
    the envelope encryption of Kubernetes secrets."""
    opts = pulumi.ResourceOptions(parent=parent)
    role = _service_role(
        f"{name}-eks", spec, "eks.amazonaws.com", f"Foresight stack {spec.stack}: EKS control plane", opts
    )
    attachment = aws.iam.RolePolicyAttachment(
        f"{name}-eks", role=role.name, policy_arn=f"arn:{partition}:iam::aws:policy/{CLUSTER_POLICY}", opts=opts
    )
    return role, attachment


def cluster_vpc_config(spec: StackSpec, subnet_ids: Sequence[pulumi.Input[str]]) -> aws.eks.ClusterVpcConfigArgs:
    """The private endpoint always (nodes, and deployers inside the network); the public one only when an allowed
    CIDR is public, and then for the public allowed CIDRs only (private ranges reach the private endpoint)."""
    public = [str(cidr) for cidr in spec.allowed_cidrs if not is_private_range(cidr)]
    return aws.eks.ClusterVpcConfigArgs(
        subnet_ids=list(subnet_ids),
        endpoint_private_access=True,
        endpoint_public_access=bool(public),
        public_access_cidrs=public or None,
    )


def irsa_trust_policy(provider_arn: str, issuer: str, subject: str) -> str:
    """Only tokens the cluster issued for `subject` (one service account), for STS, may assume the role."""
    host = issuer.removeprefix("https://")
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": provider_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {"StringEquals": {f"{host}:sub": subject, f"{host}:aud": STS_AUDIENCE}},
                }
            ],
        }
    )


def create_irsa_role(
    name: str,
    spec: StackSpec,
    oidc_provider: aws.iam.OpenIdConnectProvider,
    subject: str,
    description: str,
    parent: pulumi.Resource,
) -> aws.iam.Role:
    """An IAM role that exactly one Kubernetes service account (`subject`) of this cluster may assume."""
    return aws.iam.Role(
        name,
        description=description,
        assume_role_policy=pulumi.Output.all(oidc_provider.arn, oidc_provider.url).apply(
            lambda values: irsa_trust_policy(values[0], values[1], subject)
        ),
        tags=spec.tags(),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def create_cluster(
    name: str,
    spec: StackSpec,
    *,
    partition: str,
    role: aws.iam.Role,
    role_policy: aws.iam.RolePolicyAttachment,
    subnet_ids: Sequence[pulumi.Input[str]],
    key_arn: pulumi.Input[str],
    deployer_arn: str,
    parent: pulumi.Resource,
) -> EksCluster:
    """The cluster, its admin access entry, OIDC provider, GPU node group and add-ons."""
    opts = pulumi.ResourceOptions(parent=parent)
    cluster = aws.eks.Cluster(
        f"{name}-eks",
        name=cluster_name(spec),
        upgrade_policy=aws.eks.ClusterUpgradePolicyArgs(support_type="STANDARD"),
        role_arn=role.arn,
        vpc_config=cluster_vpc_config(spec, subnet_ids),
        access_config=aws.eks.ClusterAccessConfigArgs(
            authentication_mode="API", bootstrap_cluster_creator_admin_permissions=False
        ),
        encryption_config=aws.eks.ClusterEncryptionConfigArgs(
            resources=["secrets"], provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=key_arn)
        ),
        enabled_cluster_log_types=list(CONTROL_PLANE_LOGS),
        tags=spec.tags(),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[role_policy]),
    )
    admin_entry = aws.eks.AccessEntry(
        f"{name}-deployer",
        cluster_name=cluster.name,
        principal_arn=deployer_arn,
        type="STANDARD",
        tags=spec.tags(),
        opts=opts,
    )
    admin_policy = aws.eks.AccessPolicyAssociation(
        f"{name}-deployer-admin",
        cluster_name=cluster.name,
        principal_arn=admin_entry.principal_arn,
        policy_arn=f"arn:{partition}:eks::aws:cluster-access-policy/{ADMIN_ACCESS_POLICY}",
        access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
        opts=opts,
    )
    # No thumbprint: IAM trusts the EKS issuer's certificate through its own CA library.
    oidc_provider = aws.iam.OpenIdConnectProvider(
        f"{name}-oidc",
        url=cluster.identities.apply(oidc_issuer),
        client_id_lists=[STS_AUDIENCE],
        tags=spec.tags(),
        opts=opts,
    )
    node_role = _service_role(
        f"{name}-gpu-node", spec, "ec2.amazonaws.com", f"Foresight stack {spec.stack}: EKS GPU nodes", opts
    )
    node_policies = [
        aws.iam.RolePolicyAttachment(
            f"{name}-gpu-node-{index}",
            role=node_role.name,
            policy_arn=f"arn:{partition}:iam::aws:policy/{policy}",
            opts=opts,
        )
        for index, policy in enumerate(NODE_POLICIES)
    ]
    launch_template = _node_launch_template(name, spec, key_arn, parent)
    node_group = aws.eks.NodeGroup(
        f"{name}-gpu",
        cluster_name=cluster.name,
        node_role_arn=node_role.arn,
        subnet_ids=list(subnet_ids),
        ami_type=AMI_TYPE,
        instance_types=list(spec.instance_types),
        capacity_type="SPOT" if spec.spot else "ON_DEMAND",
        scaling_config=aws.eks.NodeGroupScalingConfigArgs(
            desired_size=spec.nodes, min_size=spec.nodes, max_size=spec.nodes
        ),
        update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
        launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
            id=launch_template.id, version=launch_template.latest_version.apply(str)
        ),
        labels=dict(GPU_POOL_LABELS),
        taints=[aws.eks.NodeGroupTaintArgs(**GPU_TAINT)],
        tags=spec.tags(),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=node_policies),
    )
    ebs_csi_role = create_irsa_role(
        f"{name}-ebs-csi",
        spec,
        oidc_provider,
        EBS_CSI_SERVICE_ACCOUNT,
        f"Foresight stack {spec.stack}: the EBS CSI driver's controller",
        parent,
    )
    ebs_csi_policies = [
        aws.iam.RolePolicyAttachment(
            f"{name}-ebs-csi",
            role=ebs_csi_role.name,
            policy_arn=f"arn:{partition}:iam::aws:policy/{EBS_CSI_POLICY}",
            opts=opts,
        ),
        aws.iam.RolePolicy(
            f"{name}-ebs-csi-kms",
            role=ebs_csi_role.id,
            policy=pulumi.Output.from_input(key_arn).apply(ebs_csi_key_policy),
            opts=opts,
        ),
    ]
    addons = {
        addon: aws.eks.Addon(
            f"{name}-{addon}",
            cluster_name=cluster.name,
            addon_name=addon,
            configuration_values=json.dumps(configuration),
            service_account_role_arn=ebs_csi_role.arn if addon == "aws-ebs-csi-driver" else None,
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            tags=spec.tags(),
            # Controllers need a node to run on; the EBS CSI driver its role's permissions.
            opts=pulumi.ResourceOptions(
                parent=parent, depends_on=[node_group, *(ebs_csi_policies if addon == "aws-ebs-csi-driver" else [])]
            ),
        )
        for addon, configuration in ADDON_CONFIGURATIONS.items()
    }
    return EksCluster(
        role=role,
        role_policy=role_policy,
        cluster=cluster,
        admin_entry=admin_entry,
        admin_policy=admin_policy,
        oidc_provider=oidc_provider,
        node_role=node_role,
        node_policies=node_policies,
        launch_template=launch_template,
        node_group=node_group,
        ebs_csi_role=ebs_csi_role,
        addons=addons,
    )


def ebs_csi_key_policy(key_arn: str) -> str:
    """The EBS CSI driver may use the stack's key for the volumes it creates, and grant EC2 its use for
    attaching them (AWS's documented policy for a customer-managed key), on this key only."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": list(EBS_ACTIONS), "Resource": key_arn},
                {
                    "Effect": "Allow",
                    "Action": list(EBS_GRANT_ACTIONS),
                    "Resource": key_arn,
                    "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
                },
            ],
        }
    )


def _node_launch_template(
    name: str, spec: StackSpec, key_arn: pulumi.Input[str], parent: pulumi.Resource
) -> aws.ec2.LaunchTemplate:
    """What EKS's launch template cannot say: IMDSv2 with hop limit 1, the root volume under the stack's key.
    No AMI, instance type, profile or security group: the node group sets those (and adds the cluster group)."""
    tags = {**spec.tags(), "Name": f"{spec.name}-gpu-node"}
    return aws.ec2.LaunchTemplate(
        f"{name}-gpu-node",
        description=f"Foresight EKS GPU nodes of stack {spec.stack}",
        metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
            http_endpoint="enabled",
            http_tokens="required",
            http_put_response_hop_limit=METADATA_HOP_LIMIT,
            instance_metadata_tags="disabled",
        ),
        block_device_mappings=[
            aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name=ROOT_DEVICE,
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_size=ROOT_VOLUME_GB,
                    volume_type="gp3",
                    encrypted="true",
                    kms_key_id=key_arn,
                    delete_on_termination="true",
                ),
            )
        ],
        update_default_version=True,
        tag_specifications=[
            aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
            for kind in ("instance", "volume", "network-interface")
        ],
        tags=spec.tags(),
        opts=pulumi.ResourceOptions(parent=parent),
    )
