"""`pulumi up` on AWS with `foresight:scaleOut: true` and 3 nodes: EKS, ElastiCache, IRSA, the workload, Vault."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stacks.aws.identity import KMS_ACTIONS
from stacks.aws.tier import COMMANDS, elasticache_id
from stacks.cluster import service_account_subject
from stacks.spec import ConfigError
from tests.stacks import mockrun
from tests.stacks.conftest import RunStack
from tests.stacks.endpoint_tls import assert_endpoint_tls, assert_no_key_in_state, layout_of
from tests.stacks.kubernetes_objects import (
    WAIT_FOR_THE_ADDRESS,
    assert_deploy_order,
    assert_pods_read_the_scrape_token,
    assert_valid,
    pod_issuer_digest,
    with_a_new_ca,
)
from tests.stacks.mockrun import (
    ACCOUNT,
    EKS_CLUSTER_SECURITY_GROUP,
    EKS_LB_HOSTNAME,
    EKS_OIDC_ISSUER,
    ELASTICACHE_PRIMARY,
    KMS_KEY,
    LAUNCH_TEMPLATE,
    REQUIRED_CONFIG,
    ROOT,
    MockRun,
    Registered,
    fake_cloud_invoke,
    fake_pem,
    is_secret,
)
from tests.stacks.policy_harness import POLICIES, assert_case, violations

SCALE_OUT = {"foresight:scaleOut": "true", "foresight:nodes": "3"}
KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OIDC_HOST = EKS_OIDC_ISSUER.removeprefix("https://")
OIDC_PROVIDER_ARN = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{OIDC_HOST}"
KUBERNETES_VERSION = "1.33.0"
CLUSTER = "aws:eks/cluster:Cluster"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
REPLICATION_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
ELASTICACHE_USER = "aws:elasticache/user:User"
ROLE = "aws:iam/role:Role"
POLICY = "aws:iam/rolePolicy:RolePolicy"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
SUBNET = "aws:ec2/subnet:Subnet"
POD_ACCESS_STRING = (
    "on ~fs:* &foresight:invalidate -@all +auth +hello +ping +get +pttl +set +del +unlink +scan +publish +subscribe"
    " +hsetnx +hget +hset +expire +hgetall"
)


@pytest.fixture(scope="module")
def scale_out(run_stack: RunStack) -> MockRun:
    return run_stack(SCALE_OUT)


@pytest.fixture(scope="module")
def private(run_stack: RunStack) -> MockRun:
    return run_stack({**SCALE_OUT, "foresight:allowedCidrs": '["10.0.0.0/8"]'})


@pytest.fixture(scope="module")
def spot(run_stack: RunStack) -> MockRun:
    return run_stack({**SCALE_OUT, "foresight:spot": "true", "foresight:fallbackInstanceTypes": '["g5.xlarge"]'})


def _named(run: MockRun, type_: str, name: str) -> dict[str, Any]:
    (found,) = [resource.props for resource in run.of_type(type_) if resource.name == name]
    return found


def _trust(run: MockRun, name: str) -> list[dict[str, Any]]:
    return json.loads(_named(run, ROLE, name)["assumeRolePolicy"])["Statement"]


def _workload_children(run: MockRun) -> list[Registered]:
    workload = run.one("foresight:kubernetes:Workload")
    return [resource for resource in run if resource.parent == workload.urn]


def test_scale_out_builds_one_scale_out_component_instead_of_a_gpu_node(scale_out: MockRun) -> None:
    types = Counter(resource.type for resource in scale_out)
    assert types["foresight:aws:ScaleOut"] == 1 and "foresight:aws:GpuNode" not in types
    assert not {
        "aws:autoscaling/group:Group",
        "aws:lb/loadBalancer:LoadBalancer",
        "aws:iam/instanceProfile:InstanceProfile",
    } & set(types)
    expected = {
        CLUSTER: 1,
        NODE_GROUP: 1,
        LAUNCH_TEMPLATE: 1,
        "aws:eks/accessEntry:AccessEntry": 1,
        "aws:eks/accessPolicyAssociation:AccessPolicyAssociation": 1,
        "aws:eks/addon:Addon": 3,
        "aws:iam/openIdConnectProvider:OpenIdConnectProvider": 1,
        ROLE: 4,  # control plane, nodes, EBS CSI driver, pods
        KMS_KEY: 1,
        REPLICATION_GROUP: 1,
        ELASTICACHE_USER: 2,
        "aws:elasticache/userGroup:UserGroup": 1,
        "aws:elasticache/subnetGroup:SubnetGroup": 1,
        "aws:elasticache/parameterGroup:ParameterGroup": 1,
        "pulumi:providers:kubernetes": 1,
        "kubernetes:core/v1:Namespace": 1,
        "kubernetes:storage.k8s.io/v1:StorageClass": 1,
        "kubernetes:apps/v1:DaemonSet": 1,
        "foresight:kubernetes:Workload": 1,
        STATEFUL_SET: 1,
        "vault:jwt/authBackend:AuthBackend": 1,
        "vault:jwt/authBackendRole:AuthBackendRole": 1,
        mockrun.PKI_ROOT_CERT: 1,
        mockrun.PKI_ROLE: 1,
    }
    assert {type_: types[type_] for type_ in expected} == expected


def test_everything_is_a_child_of_the_component_and_the_workloads_of_the_workload(scale_out: MockRun) -> None:
    component = scale_out.one("foresight:aws:ScaleOut")
    assert component.parent.endswith("pulumi:pulumi:Stack::foresight-aws-test")
    workload = scale_out.one("foresight:kubernetes:Workload")
    inner = _workload_children(scale_out)
    assert len(inner) == 7
    outer = [resource for resource in scale_out if resource is not component and resource not in inner]
    assert len(outer) > 55
    assert [r.name for r in outer if r.parent != component.urn] == []
    provider = scale_out.one("pulumi:providers:kubernetes")
    for resource in scale_out:
        if resource.type.startswith("kubernetes:"):
            assert resource.provider.startswith(provider.urn + "::"), resource.name
    assert workload.parent == component.urn


def test_gpu_node_group_has_the_configured_size_types_labels_and_taint(scale_out: MockRun) -> None:
    group = scale_out.one(NODE_GROUP).props
    assert group["scalingConfig"] == {"desiredSize": 3, "minSize": 3, "maxSize": 3}
    assert group["instanceTypes"] == ["g6.xlarge"]
    assert group["capacityType"] == "ON_DEMAND"
    assert group["amiType"] == "AL2023_x86_64_NVIDIA"
    assert group["labels"] == {"foresight.dev/pool": "gpu"}
    assert group["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert group["subnetIds"] == ["foresight-private-0-id", "foresight-private-1-id"]
    assert group["clusterName"] == "foresight-aws-test"
    assert group["launchTemplate"] == {"id": "foresight-gpu-node-id", "version": "1"}


def test_spot_node_group_takes_the_fallback_types(spot: MockRun) -> None:
    group = spot.one(NODE_GROUP).props
    assert group["capacityType"] == "SPOT"
    assert group["instanceTypes"] == ["g6.xlarge", "g5.xlarge"]


def test_pods_and_device_plugin_land_on_the_gpu_nodes_and_tolerate_their_taint(scale_out: MockRun) -> None:
    labels = scale_out.one(NODE_GROUP).props["labels"]
    pod = scale_out.one(STATEFUL_SET).props["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == labels
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert scale_out.one(STATEFUL_SET).props["spec"]["replicas"] == 3
    plugin = scale_out.one("kubernetes:apps/v1:DaemonSet").props["spec"]["template"]["spec"]
    assert plugin["nodeSelector"] == labels
    addons = {
        addon.props["addonName"]: json.loads(addon.props["configurationValues"])
        for addon in scale_out.of_type("aws:eks/addon:Addon")
    }
    gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert gpu_toleration in addons["coredns"]["tolerations"]
    assert gpu_toleration in addons["aws-ebs-csi-driver"]["controller"]["tolerations"]
    assert addons["vpc-cni"] == {"enableNetworkPolicy": "true"}


def test_nodes_require_imdsv2_with_hop_limit_one_and_take_nothing_else_from_the_template(scale_out: MockRun) -> None:
    template = scale_out.one(LAUNCH_TEMPLATE).props
    assert template["metadataOptions"]["httpTokens"] == "required"
    assert template["metadataOptions"]["httpPutResponseHopLimit"] == 1
    # EKS picks the AMI and adds the cluster security group; the node group names the types and the role.
    assert not {
        "imageId",
        "instanceType",
        "iamInstanceProfile",
        "networkInterfaces",
        "vpcSecurityGroupIds",
        "userData",
    } & set(template)


def test_node_role_has_the_three_worker_policies_and_nothing_else(scale_out: MockRun) -> None:
    node_role = scale_out.one(NODE_GROUP).props["nodeRoleArn"].rsplit("/", 1)[1]
    attached = sorted(
        a.props["policyArn"]
        for a in scale_out.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if a.props["role"] == node_role
    )
    assert attached == [
        "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
        "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
        "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    ]
    assert not [p for p in scale_out.of_type("aws:iam/rolePolicy:RolePolicy") if p.props["role"] == node_role]
    assert _trust(scale_out, "foresight-gpu-node") == [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]


def test_the_stack_key_encrypts_secrets_volumes_and_the_tier(scale_out: MockRun) -> None:
    key = scale_out.one(KMS_KEY).props
    assert key["enableKeyRotation"] is True
    cluster = scale_out.one(CLUSTER).props
    assert cluster["encryptionConfig"] == {"resources": ["secrets"], "provider": {"keyArn": KEY_ARN}}
    (volume,) = scale_out.one(LAUNCH_TEMPLATE).props["blockDeviceMappings"]
    assert (volume["deviceName"], volume["ebs"]["encrypted"], volume["ebs"]["kmsKeyId"]) == (
        "/dev/xvda",
        "true",
        KEY_ARN,
    )
    tier = scale_out.one(REPLICATION_GROUP).props
    assert (tier["atRestEncryptionEnabled"], tier["kmsKeyId"]) == (True, KEY_ARN)
    storage = scale_out.one("kubernetes:storage.k8s.io/v1:StorageClass").props
    assert storage["provisioner"] == "ebs.csi.aws.com"
    assert storage["parameters"] == {"type": "gp3", "encrypted": "true", "kmsKeyId": KEY_ARN}
    assert storage["volumeBindingMode"] == "WaitForFirstConsumer"
    claim = scale_out.one(STATEFUL_SET).props["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == storage["metadata"]["name"]
    assert claim["resources"]["requests"]["storage"] == "100Gi"
    # The control plane's role is the one the key policy lets use the key (Kubernetes secrets).
    statements = {s["Sid"]: s for s in json.loads(key["policy"])["Statement"]}
    assert statements["NodeRoleUsesTheKey"]["Principal"] == {"AWS": cluster["roleArn"]}


def test_ebs_csi_driver_runs_as_its_own_irsa_role_with_grants_on_the_key(scale_out: MockRun) -> None:
    addon = next(
        a.props for a in scale_out.of_type("aws:eks/addon:Addon") if a.props["addonName"] == "aws-ebs-csi-driver"
    )
    role_arn = addon["serviceAccountRoleArn"]
    assert role_arn == f"arn:aws:iam::{ACCOUNT}:role/foresight-ebs-csi-a1b2c3d"
    (trust,) = _trust(scale_out, "foresight-ebs-csi")
    assert trust["Condition"]["StringEquals"] == {
        f"{OIDC_HOST}:sub": "system:serviceaccount:kube-system:ebs-csi-controller-sa",
        f"{OIDC_HOST}:aud": "sts.amazonaws.com",
    }
    attachment = _named(scale_out, "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "foresight-ebs-csi")
    assert attachment["policyArn"] == "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
    grants = json.loads(_named(scale_out, POLICY, "foresight-ebs-csi-kms")["policy"])["Statement"]
    assert all(statement["Resource"] == KEY_ARN for statement in grants)
    assert grants[1]["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}


def test_cluster_uses_access_entries_logs_and_admits_the_deployer_only(scale_out: MockRun) -> None:
    cluster = scale_out.one(CLUSTER).props
    assert cluster["accessConfig"] == {"authenticationMode": "API", "bootstrapClusterCreatorAdminPermissions": False}
    assert cluster["enabledClusterLogTypes"] == ["api", "audit", "authenticator"]
    assert cluster["upgradePolicy"] == {"supportType": "STANDARD"} and "version" not in cluster
    assert cluster["vpcConfig"]["subnetIds"] == ["foresight-private-0-id", "foresight-private-1-id"]
    assert cluster["vpcConfig"]["endpointPrivateAccess"] is True
    assert cluster["vpcConfig"]["endpointPublicAccess"] is True
    assert cluster["vpcConfig"]["publicAccessCidrs"] == ["203.0.113.0/24"]
    entry = scale_out.one("aws:eks/accessEntry:AccessEntry").props
    assert (entry["principalArn"], entry["type"]) == (f"arn:aws:iam::{ACCOUNT}:user/deployer", "STANDARD")
    association = scale_out.one("aws:eks/accessPolicyAssociation:AccessPolicyAssociation").props
    assert association["policyArn"] == "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
    assert association["accessScope"] == {"type": "cluster"}
    assert association["principalArn"] == entry["principalArn"]


def test_an_assumed_role_deployer_gets_the_roles_access_entry(run_stack: RunStack) -> None:
    session = f"arn:aws:sts::{ACCOUNT}:assumed-role/platform-admin/alice@example.com"

    def invoke(token: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"id": ACCOUNT, "accountId": ACCOUNT, "arn": session, "userId": "AROA:alice"}
        return fake_cloud_invoke(token, args)

    run = run_stack(SCALE_OUT, invoke=invoke)
    entry = run.one("aws:eks/accessEntry:AccessEntry").props
    assert entry["principalArn"] == f"arn:aws:iam::{ACCOUNT}:role/platform-admin"


def test_private_cidrs_keep_the_api_and_the_load_balancer_private(private: MockRun) -> None:
    vpc = private.one(CLUSTER).props["vpcConfig"]
    assert (vpc["endpointPrivateAccess"], vpc["endpointPublicAccess"]) == (True, False)
    assert "publicAccessCidrs" not in vpc
    balancer = next(
        s for s in private.of_type("kubernetes:core/v1:Service") if s.props["spec"].get("type") == "LoadBalancer"
    )
    assert balancer.props["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
        "service.beta.kubernetes.io/aws-load-balancer-internal": "true",
        **WAIT_FOR_THE_ADDRESS,
    }
    assert _role_tagged_subnets(private) == {
        "kubernetes.io/role/internal-elb": ["foresight-private-0", "foresight-private-1"]
    }


def test_public_cidrs_get_an_internet_facing_nlb_in_tagged_public_subnets(scale_out: MockRun) -> None:
    balancer = next(
        s for s in scale_out.of_type("kubernetes:core/v1:Service") if s.props["spec"].get("type") == "LoadBalancer"
    )
    assert balancer.props["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
        **WAIT_FOR_THE_ADDRESS,
    }
    assert balancer.props["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert _role_tagged_subnets(scale_out) == {"kubernetes.io/role/elb": ["foresight-public-0", "foresight-public-1"]}


def _role_tagged_subnets(run: MockRun) -> dict[str, list[str]]:
    """Load balancer role tag -> the subnets whose own tags carry it (value "1")."""
    tagged: dict[str, list[str]] = {}
    for subnet in run.of_type(SUBNET):
        for key, value in subnet.props["tags"].items():
            if key.startswith("kubernetes.io/role/"):
                assert value == "1"
                tagged.setdefault(key, []).append(subnet.name)
    return {key: sorted(names) for key, names in tagged.items()}


@pytest.mark.parametrize("variant", ["scale_out", "private"])
def test_no_ec2_tag_targets_a_subnet_the_stack_tags_itself(variant: str, request: pytest.FixtureRequest) -> None:
    """The Subnet's next update (after a refresh) would remove a tag an aws.ec2.Tag added, and keep it removed."""
    run: MockRun = request.getfixturevalue(variant)
    own_subnets = {f"{subnet.name}-id" for subnet in run.of_type(SUBNET)}  # the fake cloud's ids
    assert len(own_subnets) == 4
    targets = {tag.props["resourceId"] for tag in run.of_type("aws:ec2/tag:Tag")}
    assert targets & own_subnets == set()


def test_the_single_node_subnets_carry_no_kubernetes_role(baseline: MockRun) -> None:
    assert _role_tagged_subnets(baseline) == {}


def test_tier_is_multi_az_valkey_with_tls_and_admits_only_the_cluster(scale_out: MockRun) -> None:
    tier = scale_out.one(REPLICATION_GROUP).props
    assert (tier["engine"], tier["engineVersion"], tier["nodeType"]) == ("valkey", "8.0", "cache.r7g.large")
    assert (tier["numCacheClusters"], tier["automaticFailoverEnabled"], tier["multiAzEnabled"]) == (2, True, True)
    assert (tier["transitEncryptionEnabled"], tier["transitEncryptionMode"], tier["port"]) == (True, "required", 6379)
    assert tier["userGroupIds"] == ["foresight-aws-test"]
    subnets = scale_out.one("aws:elasticache/subnetGroup:SubnetGroup").props
    assert subnets["subnetIds"] == ["foresight-private-0-id", "foresight-private-1-id"]
    parameters = scale_out.one("aws:elasticache/parameterGroup:ParameterGroup").props
    assert parameters["family"] == "valkey8"
    assert parameters["parameters"] == [{"name": "maxmemory-policy", "value": "allkeys-lru"}]
    (group,) = tier["securityGroupIds"]
    rules = [r.props for r in scale_out.of_type(mockrun.INGRESS_RULE) if r.props["securityGroupId"] == group]
    assert rules == [
        {
            "securityGroupId": group,
            "ipProtocol": "tcp",
            "fromPort": 6379,
            "toPort": 6379,
            "referencedSecurityGroupId": EKS_CLUSTER_SECURITY_GROUP,
            "description": "Valkey (TLS) from the EKS cluster security group",
            "tags": scale_out.one(KMS_KEY).props["tags"],
        }
    ]


def test_tier_users_are_iam_only_with_the_services_access_and_a_disabled_default(scale_out: MockRun) -> None:
    users = {user.props["userName"]: user.props for user in scale_out.of_type(ELASTICACHE_USER)}
    pods, default = users["foresight-aws-test-pods"], users["default"]
    assert pods["userId"] == pods["userName"]
    assert pods["authenticationMode"] == {"type": "iam"}
    assert pods["accessString"] == POD_ACCESS_STRING
    assert (pods["engine"], default["engine"]) == ("valkey", "valkey")
    assert default["accessString"] == "off -@all"
    assert default["authenticationMode"] == {"type": "no-password-required"}
    group = scale_out.one("aws:elasticache/userGroup:UserGroup").props
    assert sorted(group["userIds"]) == sorted([pods["userId"], default["userId"]])
    for resource in scale_out:
        if resource.type.startswith("aws:elasticache/"):
            text = json.dumps(resource.props).lower()
            assert "password" not in text.replace("no-password-required", "") and "authtoken" not in text


ELASTICACHE_ID = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@pytest.mark.parametrize(
    "stack",
    [
        "aws-scale-out-production-us-east-1",  # foresight-<stack>- is over 40 characters
        "aws-scale-out-production-us-east-1-blue",
        "a" * 60,
        "prod_eu.west-1--canary",
    ],
)
def test_elasticache_ids_fit_and_stay_distinct_for_long_stack_names(run_stack: RunStack, stack: str) -> None:
    run = run_stack(SCALE_OUT, stack=stack)
    users = [user.props["userId"] for user in run.of_type(ELASTICACHE_USER)]
    assert len(set(users)) == 2, users
    group = run.one("aws:elasticache/userGroup:UserGroup").props
    replication = run.one(REPLICATION_GROUP).props
    assert sorted(group["userIds"]) == sorted(users)
    for identifier in [*users, group["userGroupId"], replication["replicationGroupId"]]:
        assert len(identifier) <= 40 and ELASTICACHE_ID.fullmatch(identifier), identifier
    pods = next(user.props for user in run.of_type(ELASTICACHE_USER) if user.props["userName"] != "default")
    assert pods["userName"] == pods["userId"]  # IAM authentication needs the name to be the id


def test_two_long_stack_names_with_a_common_prefix_get_their_own_tier_ids() -> None:
    stem = "foresight-aws-scale-out-production-us-east-1"
    blue, green = f"{stem}-blue", f"{stem}-green"
    for role in ("", "pods", "default"):
        assert elasticache_id(blue, role) != elasticache_id(green, role)
    assert elasticache_id("foresight-aws-test", "pods") == "foresight-aws-test-pods"  # short names keep their ids


def test_the_access_string_allows_every_command_the_service_sends() -> None:
    source = "".join((ROOT / f"service/{module}.py").read_text() for module in ("shared_tier", "tier_usage"))
    methods = set(re.findall(r"\b(?:self\._client|pipe|pubsub)\.([a-z_]+)\(", source))
    redis_commands = {"delete": "del"}
    plumbing = {"pipeline", "execute", "aclose", "listen", "pubsub", "get_message"}
    sent = {redis_commands.get(method, method) for method in methods - plumbing}
    assert sent and sent <= set(COMMANDS), sent - set(COMMANDS)


def test_pods_assume_their_role_only_as_the_workloads_service_account(scale_out: MockRun) -> None:
    (trust,) = _trust(scale_out, "foresight-pods")
    assert trust == {
        "Effect": "Allow",
        "Principal": {"Federated": OIDC_PROVIDER_ARN},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {
            "StringEquals": {
                f"{OIDC_HOST}:sub": "system:serviceaccount:foresight:foresight",
                f"{OIDC_HOST}:aud": "sts.amazonaws.com",
            }
        },
    }
    assert service_account_subject() == "system:serviceaccount:foresight:foresight"
    provider = scale_out.one("aws:iam/openIdConnectProvider:OpenIdConnectProvider").props
    assert (provider["url"], provider["clientIdLists"]) == (EKS_OIDC_ISSUER, ["sts.amazonaws.com"])
    statements = json.loads(_named(scale_out, POLICY, "foresight-pods")["policy"])["Statement"]
    assert statements == [
        {"Effect": "Allow", "Action": list(KMS_ACTIONS), "Resource": KEY_ARN},
        {
            "Effect": "Allow",
            "Action": "elasticache:Connect",
            "Resource": [
                f"arn:aws:elasticache:us-east-1:{ACCOUNT}:replicationgroup:foresight-aws-test",
                f"arn:aws:elasticache:us-east-1:{ACCOUNT}:user:foresight-aws-test-pods",
            ],
        },
    ]
    account = scale_out.one("kubernetes:core/v1:ServiceAccount").props["metadata"]
    assert account["annotations"] == {
        "eks.amazonaws.com/role-arn": f"arn:aws:iam::{ACCOUNT}:role/foresight-pods-a1b2c3d"
    }


def test_config_map_tells_the_pods_the_key_and_the_tier_with_iam_auth(scale_out: MockRun) -> None:
    data = scale_out.one(CONFIG_MAP).props["data"]
    assert data["FORESIGHT_KMS_PROVIDER"] == "aws"
    assert data["FORESIGHT_KMS_KEY_ID"] == KEY_ARN
    assert data["FORESIGHT_SHARED_TIER_URL"] == f"rediss://{ELASTICACHE_PRIMARY}:6379"
    assert data["FORESIGHT_SHARED_TIER_AUTH"] == "aws"
    assert data["FORESIGHT_SHARED_TIER_USERNAME"] == "foresight-aws-test-pods"
    assert data["FORESIGHT_SHARED_TIER_AWS_CACHE"] == "foresight-aws-test"
    assert (data["AWS_REGION"], data["AWS_DEFAULT_REGION"]) == ("us-east-1", "us-east-1")
    assert "FORESIGHT_SHARED_TIER_PASSWORD_FILE" not in data
    policy = scale_out.one("kubernetes:networking.k8s.io/v1:NetworkPolicy").props["spec"]
    assert {"port": 6379, "protocol": "TCP"} in policy["egress"][1]["ports"]


def test_vault_trusts_the_clusters_issuer_for_the_service_account_and_audience_vault(scale_out: MockRun) -> None:
    backend = scale_out.one("vault:jwt/authBackend:AuthBackend").props
    assert (backend["oidcDiscoveryUrl"], backend["boundIssuer"]) == (EKS_OIDC_ISSUER, EKS_OIDC_ISSUER)
    role = scale_out.one("vault:jwt/authBackendRole:AuthBackendRole").props
    assert role["boundClaims"] == {"sub": "system:serviceaccount:foresight:foresight"}
    assert role["boundAudiences"] == ["vault"]
    assert role["tokenPolicies"] == ["foresight-aws-test-node"]
    assert_endpoint_tls(scale_out, layout_of("aws-test", REQUIRED_CONFIG), EKS_LB_HOSTNAME, is_ip=False)


def test_pods_read_the_scrape_token_that_rotate_writes(scale_out: MockRun) -> None:
    assert_pods_read_the_scrape_token(scale_out, "aws-test")


def test_kubernetes_provider_logs_in_with_aws_eks_get_token_and_stores_no_credential(scale_out: MockRun) -> None:
    kubeconfig = json.loads(scale_out.one("pulumi:providers:kubernetes").props["kubeconfig"])
    (user,) = kubeconfig["users"]
    assert user["user"] == {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", "foresight-aws-test", "--region", "us-east-1"],
            "interactiveMode": "Never",
        }
    }
    assert kubeconfig["clusters"][0]["cluster"]["server"] == mockrun.EKS_ENDPOINT


def test_kubernetes_objects_wait_for_the_admin_access_namespace_role_and_storage(scale_out: MockRun) -> None:
    provider = scale_out.one("pulumi:providers:kubernetes")
    association = scale_out.one("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
    assert association.urn in provider.dependencies
    needed = {
        scale_out.one("kubernetes:core/v1:Namespace").urn,
        scale_out.one("kubernetes:storage.k8s.io/v1:StorageClass").urn,
        next(p.urn for p in scale_out.of_type("aws:iam/rolePolicy:RolePolicy") if p.name == "foresight-pods"),
    }
    for child in _workload_children(scale_out):
        assert needed <= set(child.dependencies), child.name


def test_outputs_keep_their_names_and_hold_no_secret(scale_out: MockRun) -> None:
    outputs = {name: output.value for name, output in scale_out.outputs.items()}
    assert outputs == {
        "endpointHost": EKS_LB_HOSTNAME,
        "respPort": 6380,
        "httpsPort": 8443,
        "caCertificate": fake_pem("CERTIFICATE", "foresight-ca"),
        "kmsKeyId": KEY_ARN,
        "vaultRole": "foresight-aws-test-node",
        "vaultAuthMount": "foresight-aws-test-aws",
        "vaultKvMount": "foresight-aws-test",
        "instanceId": "foresight-aws-test",
        "nodeIdentity": f"arn:aws:iam::{ACCOUNT}:role/foresight-pods-a1b2c3d",  # the pods' IRSA role
    }
    assert not any(output.secret for output in scale_out.outputs.values())


def _unwrapped_strings(value: Any) -> Iterator[str]:
    """Every string of recorded inputs that is not inside a secret (which the engine encrypts in the state)."""
    if is_secret(value):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _unwrapped_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _unwrapped_strings(item)
    elif isinstance(value, str):
        yield value


def test_no_secret_in_any_recorded_input(scale_out: MockRun) -> None:
    for resource in scale_out:
        for text in _unwrapped_strings(resource.inputs):
            assert "PRIVATE KEY" not in text, resource.name
            assert not re.search(r'"(token|password|passwords|authToken|client-key-data)"', text), resource.name
            assert text not in ("authToken", "authTokenWo", "passwords", "passwordsWo"), resource.name
    assert_no_key_in_state(scale_out)


@pytest.mark.parametrize("variant", ["scale_out", "private", "spot"])
def test_policy_pack_passes_on_the_scale_out_stack(variant: str, request: pytest.FixtureRequest) -> None:
    run: MockRun = request.getfixturevalue(variant)
    for resource in run:
        for name in POLICIES:
            assert violations(name, resource.type, resource.inputs) == [], (variant, resource.name, name)


TAGS = {"foresight:project": "foresight", "foresight:stack": "dev", "managed-by": "pulumi"}
NODE_GROUP_PROPS = {"instanceTypes": ["g6.xlarge"], "launchTemplate": {"id": "lt-1", "version": "1"}, "tags": TAGS}


@pytest.mark.parametrize(
    ("policy", "resource_type", "props", "expected"),
    [
        ("gpu-instance-families", NODE_GROUP, NODE_GROUP_PROPS, None),
        (
            "gpu-instance-families",
            NODE_GROUP,
            {**NODE_GROUP_PROPS, "instanceTypes": ["g6.xlarge", "m7i.large"]},
            "m7i.large",
        ),
        ("imdsv2-required", NODE_GROUP, NODE_GROUP_PROPS, None),
        ("imdsv2-required", NODE_GROUP, {"instanceTypes": ["g6.xlarge"]}, "no launch template"),
        ("ebs-encrypted-with-customer-key", NODE_GROUP, NODE_GROUP_PROPS, None),
        ("ebs-encrypted-with-customer-key", NODE_GROUP, {"diskSize": 100}, "no launch template"),
        ("required-tags", NODE_GROUP, NODE_GROUP_PROPS, None),
        ("required-tags", CLUSTER, {"tags": {"foresight:stack": "dev"}}, "foresight:project, managed-by"),
        ("required-tags", REPLICATION_GROUP, {}, "missing required tags"),
        ("required-tags", ELASTICACHE_USER, {"tags": TAGS}, None),
    ],
)
def test_policies_know_the_scale_out_resource_types(
    policy: str, resource_type: str, props: dict[str, Any], expected: str | None
) -> None:
    assert_case(policy, resource_type, props, expected)


def test_rendered_kubernetes_objects_are_valid_kubernetes(scale_out: MockRun) -> None:
    objects = [resource for resource in scale_out if resource.type.startswith("kubernetes:")]
    assert len(objects) == 10
    for resource in objects:
        manifest = {key: value for key, value in resource.props.items() if key != "status"}
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_a_bring_your_own_network_needs_two_subnets(run_stack: RunStack) -> None:
    byo = {"foresight:vpcId": "vpc-0123456789abcdef0", "foresight:subnetIds": '["subnet-0aaaaaaaaaaaaaaa1"]'}
    with pytest.raises(ConfigError) as failure:
        run_stack({**SCALE_OUT, **byo})
    assert failure.value.keys == ["foresight:subnetIds"]


def test_single_node_stack_is_untouched_by_scale_out(baseline: MockRun) -> None:
    types = {resource.type for resource in baseline}
    assert "foresight:aws:GpuNode" in types
    assert not [
        t for t in types if t.startswith(("aws:eks/", "aws:elasticache/", "kubernetes:", "foresight:kubernetes"))
    ]


def test_example_stack_file_deploys_a_scale_out_stack(run_stack: RunStack) -> None:
    config = yaml.safe_load((ROOT / "Pulumi.aws-scale-out-example.yaml").read_text())["config"]
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert all(key in project for key in config if key.startswith("foresight:"))
    as_engine = {
        key: json.dumps(value)
        if isinstance(value, list)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
        for key, value in config.items()
    }
    assert {**REQUIRED_CONFIG, **as_engine}.keys() == as_engine.keys()
    run = run_stack(as_engine)
    group = run.one(NODE_GROUP).props
    assert (group["scalingConfig"]["desiredSize"], group["instanceTypes"]) == (3, ["g6.xlarge", "g5.xlarge"])


def test_scale_out_without_allowed_ranges_names_the_key(run_stack: RunStack) -> None:
    with pytest.raises(ConfigError) as err:
        run_stack({**SCALE_OUT, "foresight:allowedCidrs": "[]"})
    assert err.value.keys == ["foresight:allowedCidrs"]


def test_scale_out_creates_no_single_node_security_groups(scale_out: MockRun) -> None:
    """The single node's balancer and node groups belong to its endpoint; here only the tier has a group."""
    groups = [group.name for group in scale_out.of_type(mockrun.SECURITY_GROUP)]
    assert groups == ["foresight-tier"]
    rules = [rule.name for rule in scale_out.of_type(mockrun.INGRESS_RULE)]
    assert rules and not [name for name in rules if name.startswith(("foresight-lb", "foresight-node"))]


def test_every_kubernetes_object_the_stack_creates_passes_kubernetes_schemas(scale_out: MockRun) -> None:
    kinds = assert_valid(scale_out)  # the deploy-time settings and annotations merged in, as the cluster gets them
    assert {"ConfigMap", "Namespace", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount",
            "StatefulSet", "StorageClass"} <= set(kinds)


def test_load_balancer_waits_for_its_address_and_the_pods_for_the_pki_role(scale_out: MockRun) -> None:
    assert_deploy_order(scale_out, EKS_LB_HOSTNAME)


def test_a_new_ca_rolls_the_pods(scale_out: MockRun, run_stack: RunStack, monkeypatch: pytest.MonkeyPatch) -> None:
    replaced = with_a_new_ca(monkeypatch, lambda: run_stack(SCALE_OUT))
    assert_deploy_order(replaced, EKS_LB_HOSTNAME)
    assert pod_issuer_digest(replaced) != pod_issuer_digest(scale_out)
