"""`foresight:scaleOut: true` on Google Cloud: the real program under mocks builds `foresight:gcp:ScaleOut` (GKE, a
GPU node pool, Memorystore for Valkey, the workload) instead of a GpuNode, with the same outputs."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import yaml

from stacks.cluster import service_account_subject
from stacks.gcp.cluster import GPU_POOL_LABELS, SYSTEM_MACHINE_TYPE, place_pool
from stacks.gcp.kms import KEY_USER_ROLE
from stacks.gcp.scale_out import STORAGE_CLASS
from stacks.gcp.tier import CA_CONFIG_MAP
from stacks.kubernetes.pod import SHARED_TIER_CA_DIR
from stacks.spec import ConfigError
from tests.stacks.conftest import GCP_STACK, RunStack
from tests.stacks.endpoint_tls import assert_endpoint_tls, layout_of
from tests.stacks.kubernetes_objects import (
    WAIT_FOR_THE_ADDRESS,
    assert_deploy_order,
    assert_pods_read_the_scrape_token,
    assert_valid,
    pod_issuer_digest,
    with_a_new_ca,
)
from tests.stacks.mockrun import (
    GCP_CLUSTER_ENDPOINT,
    GCP_LB_ADDRESS,
    GCP_PROJECT,
    GCP_PROJECT_NUMBER,
    GCP_REGION,
    GCP_REQUIRED_CONFIG,
    GCP_TIER_ADDRESS,
    GCP_TIER_CA,
    GCP_ZONES,
    GCP_ZONES_WITHOUT_GPU,
    ROOT,
    MockRun,
    Registered,
    is_secret,
)
from tests.stacks.policy_harness import POLICIES, violations

SCALE_OUT = {"foresight:scaleOut": "true", "foresight:nodes": "3"}
TIER_CA_FILE = f"{SHARED_TIER_CA_DIR}/ca.pem"
COMPONENT = "foresight:gcp:ScaleOut"
CLUSTER = "gcp:container/cluster:Cluster"
NODE_POOL = "gcp:container/nodePool:NodePool"
MEMORYSTORE = "gcp:memorystore/instance:Instance"
CONNECTION_POLICY = "gcp:networkconnectivity/serviceConnectionPolicy:ServiceConnectionPolicy"
ACCOUNT = "gcp:serviceaccount/account:Account"
KEY_MEMBER = "gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember"
PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
ACCOUNT_MEMBER = "gcp:serviceaccount/iAMMember:IAMMember"
K8S_PROVIDER = "pulumi:providers:kubernetes"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
SERVICE = "kubernetes:core/v1:Service"
GPU_ZONES = sorted(set(GCP_ZONES) - GCP_ZONES_WITHOUT_GPU)
NETWORK_PATH = f"projects/{GCP_PROJECT}/global/networks/foresight-vpc-1a2b3c4"


@pytest.fixture(scope="module")
def scale_out(run_gcp_stack: RunStack) -> MockRun:
    return run_gcp_stack(SCALE_OUT)


@pytest.fixture(scope="module")
def private_scale_out(run_gcp_stack: RunStack) -> MockRun:
    return run_gcp_stack({**SCALE_OUT, "foresight:allowedCidrs": '["10.0.0.0/8"]'})


@pytest.fixture(scope="module")
def spot_scale_out(run_gcp_stack: RunStack) -> MockRun:
    return run_gcp_stack({**SCALE_OUT, "foresight:spot": "true", "foresight:nodes": "4"})


def pool(run: MockRun, suffix: str) -> dict[str, Any]:
    return run.named(f"foresight-{suffix}").props


def account_email(run: MockRun, resource_name: str) -> str:
    return f"{run.named(resource_name).props['accountId']}@{GCP_PROJECT}.iam.gserviceaccount.com"


def env(run: MockRun) -> dict[str, str]:
    return dict(run.named("foresight-configmap-foresight-env").props["data"])


def pod_spec(run: MockRun) -> dict[str, Any]:
    return dict(run.one(STATEFUL_SET).props["spec"]["template"]["spec"])


def key_id(run: MockRun) -> str:
    return str(run.outputs["kmsKeyId"].value)


def test_scale_out_is_one_component_instead_of_a_gpu_node(scale_out: MockRun) -> None:
    component = scale_out.one(COMPONENT)
    assert component.parent.endswith("pulumi:pulumi:Stack::foresight-gcp-test")
    types = Counter(resource.type for resource in scale_out)
    assert types[CLUSTER] == 1 and types[NODE_POOL] == 2 and types[MEMORYSTORE] == 1
    assert types[CONNECTION_POLICY] == 1 and types["foresight:kubernetes:Workload"] == 1
    assert types[K8S_PROVIDER] == 1 and types["kubernetes:core/v1:Namespace"] == 1
    assert types["kubernetes:storage.k8s.io/v1:StorageClass"] == 1 and types[CONFIG_MAP] == 2
    assert types[STATEFUL_SET] == 1 and types["vault:jwt/authBackendRole:AuthBackendRole"] == 1
    assert types[ACCOUNT] == 2 and types[KEY_MEMBER] == 4
    assert not any(
        resource.type.startswith(("aws:", "azure", "gcp:compute/instanceTemplate", "gcp:compute/firewall"))
        or resource.type
        in ("foresight:gcp:GpuNode", "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")
        for resource in scale_out
    )


def test_every_resource_is_the_components_child_or_its_workloads(scale_out: MockRun) -> None:
    component = scale_out.one(COMPONENT)
    workload = scale_out.one("foresight:kubernetes:Workload")
    assert workload.parent == component.urn
    for resource in scale_out:
        if resource is component:
            continue
        assert resource.parent in (component.urn, workload.urn), resource.name
        if resource.parent == workload.urn:
            assert resource.type.startswith("kubernetes:"), resource.name


def test_regional_cluster_is_private_cmek_encrypted_and_enforces_network_policy(scale_out: MockRun) -> None:
    cluster = scale_out.one(CLUSTER).props
    assert cluster["location"] == GCP_REGION and cluster["nodeLocations"] == GPU_ZONES
    assert cluster["workloadIdentityConfig"] == {"workloadPool": f"{GCP_PROJECT}.svc.id.goog"}
    assert cluster["databaseEncryption"] == {"state": "ENCRYPTED", "keyName": key_id(scale_out)}
    assert cluster["datapathProvider"] == "ADVANCED_DATAPATH" and "networkPolicy" not in cluster
    assert cluster["privateClusterConfig"] == {"enablePrivateNodes": True, "enablePrivateEndpoint": False}
    assert cluster["masterAuthorizedNetworksConfig"]["cidrBlocks"] == [
        {"cidrBlock": "203.0.113.0/24", "displayName": "foresight:allowedCidrs 0"}
    ]
    assert cluster["masterAuthorizedNetworksConfig"]["gcpPublicCidrsAccessEnabled"] is False
    assert cluster["masterAuth"] == {"clientCertificateConfig": {"issueClientCertificate": False}}
    assert cluster["releaseChannel"] == {"channel": "REGULAR"}
    assert cluster["enableShieldedNodes"] is True and cluster["deletionProtection"] is True
    assert cluster["removeDefaultNodePool"] is True and cluster["enableLegacyAbac"] is False
    assert cluster["nodeConfig"]["bootDiskKmsKey"] == key_id(scale_out)
    assert cluster["ipAllocationPolicy"] == {"clusterIpv4CidrBlock": "/17", "servicesIpv4CidrBlock": "/22"}
    assert cluster["network"].endswith("/global/networks/foresight-vpc-1a2b3c4")
    assert scale_out.outputs["instanceId"].value == "foresight-gke-1a2b3c4"
    assert scale_out.outputs["nodeIdentity"].value == account_email(scale_out, "foresight-pods")  # what pods run as


def test_private_allowed_ranges_keep_the_control_plane_and_load_balancer_internal(private_scale_out: MockRun) -> None:
    cluster = private_scale_out.one(CLUSTER).props
    assert cluster["privateClusterConfig"]["enablePrivateEndpoint"] is True
    assert cluster["masterAuthorizedNetworksConfig"]["cidrBlocks"][0]["cidrBlock"] == "10.0.0.0/8"
    service = private_scale_out.named("foresight-service-foresight").props
    assert service["metadata"]["annotations"] == {
        "networking.gke.io/load-balancer-type": "Internal",
        **WAIT_FOR_THE_ADDRESS,
    }
    assert service["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert private_scale_out.outputs["endpointHost"].value == "10.42.0.30"


def test_gpu_pool_has_one_node_per_gpu_zone_with_gke_installed_drivers(scale_out: MockRun) -> None:
    gpu = pool(scale_out, "gpu")
    assert gpu["location"] == GCP_REGION and gpu["nodeLocations"] == GPU_ZONES and gpu["nodeCount"] == 1
    assert gpu["nodeCount"] * len(gpu["nodeLocations"]) == 3
    config = gpu["nodeConfig"]
    assert config["machineType"] == "g2-standard-4" and config["spot"] is False
    assert config["guestAccelerators"] == [
        {"type": "nvidia-l4", "count": 1, "gpuDriverInstallationConfig": {"gpuDriverVersion": "LATEST"}}
    ]
    assert config["labels"] == GPU_POOL_LABELS
    assert config["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    assert config["bootDiskKmsKey"] == key_id(scale_out)
    assert config["shieldedInstanceConfig"] == {"enableSecureBoot": True, "enableIntegrityMonitoring": True}
    assert config["oauthScopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
    assert config["serviceAccount"] == account_email(scale_out, "foresight-gke-node")
    assert config["resourceLabels"]["foresight-stack"] == "gcp-test"
    assert gpu["upgradeSettings"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert gpu["cluster"] == "foresight-gke-id"


def test_system_pool_is_small_hardened_and_without_gpu(scale_out: MockRun) -> None:
    system = pool(scale_out, "system")
    config = system["nodeConfig"]
    assert config["machineType"] == "e2-standard-2" and "guestAccelerators" not in config
    assert system["nodeCount"] == 1 and system["nodeLocations"] == GPU_ZONES
    assert config["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    assert config["bootDiskKmsKey"] == key_id(scale_out)


def test_spot_pool_spreads_nodes_evenly_over_as_many_zones_as_divide_them(spot_scale_out: MockRun) -> None:
    gpu = pool(spot_scale_out, "gpu")
    assert gpu["nodeConfig"]["spot"] is True
    assert (gpu["nodeCount"], gpu["nodeLocations"]) == (2, GPU_ZONES[:2])
    assert pool(spot_scale_out, "system")["nodeConfig"]["spot"] is False
    assert spot_scale_out.one(STATEFUL_SET).props["spec"]["replicas"] == 4


@pytest.mark.parametrize(
    ("nodes", "zones", "per_zone"), [(1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 2, 2), (5, 1, 5), (6, 3, 2), (64, 2, 32)]
)
def test_pool_placement_adds_up_to_the_requested_nodes(nodes: int, zones: int, per_zone: int) -> None:
    placement = place_pool(nodes, ["z-a", "z-c", "z-f"])
    assert (len(placement.zones), placement.per_zone) == (zones, per_zone)
    assert len(placement.zones) * placement.per_zone == nodes


def test_workload_lands_on_the_gpu_pool_and_tolerates_its_taint(scale_out: MockRun) -> None:
    pod = pod_spec(scale_out)
    assert pod["nodeSelector"] == pool(scale_out, "gpu")["nodeConfig"]["labels"] == GPU_POOL_LABELS
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert scale_out.one(STATEFUL_SET).props["spec"]["replicas"] == 3
    # GKE runs NVIDIA's device plugin itself when it installs the drivers.
    assert not scale_out.of_type("kubernetes:apps/v1:DaemonSet")


def test_memorystore_uses_iam_auth_tls_and_the_stack_key(scale_out: MockRun) -> None:
    tier = scale_out.one(MEMORYSTORE).props
    assert tier["authorizationMode"] == "IAM_AUTH"
    assert tier["transitEncryptionMode"] == "SERVER_AUTHENTICATION"
    assert tier["serverCaMode"] == "GOOGLE_MANAGED_PER_INSTANCE_CA"
    assert tier["engineVersion"] == "VALKEY_8_0" and tier["mode"] == "CLUSTER_DISABLED"
    assert (tier["shardCount"], tier["replicaCount"]) == (1, 1)
    assert tier["kmsKey"] == key_id(scale_out)
    assert tier["engineConfigs"] == {"maxmemory-policy": "allkeys-lru"}
    assert tier["desiredAutoCreatedEndpoints"] == [{"network": NETWORK_PATH, "projectId": GCP_PROJECT}]
    assert tier["deletionProtectionEnabled"] is True and tier["location"] == GCP_REGION
    policy = scale_out.one(CONNECTION_POLICY).props
    assert policy["serviceClass"] == "gcp-memorystore" and policy["network"] == NETWORK_PATH
    assert policy["pscConfig"] == {
        "subnetworks": [f"projects/{GCP_PROJECT}/regions/{GCP_REGION}/subnetworks/foresight-subnet-1a2b3c4"]
    }


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [item for key, inner in value.items() for item in _strings(inner, f"{path}.{key}")]
    if isinstance(value, list):
        return [item for index, inner in enumerate(value) for item in _strings(inner, f"{path}[{index}]")]
    return [(path, str(value))]


def test_no_tier_password_or_auth_string_exists_anywhere(scale_out: MockRun) -> None:
    assert not scale_out.of_type("kubernetes:core/v1:Secret")
    for resource in scale_out:
        for path, _value in _strings(resource.props):
            leaf = path.rsplit(".", 1)[-1].lower()
            assert "password" not in leaf and leaf not in ("authstring", "auth_string"), (resource.name, path)
    assert "FORESIGHT_SHARED_TIER_PASSWORD_FILE" not in env(scale_out)


def test_workload_identity_binds_only_the_workloads_kubernetes_service_account(scale_out: MockRun) -> None:
    binding = scale_out.one(ACCOUNT_MEMBER).props
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["member"] == f"serviceAccount:{GCP_PROJECT}.svc.id.goog[foresight/foresight]"
    pods = account_email(scale_out, "foresight-pods")
    assert binding["serviceAccountId"] == f"projects/{GCP_PROJECT}/serviceAccounts/{pods}"
    ksa = scale_out.one("kubernetes:core/v1:ServiceAccount").props["metadata"]
    assert ksa["name"] == "foresight" and ksa["namespace"] == "foresight"
    assert ksa["annotations"] == {"iam.gke.io/gcp-service-account": pods}


def test_kms_key_is_used_only_through_grants_on_the_key(scale_out: MockRun) -> None:
    members = {m.props["member"]: m.props for m in scale_out.of_type(KEY_MEMBER)}
    assert set(members) == {
        f"serviceAccount:{account_email(scale_out, 'foresight-pods')}",
        f"serviceAccount:service-{GCP_PROJECT_NUMBER}@compute-system.iam.gserviceaccount.com",
        f"serviceAccount:service-{GCP_PROJECT_NUMBER}@container-engine-robot.iam.gserviceaccount.com",
        f"serviceAccount:service-{GCP_PROJECT_NUMBER}@gcp-sa-memorystore.iam.gserviceaccount.com",
    }
    assert all(m["role"] == KEY_USER_ROLE and m["cryptoKeyId"] == key_id(scale_out) for m in members.values())
    project_roles = {(m.props["role"], m.props["member"]) for m in scale_out.of_type(PROJECT_MEMBER)}
    node, pods = account_email(scale_out, "foresight-gke-node"), account_email(scale_out, "foresight-pods")
    assert project_roles == {
        ("roles/logging.logWriter", f"serviceAccount:{node}"),
        ("roles/monitoring.metricWriter", f"serviceAccount:{node}"),
        ("roles/memorystore.dbConnectionUser", f"serviceAccount:{pods}"),
    }
    assert not any("cloudkms" in role for role, _member in project_roles)


def test_settings_log_in_to_the_tier_with_the_pods_identity_and_name_the_key(scale_out: MockRun) -> None:
    settings = env(scale_out)
    assert settings["FORESIGHT_SHARED_TIER_AUTH"] == "gcp"
    assert settings["FORESIGHT_SHARED_TIER_URL"] == f"rediss://{GCP_TIER_ADDRESS}:6379"
    assert settings["FORESIGHT_SHARED_TIER_CA_FILE"] == TIER_CA_FILE
    assert settings["FORESIGHT_KMS_PROVIDER"] == "gcp" and settings["FORESIGHT_KMS_KEY_ID"] == key_id(scale_out)
    assert settings["FORESIGHT_KMS_KEY_ID"].startswith(f"projects/{GCP_PROJECT}/locations/{GCP_REGION}/keyRings/")
    assert settings["GOOGLE_CLOUD_PROJECT"] == GCP_PROJECT
    assert settings["FORESIGHT_VAULT_AUTH_METHOD"] == "jwt" and settings["FORESIGHT_VAULT_JWT_SOURCE"] == "file"


def test_service_settings_accept_the_scale_out_environment(scale_out: MockRun, monkeypatch: Any) -> None:
    from service.config import load_settings

    for name, value in env(scale_out).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.shared_tier_auth == "gcp" and settings.kms_provider == "gcp"
    assert str(settings.shared_tier_ca_file) == TIER_CA_FILE


def test_tier_ca_config_map_holds_the_instance_ca_and_is_mounted(scale_out: MockRun) -> None:
    ca = scale_out.named("foresight-tier-ca").props
    assert ca["metadata"]["name"] == CA_CONFIG_MAP and ca["metadata"]["namespace"] == "foresight"
    assert ca["data"] == {"ca.pem": f"{GCP_TIER_CA}\n"}
    pod = pod_spec(scale_out)
    volume = next(v for v in pod["volumes"] if v["name"] == "shared-tier-ca")
    assert volume["configMap"]["name"] == CA_CONFIG_MAP
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert f"{mounts['shared-tier-ca']}/ca.pem" == TIER_CA_FILE


def test_pods_may_reach_the_tier_and_gkes_metadata_server(scale_out: MockRun) -> None:
    policy = scale_out.one("kubernetes:networking.k8s.io/v1:NetworkPolicy").props["spec"]
    ports = {port["port"] for rule in policy["egress"] for port in rule["ports"] if port["protocol"] == "TCP"}
    assert {6379, 80, 988, 443, 8200} <= ports


def test_kubernetes_providers_log_in_with_the_gcloud_plugin_and_hold_no_credential(scale_out: MockRun) -> None:
    providers = scale_out.of_type(K8S_PROVIDER)
    for provider in providers:
        config = json.loads(provider.props["kubeconfig"])
        assert config["clusters"][0]["cluster"]["server"] == f"https://{GCP_CLUSTER_ENDPOINT}"
        user = config["users"][0]["user"]
        assert set(user) == {"exec"} and user["exec"]["command"] == "gke-gcloud-auth-plugin"
        assert not any(word in provider.props["kubeconfig"] for word in ("token", "client-key", "password"))
    (provider,) = providers  # the workload's objects go through the one cluster provider
    workload = scale_out.one("foresight:kubernetes:Workload")
    children = [r for r in scale_out if r.parent == workload.urn]
    assert len(children) == 7 and all(r.provider.startswith(provider.urn) for r in children)
    needed = {
        scale_out.one("kubernetes:core/v1:Namespace").urn,
        scale_out.one("kubernetes:storage.k8s.io/v1:StorageClass").urn,
        scale_out.named("foresight-tier-ca").urn,
    }
    for child in children:  # a component's children do not inherit its depends_on: WorkloadArgs passes it on
        assert needed <= set(child.dependencies), child.name


def test_namespace_and_cmek_storage_class_carry_the_data_volumes(scale_out: MockRun) -> None:
    namespace = scale_out.one("kubernetes:core/v1:Namespace").props["metadata"]
    assert namespace["name"] == "foresight"
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    storage = scale_out.one("kubernetes:storage.k8s.io/v1:StorageClass").props
    assert storage["provisioner"] == "pd.csi.storage.gke.io"
    assert storage["parameters"] == {"type": "pd-balanced", "disk-encryption-kms-key": key_id(scale_out)}
    assert storage["volumeBindingMode"] == "WaitForFirstConsumer"
    claim = scale_out.one(STATEFUL_SET).props["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == STORAGE_CLASS and claim["resources"]["requests"]["storage"] == "100Gi"


def test_pki_role_issues_for_the_load_balancer_ip_only(scale_out: MockRun) -> None:
    assert_endpoint_tls(scale_out, layout_of(GCP_STACK, GCP_REQUIRED_CONFIG), GCP_LB_ADDRESS, is_ip=True)
    assert scale_out.outputs["endpointHost"].value == GCP_LB_ADDRESS


def test_vault_trusts_the_clusters_issuer_for_the_workloads_service_account(scale_out: MockRun) -> None:
    issuer = f"https://container.googleapis.com/v1/projects/{GCP_PROJECT}/locations/{GCP_REGION}/clusters/foresight-gke-1a2b3c4"
    backend = scale_out.one("vault:jwt/authBackend:AuthBackend").props
    assert backend["oidcDiscoveryUrl"] == backend["boundIssuer"] == issuer
    assert backend["path"] == "foresight-gcp-test-gcp"
    role = scale_out.one("vault:jwt/authBackendRole:AuthBackendRole").props
    assert service_account_subject() == "system:serviceaccount:foresight:foresight"
    assert role["boundClaims"] == {"sub": service_account_subject()}
    assert role["boundAudiences"] == ["vault"] and role["tokenPolicies"] == ["foresight-gcp-test-node"]
    assert env(scale_out)["FORESIGHT_VAULT_ROLE"] == role["roleName"]


def test_pods_read_the_scrape_token_that_rotate_writes(scale_out: MockRun) -> None:
    assert_pods_read_the_scrape_token(scale_out, "gcp-test")


def test_outputs_are_the_shared_set_and_hold_no_secret(scale_out: MockRun, gcp_baseline: MockRun) -> None:
    assert list(scale_out.outputs) == list(gcp_baseline.outputs)
    assert not any(output.secret for output in scale_out.outputs.values())
    assert not any("PRIVATE KEY" in str(output.value) for output in scale_out.outputs.values())
    assert scale_out.outputs["respPort"].value == 6380 and scale_out.outputs["httpsPort"].value == 8443


def _unwrapped_private_keys(value: Any, path: str = "") -> list[str]:
    if is_secret(value):
        return []
    if isinstance(value, dict):
        return [hit for key, inner in value.items() for hit in _unwrapped_private_keys(inner, f"{path}.{key}")]
    if isinstance(value, list):
        return [hit for index, inner in enumerate(value) for hit in _unwrapped_private_keys(inner, f"{path}[{index}]")]
    return [path] if "PRIVATE KEY" in str(value) else []


def test_no_private_key_is_recorded_outside_a_secret(scale_out: MockRun) -> None:
    assert [(r.name, hit) for r in scale_out for hit in _unwrapped_private_keys(r.inputs)] == []


def test_required_labels_on_the_labelled_google_resources(scale_out: MockRun) -> None:
    expected = {"foresight-project": "foresight", "foresight-stack": "gcp-test", "managed-by": "pulumi"}
    for type_, key in ((MEMORYSTORE, "labels"), (CONNECTION_POLICY, "labels"), (CLUSTER, "resourceLabels")):
        assert scale_out.one(type_).props[key] == expected, type_


def _policy_failures(run: MockRun) -> list[tuple[str, str, list[str]]]:
    return [
        (resource.name, name, found)
        for resource in run
        for name in POLICIES
        if (found := violations(name, resource.type, resource.inputs))
    ]


def test_policy_pack_passes_on_the_scale_out_stacks(
    scale_out: MockRun, private_scale_out: MockRun, spot_scale_out: MockRun
) -> None:
    for run in (scale_out, private_scale_out, spot_scale_out):
        assert _policy_failures(run) == []


def _tampered(resource: Registered, **changes: Any) -> dict[str, Any]:
    return {**resource.props, **changes}


def test_policy_pack_catches_a_node_pool_without_cmek_and_an_unlabelled_tier(scale_out: MockRun) -> None:
    gpu = scale_out.named("foresight-gpu")
    config = {k: v for k, v in gpu.props["nodeConfig"].items() if k != "bootDiskKmsKey"}
    assert violations("ebs-encrypted-with-customer-key", NODE_POOL, _tampered(gpu, nodeConfig=config)) == [
        "node boot disk is encrypted with Google's default key; set nodeConfig.bootDiskKmsKey to a Cloud KMS key."
    ]
    tier = scale_out.one(MEMORYSTORE)
    assert violations("required-tags", MEMORYSTORE, _tampered(tier, labels={})) == [
        "missing required labels: foresight-project, foresight-stack, managed-by."
    ]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"foresight:fallbackInstanceTypes": '["g2-standard-8"]'}, "foresight:fallbackInstanceTypes"),
        ({"foresight:allowedCidrs": "[]"}, "foresight:allowedCidrs"),
        ({"foresight:instanceType": "n2-standard-8"}, "foresight:instanceType"),
    ],
)
def test_config_gke_cannot_deploy_names_its_key(run_gcp_stack: RunStack, overrides: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        run_gcp_stack({**SCALE_OUT, **overrides})
    assert caught.value.keys == [key]


def test_single_node_stack_still_builds_a_gpu_node(gcp_baseline: MockRun) -> None:
    assert gcp_baseline.one("foresight:gcp:GpuNode")
    assert not gcp_baseline.of_type(COMPONENT) and not gcp_baseline.of_type(CLUSTER)
    assert not any(resource.type.startswith("kubernetes:") for resource in gcp_baseline)


def test_scale_out_example_stack_file_deploys(run_gcp_stack: RunStack) -> None:
    from tests.stacks.test_project_files import _check_example

    config = _check_example("Pulumi.gcp-scale-out-example.yaml")
    assert config["foresight:cloud"] == "gcp" and config["foresight:scaleOut"] == "true"
    run = run_gcp_stack(config)
    gpu = run.named("foresight-gpu").props
    assert gpu["nodeCount"] * len(gpu["nodeLocations"]) == int(config["foresight:nodes"])
    assert yaml.safe_load((ROOT / "Pulumi.gcp-scale-out-example.yaml").read_text())["config"]["gcp:project"]


def test_every_kubernetes_object_the_stack_creates_passes_kubernetes_schemas(scale_out: MockRun) -> None:
    kinds = assert_valid(scale_out)  # the deploy-time settings and annotations merged in, as the cluster gets them
    assert {"ConfigMap", "Namespace", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount",
            "StatefulSet", "StorageClass"} <= set(kinds)


def test_load_balancer_waits_for_its_address_and_the_pods_for_the_certificate(scale_out: MockRun) -> None:
    assert_deploy_order(scale_out, GCP_LB_ADDRESS)


def test_a_new_ca_rolls_the_pods(
    scale_out: MockRun, run_gcp_stack: RunStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced = with_a_new_ca(monkeypatch, lambda: run_gcp_stack(SCALE_OUT))
    assert_deploy_order(replaced, GCP_LB_ADDRESS)
    assert pod_issuer_digest(replaced) != pod_issuer_digest(scale_out)


def test_a_gpu_type_without_persistent_disk_gets_hyperdisk_on_its_pool_and_volumes(run_gcp_stack: RunStack) -> None:
    """A3 Ultra takes no Persistent Disk: its pool's boot disks and the data volumes are Hyperdisk Balanced; the
    system pool (e2) keeps pd-balanced."""
    run = run_gcp_stack({**SCALE_OUT, "foresight:instanceType": "a3-ultragpu-8g"})
    configs = [pool.props["nodeConfig"] for pool in run.of_type(NODE_POOL)]
    disks = {config["machineType"]: config["diskType"] for config in configs}
    assert disks == {"a3-ultragpu-8g": "hyperdisk-balanced", SYSTEM_MACHINE_TYPE: "pd-balanced"}
    storage = run.one("kubernetes:storage.k8s.io/v1:StorageClass").props
    assert storage["parameters"]["type"] == "hyperdisk-balanced"
