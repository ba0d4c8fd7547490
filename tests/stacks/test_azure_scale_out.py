"""`pulumi up` on Azure with `foresight:scaleOut: true` and 3 nodes: AKS, its GPU pool, Azure Cache for Redis, the
pods' workload identity, the Workload, TLS and Vault, resource by resource (the real program under mocks)."""

from __future__ import annotations

import base64
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacks.azure.cluster import GPU_POOL_LABELS, GPU_TAINT, with_kubelogin_login
from stacks.azure.kms import CRYPTO_SERVICE_ENCRYPTION_USER
from stacks.azure.network import dns_label
from stacks.azure.scale_out import CLIENT_ID_ANNOTATION, DNS_LABEL_ANNOTATION, SPOT_TOLERATION, cloudapp_fqdn
from stacks.azure.tier import ACCESS_POLICY_COMMANDS, KEY_PATTERN
from stacks.spec import ConfigError, StackSpec
from tests.stacks.conftest import AZURE_STACK, RunStack
from tests.stacks.endpoint_tls import assert_endpoint_tls, assert_no_key_in_state, layout_of
from tests.stacks.kubernetes_objects import (
    WAIT_FOR_THE_ADDRESS,
    assert_deploy_order,
    assert_pods_read_the_scrape_token,
    assert_valid,
    load_balancer,
    pod_issuer_digest,
    with_a_new_ca,
)
from tests.stacks.mockrun import (
    AZURE_CLUSTER_PRINCIPAL,
    AZURE_DES_PRINCIPAL,
    AZURE_INTERNAL_LB_ADDRESS,
    AZURE_OIDC_ISSUER,
    AZURE_POD_CLIENT,
    AZURE_POD_PRINCIPAL,
    AZURE_REQUIRED_CONFIG,
    AZURE_SUBSCRIPTION,
    AZURE_USER_KUBECONFIG,
    OTHER_SUBSCRIPTION,
    PKI_ROLE,
    PKI_ROOT_CERT,
    ROOT,
    MockRun,
    in_subscription,
    is_secret,
    pki_role,
    plain,
)
from tests.stacks.policy_harness import POLICIES, violations
from tests.stacks.test_project_files import _check_example

SCALE_OUT = {"foresight:scaleOut": "true", "foresight:nodes": "3"}
ALLOWED = "203.0.113.0/24"
COMPONENT = "foresight:azure:ScaleOut"
CLUSTER = "azure-native:containerservice:ManagedCluster"
POOL = "azure-native:containerservice:AgentPool"
REDIS = "azure-native:redis:Redis"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
DAEMON_SET = "kubernetes:apps/v1:DaemonSet"
DEFINITIONS = f"/subscriptions/{AZURE_SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/"
SUBJECT = "system:serviceaccount:foresight:foresight"
NAT_ADDRESS = "198.51.100.9"  # what the fake cloud gives every public IP address
SPOKE = f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/spoke"
HUB_SPOKE = {"foresight:vpcId": SPOKE, "foresight:subnetIds": f'["{SPOKE}/subnets/aks"]'}
ZONE_KEY = "foresight:redisPrivateDnsZoneId"
HUB_ZONE = (
    f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/hub-dns/providers/Microsoft.Network/privateDnsZones/"
    "privatelink.redis.cache.windows.net"
)


@pytest.fixture(scope="module")
def scale_out(run_azure_stack: RunStack) -> MockRun:
    return run_azure_stack(SCALE_OUT)


def spec_of(run: MockRun) -> dict[str, Any]:
    return dict(run.one(STATEFUL_SET).props["spec"])


def pod_spec(run: MockRun) -> dict[str, Any]:
    return dict(spec_of(run)["template"]["spec"])


def config_map(run: MockRun) -> dict[str, str]:
    return dict(run.one("kubernetes:core/v1:ConfigMap").props["data"])


def roles(run: MockRun) -> dict[str, dict[str, Any]]:
    return {resource.name: resource.props for resource in run.of_type(ROLE_ASSIGNMENT)}


def test_scale_out_builds_one_aks_component_instead_of_a_gpu_node(scale_out: MockRun) -> None:
    component = scale_out.one(COMPONENT)
    assert component.parent.endswith("pulumi:pulumi:Stack::foresight-azure-test")
    assert not scale_out.of_type("foresight:azure:GpuNode")
    assert not scale_out.of_type("azure-native:compute:VirtualMachineScaleSet")
    assert not scale_out.of_type("azure-native:network:NetworkSecurityGroup")  # AKS manages the nodes' rules
    assert not any(resource.type.startswith(("aws:", "gcp:")) for resource in scale_out)
    counts = Counter(resource.type for resource in scale_out)
    assert {type_: counts[type_] for type_ in (CLUSTER, POOL, REDIS)} == {CLUSTER: 1, POOL: 1, REDIS: 1}
    assert counts["azure-native:managedidentity:UserAssignedIdentity"] == 2  # control plane, pods
    assert counts["azure-native:managedidentity:FederatedIdentityCredential"] == 1
    assert counts[ROLE_ASSIGNMENT] == 5  # key: DES + pods; control plane: subnet + DES; deployer: cluster
    assert counts["azure-native:keyvault:Key"] == counts["azure-native:compute:DiskEncryptionSet"] == 1
    assert counts["azure-native:network:PrivateEndpoint"] == counts["azure-native:privatedns:PrivateZone"] == 1
    assert counts["pulumi:providers:kubernetes"] == counts["kubernetes:core/v1:Namespace"] == 1
    assert counts[DAEMON_SET] == counts[STATEFUL_SET] == counts["foresight:kubernetes:Workload"] == 1
    assert counts["kubernetes:storage.k8s.io/v1:StorageClass"] == 1
    assert counts["vault:jwt/authBackendRole:AuthBackendRole"] == counts[PKI_ROLE] == counts[PKI_ROOT_CERT] == 1


def test_every_resource_is_the_components_child_or_the_workloads(scale_out: MockRun) -> None:
    component = scale_out.one(COMPONENT)
    workload = scale_out.one("foresight:kubernetes:Workload")
    for resource in scale_out:
        if resource is component:
            continue
        expected = workload.urn if resource.parent == workload.urn else component.urn
        assert resource.parent == expected, resource.name
    assert workload.parent == component.urn
    assert {r.type for r in scale_out if r.parent == workload.urn} >= {STATEFUL_SET, "kubernetes:core/v1:ConfigMap"}


def test_gpu_pool_is_the_requested_size_tainted_and_labelled(scale_out: MockRun) -> None:
    pool = scale_out.one(POOL).props
    assert (pool["mode"], pool["vmSize"], pool["count"]) == ("User", "Standard_NC4as_T4_v3", 3)
    assert pool["scaleSetPriority"] == "Regular" and "scaleSetEvictionPolicy" not in pool
    assert pool["nodeTaints"] == [GPU_TAINT] == ["nvidia.com/gpu=present:NoSchedule"]
    assert pool["nodeLabels"] == GPU_POOL_LABELS
    assert pool["gpuProfile"] == {"driver": "Install"}
    assert pool["osDiskType"] == "Managed" and pool["enableNodePublicIP"] is False
    assert "enableEncryptionAtHost" not in pool  # the single-node stack does not use it either
    assert pool["resourceName"] == scale_out.outputs["instanceId"].value


def test_workload_runs_on_the_gpu_pool_with_workload_identity(scale_out: MockRun) -> None:
    pod = pod_spec(scale_out)
    assert pod["nodeSelector"] == scale_out.one(POOL).props["nodeLabels"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    labels = spec_of(scale_out)["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    account = scale_out.one("kubernetes:core/v1:ServiceAccount").props["metadata"]
    assert account["annotations"][CLIENT_ID_ANNOTATION] == AZURE_POD_CLIENT
    assert spec_of(scale_out)["replicas"] == 3
    claim = spec_of(scale_out)["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "foresight-cmk"
    plugin = scale_out.one(DAEMON_SET).props["spec"]["template"]["spec"]
    assert plugin["nodeSelector"] == GPU_POOL_LABELS


def test_pods_wait_for_their_namespace_permissions_and_tier(scale_out: MockRun) -> None:
    needed = {
        scale_out.one("kubernetes:core/v1:Namespace").urn,
        scale_out.one("kubernetes:storage.k8s.io/v1:StorageClass").urn,
        scale_out.one(DAEMON_SET).urn,
        scale_out.one("azure-native:managedidentity:FederatedIdentityCredential").urn,
        scale_out.one("azure-native:redis:AccessPolicyAssignment").urn,
    }
    workload = scale_out.one("foresight:kubernetes:Workload")
    children = [r for r in scale_out if r.parent == workload.urn]
    assert len(children) == 7
    for child in children:
        assert needed <= set(child.dependencies), child.name


def test_storage_class_encrypts_data_disks_with_the_stacks_key(scale_out: MockRun) -> None:
    storage = scale_out.one("kubernetes:storage.k8s.io/v1:StorageClass").props
    assert storage["provisioner"] == "disk.csi.azure.com"
    assert storage["volumeBindingMode"] == "WaitForFirstConsumer"
    encryption_set = scale_out.one("azure-native:compute:DiskEncryptionSet")
    assert storage["parameters"]["diskEncryptionSetID"].endswith(f"/DiskEncryptionSet/{encryption_set.name}")
    assert storage["parameters"]["skuName"] == "Premium_LRS"


def test_aks_has_no_local_accounts_and_trusts_workload_identity(scale_out: MockRun) -> None:
    cluster = scale_out.one(CLUSTER).props
    assert cluster["disableLocalAccounts"] is True and cluster["enableRBAC"] is True
    assert cluster["aadProfile"]["managed"] is True and cluster["aadProfile"]["enableAzureRBAC"] is True
    assert cluster["oidcIssuerProfile"] == {"enabled": True}
    assert cluster["securityProfile"] == {"workloadIdentity": {"enabled": True}}
    assert cluster["diskEncryptionSetID"].endswith("/DiskEncryptionSet/foresight-disks")
    network = cluster["networkProfile"]
    assert (network["networkPlugin"], network["networkPolicy"]) == ("azure", "cilium")
    assert network["outboundType"] == "userAssignedNATGateway"
    assert cluster["apiServerAccessProfile"] == {"authorizedIPRanges": [ALLOWED, f"{NAT_ADDRESS}/32"]}
    assert cluster["identity"]["type"] == "UserAssigned"
    assert cluster["identity"]["userAssignedIdentities"][0].endswith("/UserAssignedIdentity/foresight-control-plane")
    assert cluster["autoUpgradeProfile"] == {"upgradeChannel": "stable", "nodeOSUpgradeChannel": "NodeImage"}
    [system] = cluster["agentPoolProfiles"]
    assert (system["mode"], system["count"]) == ("System", 2)
    assert system["vnetSubnetID"] == scale_out.one(POOL).props["vnetSubnetID"]
    assert {tags["managed-by"] for tags in (cluster["tags"], system["tags"])} == {"pulumi"}


def test_control_plane_and_deployer_get_only_the_roles_they_need(scale_out: MockRun) -> None:
    granted = roles(scale_out)
    subnet = granted["foresight-control-plane-subnet"]
    assert subnet["principalId"] == AZURE_CLUSTER_PRINCIPAL and subnet["scope"].endswith("/Subnet/foresight-subnet")
    assert subnet["roleDefinitionId"] == DEFINITIONS + "4d97b98b-1d4f-4787-a291-c67834d212e7"  # Network Contributor
    disks = granted["foresight-control-plane-disks"]
    assert disks["scope"].endswith("/DiskEncryptionSet/foresight-disks")
    assert disks["roleDefinitionId"] == DEFINITIONS + "acdd72a7-3385-48ef-bd42-f606fba81ae7"  # Reader
    admin = granted["foresight-deployer-cluster-admin"]
    assert admin["principalId"] == "deployer-object" and admin["scope"].endswith("/ManagedCluster/foresight-aks")
    assert admin["roleDefinitionId"] == DEFINITIONS + "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"


def test_kms_roles_are_scoped_to_the_one_key(scale_out: MockRun) -> None:
    key_id = f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/foresight-rg/providers/Microsoft.keyvault/Key/"
    granted = roles(scale_out)
    on_key = {
        props["principalId"]: props["roleDefinitionId"] for props in granted.values() if "/Key/" in props["scope"]
    }
    assert on_key == {
        AZURE_DES_PRINCIPAL: DEFINITIONS + CRYPTO_SERVICE_ENCRYPTION_USER,
        AZURE_POD_PRINCIPAL: DEFINITIONS + CRYPTO_SERVICE_ENCRYPTION_USER,  # wrap/unwrap only
    }
    assert all(props["scope"] == key_id + "foresight-key" for props in granted.values() if "/Key/" in props["scope"])


def test_federated_credential_pins_the_service_account_and_audience(scale_out: MockRun) -> None:
    credential = scale_out.one("azure-native:managedidentity:FederatedIdentityCredential").props
    assert credential["issuer"] == AZURE_OIDC_ISSUER
    assert credential["subject"] == SUBJECT
    assert credential["audiences"] == ["api://AzureADTokenExchange"]
    pods = scale_out.named("foresight-pods")
    assert credential["resourceName"] == pods.props.get("name", "foresight-pods1a2b3c4")


def test_redis_is_tls_only_entra_only_and_private(scale_out: MockRun) -> None:
    redis = scale_out.one(REDIS).props
    assert redis["enableNonSslPort"] is False and redis["minimumTlsVersion"] == "1.2"
    assert redis["disableAccessKeyAuthentication"] is True
    assert redis["redisConfiguration"] == {"aadEnabled": "true", "maxmemoryPolicy": "allkeys-lru"}
    assert redis["publicNetworkAccess"] == "Disabled"
    assert redis["sku"] == {"name": "Standard", "family": "C", "capacity": 1}
    endpoint = scale_out.one("azure-native:network:PrivateEndpoint").props
    [connection] = endpoint["privateLinkServiceConnections"]
    assert connection["groupIds"] == ["redisCache"] and connection["privateLinkServiceId"].endswith(
        "/Redis/foresight-tier"
    )
    assert endpoint["subnet"]["id"].endswith("/Subnet/foresight-subnet")
    zone = scale_out.one("azure-native:privatedns:PrivateZone").props
    assert zone["privateZoneName"] == "privatelink.redis.cache.windows.net"
    link = scale_out.one("azure-native:privatedns:VirtualNetworkLink").props
    assert link["virtualNetwork"]["id"].endswith("/VirtualNetwork/foresight-vnet")
    assert link["registrationEnabled"] is False
    group = scale_out.one("azure-native:network:PrivateDnsZoneGroup").props
    assert group["privateDnsZoneConfigs"][0]["privateDnsZoneId"].endswith("/PrivateZone/foresight-tier-dns")


def test_the_pods_identity_may_run_only_the_services_commands_on_its_keys(scale_out: MockRun) -> None:
    policy = scale_out.one("azure-native:redis:AccessPolicy").props
    assert policy["permissions"].split() == [f"+{c}" for c in ACCESS_POLICY_COMMANDS] + ["~fs:*"]
    assignment = scale_out.one("azure-native:redis:AccessPolicyAssignment").props
    assert assignment["objectId"] == AZURE_POD_PRINCIPAL
    assert assignment["accessPolicyName"] == policy["accessPolicyName"]
    assert KEY_PATTERN == "fs:*"


def test_access_policy_covers_every_command_the_shared_tier_sends() -> None:
    """service/shared_tier.py's redis-py calls (client, pipeline, pub/sub), each a command the policy allows."""
    from service.shared_tier import KEY_PREFIX

    source = "".join((ROOT / f"service/{module}.py").read_text() for module in ("shared_tier", "tier_usage"))
    calls = set(re.findall(r"\b(?:self\._client|pipe|pubsub|fresh)\.([a-z]+)\(", source))
    commands = {"delete": "del"}  # redis-py's name for DEL
    sent = {commands.get(call, call) for call in calls - {"pipeline", "pubsub", "execute", "aclose", "get_message"}}
    assert sent, "the tier's calls were not found; update this test with shared_tier.py"
    assert sent <= set(ACCESS_POLICY_COMMANDS), sent - set(ACCESS_POLICY_COMMANDS)
    assert KEY_PREFIX.decode() + "*" == KEY_PATTERN


def test_config_map_carries_the_key_the_tier_and_the_pods_identity(scale_out: MockRun) -> None:
    settings = config_map(scale_out)
    assert settings["FORESIGHT_SHARED_TIER_AUTH"] == "azure"
    assert settings["FORESIGHT_SHARED_TIER_USERNAME"] == AZURE_POD_PRINCIPAL
    host = scale_out.one(REDIS).props.get("name", "foresight-tier1a2b3c4")
    assert settings["FORESIGHT_SHARED_TIER_URL"] == f"rediss://{host}.redis.cache.windows.net:6380"
    assert settings["FORESIGHT_KMS_PROVIDER"] == "azure"
    assert settings["FORESIGHT_KMS_KEY_ID"] == scale_out.outputs["kmsKeyId"].value
    assert re.fullmatch(r"https://[a-z0-9]+\.vault\.azure\.net/keys/foresight-key", settings["FORESIGHT_KMS_KEY_ID"])
    assert not any(key.startswith("AZURE_") for key in settings)  # the workload identity webhook injects those
    egress = scale_out.one("kubernetes:networking.k8s.io/v1:NetworkPolicy").props["spec"]["egress"][1]["ports"]
    assert {"port": 6380, "protocol": "TCP"} in egress


def test_service_settings_accept_the_pods_environment(scale_out: MockRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import load_settings

    for name, value in config_map(scale_out).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.shared_tier_auth, settings.shared_tier_username) == ("azure", AZURE_POD_PRINCIPAL)
    assert settings.kms_provider == "azure"


def test_vault_role_is_bound_to_the_service_account_from_the_clusters_issuer(scale_out: MockRun) -> None:
    backend = scale_out.one("vault:jwt/authBackend:AuthBackend").props
    assert backend["oidcDiscoveryUrl"] == backend["boundIssuer"] == AZURE_OIDC_ISSUER
    role = scale_out.one("vault:jwt/authBackendRole:AuthBackendRole").props
    assert role["boundClaims"] == {"sub": SUBJECT} and role["boundAudiences"] == ["vault"]
    assert role["tokenPolicies"] == ["foresight-azure-test-node"]


def test_pods_read_the_scrape_token_that_rotate_writes(scale_out: MockRun) -> None:
    assert_pods_read_the_scrape_token(scale_out, "azure-test")


def test_endpoint_is_the_load_balancers_dns_label_and_the_certificate_names_it(scale_out: MockRun) -> None:
    host = scale_out.outputs["endpointHost"].value
    services = [s.props for s in scale_out.of_type("kubernetes:core/v1:Service") if s.props["spec"].get("type")]
    [balancer] = [s for s in services if s["spec"]["type"] == "LoadBalancer"]
    dns_label = balancer["metadata"]["annotations"][DNS_LABEL_ANNOTATION]
    assert host == f"{dns_label}.westeurope.cloudapp.azure.com"
    assert balancer["spec"]["loadBalancerSourceRanges"] == [ALLOWED]
    assert_endpoint_tls(scale_out, layout_of(AZURE_STACK, AZURE_REQUIRED_CONFIG), host, is_ip=False)


def test_outputs_are_the_shared_set_and_hold_no_secret(scale_out: MockRun, azure_baseline: MockRun) -> None:
    assert list(scale_out.outputs) == list(azure_baseline.outputs)
    assert not any(output.secret for output in scale_out.outputs.values())
    assert not any("PRIVATE KEY" in str(output.value) for output in scale_out.outputs.values())
    assert scale_out.outputs["instanceId"].value == "foresight-aks1a2b3c4"
    assert scale_out.outputs["nodeIdentity"].value == AZURE_POD_PRINCIPAL  # the pods' workload identity
    assert scale_out.outputs["vaultAuthMount"].value == "foresight-azure-test-azure"


def test_no_credential_is_recorded_in_any_input(scale_out: MockRun) -> None:
    provider = scale_out.one("pulumi:providers:kubernetes")
    assert is_secret(provider.inputs["kubeconfig"])
    kubeconfig = yaml.safe_load(plain(provider.inputs["kubeconfig"]))
    [user] = kubeconfig["users"]
    assert set(user["user"]) == {"exec"} and user["user"]["exec"]["command"] == "kubelogin"
    assert user["user"]["exec"]["args"][-2:] == ["--login", "azurecli"]
    assert_no_key_in_state(scale_out)
    for resource in scale_out:
        if resource.type == "pulumi:providers:kubernetes":
            continue
        text = str(resource.inputs)
        for marker in ("PRIVATE KEY", "client-key-data", "client-certificate-data", "password", "accessKey"):
            assert marker not in text or is_secret_everywhere(resource, marker), (resource.name, marker)
    assert not any("ListManagedClusterAdmin" in token or "listRedisKeys" in token for token, _ in scale_out.invokes)


def is_secret_everywhere(resource: Any, marker: str) -> bool:
    """The marker appears only inside secret values."""

    def visible(value: Any) -> str:
        if is_secret(value):
            return ""
        if isinstance(value, dict):
            return " ".join(visible(item) for item in value.values())
        if isinstance(value, list):
            return " ".join(visible(item) for item in value)
        return str(value)

    return marker not in visible(resource.inputs)


def test_kubelogin_login_replaces_devicecode() -> None:
    converted = yaml.safe_load(with_kubelogin_login(AZURE_USER_KUBECONFIG))
    args = converted["users"][0]["user"]["exec"]["args"]
    assert args.count("--login") == 1 and args[-2:] == ["--login", "azurecli"]
    assert "devicecode" not in args
    raw = base64.b64encode(AZURE_USER_KUBECONFIG.encode()).decode()
    assert base64.b64decode(raw).decode() == AZURE_USER_KUBECONFIG


def test_policy_pack_passes_on_the_scale_out_stack(scale_out: MockRun, spot_private: MockRun) -> None:
    for run in (scale_out, spot_private):
        for resource in run:
            for name in POLICIES:
                assert violations(name, resource.type, resource.inputs) == [], (resource.name, name)


def test_policy_pack_requires_a_disk_encryption_set_on_an_aks_cluster(scale_out: MockRun) -> None:
    cluster = dict(scale_out.one(CLUSTER).inputs)
    assert violations("ebs-encrypted-with-customer-key", CLUSTER, cluster) == []
    del cluster["diskEncryptionSetID"]
    assert violations("ebs-encrypted-with-customer-key", CLUSTER, cluster) == [
        "node OS disk is encrypted with a platform-managed key; set diskEncryptionSetID to a disk encryption set."
    ]
    for resource_type in (CLUSTER, POOL, REDIS, "azure-native:network:PrivateEndpoint"):
        assert violations("required-tags", resource_type, {}) != [], resource_type


@pytest.fixture(scope="module")
def spot_private(run_azure_stack: RunStack) -> MockRun:
    return run_azure_stack({**SCALE_OUT, "foresight:spot": "true", "foresight:allowedCidrs": '["10.0.0.0/8"]'})


def test_spot_pool_is_evicted_by_deletion_and_its_pods_tolerate_the_spot_taint(spot_private: MockRun) -> None:
    pool = spot_private.one(POOL).props
    assert (pool["scaleSetPriority"], pool["scaleSetEvictionPolicy"], pool["spotMaxPrice"]) == ("Spot", "Delete", -1)
    assert SPOT_TOLERATION in pod_spec(spot_private)["tolerations"]
    assert SPOT_TOLERATION in spot_private.one(DAEMON_SET).props["spec"]["template"]["spec"]["tolerations"]


def test_private_stack_has_a_private_api_server_and_an_internal_load_balancer(spot_private: MockRun) -> None:
    cluster = spot_private.one(CLUSTER).props
    assert cluster["apiServerAccessProfile"] == {"enablePrivateCluster": True}
    balancer = next(s.props for s in spot_private.of_type("kubernetes:core/v1:Service") if s.props["spec"].get("type"))
    assert balancer["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/azure-load-balancer-internal": "true",
        **WAIT_FOR_THE_ADDRESS,
    }
    assert spot_private.outputs["endpointHost"].value == AZURE_INTERNAL_LB_ADDRESS
    layout = layout_of(AZURE_STACK, AZURE_REQUIRED_CONFIG)
    assert_endpoint_tls(spot_private, layout, AZURE_INTERNAL_LB_ADDRESS, is_ip=True)


def test_public_api_server_admits_the_nodes_nat_address_or_they_never_join(scale_out: MockRun) -> None:
    """AKS adds a Standard load balancer's outbound address to the authorized ranges, not a NAT gateway's."""
    cluster = scale_out.one(CLUSTER).props
    assert cluster["networkProfile"]["outboundType"] == "userAssignedNATGateway"
    (nat_address,) = scale_out.of_type("azure-native:network:PublicIPAddress")  # the NAT gateway's only
    gateway = scale_out.one("azure-native:network:NatGateway").props
    assert [ip["id"].rsplit("/", 1)[1] for ip in gateway["publicIpAddresses"]] == [nat_address.name]
    assert cluster["apiServerAccessProfile"]["authorizedIPRanges"] == [ALLOWED, f"{NAT_ADDRESS}/32"]


def test_a_given_network_authorizes_only_the_allowed_ranges(run_azure_stack: RunStack) -> None:
    """Its egress address is unknown to the stack: docs/stacks-azure.md says to list it in allowedCidrs."""
    vnet = f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/hub"
    allowed = '["203.0.113.0/24", "192.0.2.10/32"]'
    run = run_azure_stack(
        {**SCALE_OUT, "foresight:vpcId": vnet, "foresight:subnetIds": f'["{vnet}/subnets/aks"]',
         "foresight:allowedCidrs": allowed}
    )
    profile = run.one(CLUSTER).props["apiServerAccessProfile"]
    assert profile == {"authorizedIPRanges": ["203.0.113.0/24", "192.0.2.10/32"]}


def test_a_network_that_resolves_redis_private_links_already_gets_no_second_zone(run_azure_stack: RunStack) -> None:
    """A virtual network cannot be linked to two privatelink.redis.cache.windows.net zones: the endpoint registers in
    the hub's zone instead, and the pods wait for that registration."""
    run = run_azure_stack({**SCALE_OUT, **HUB_SPOKE, ZONE_KEY: HUB_ZONE})
    assert not run.of_type("azure-native:privatedns:PrivateZone")
    assert not run.of_type("azure-native:privatedns:VirtualNetworkLink")
    group = run.one("azure-native:network:PrivateDnsZoneGroup")
    assert group.props["privateDnsZoneConfigs"] == [{"name": "redis", "privateDnsZoneId": HUB_ZONE}]
    assert group.urn in run.one(STATEFUL_SET).dependencies


def test_a_given_network_without_the_key_gets_its_own_zone_linked_to_it(run_azure_stack: RunStack) -> None:
    run = run_azure_stack({**SCALE_OUT, **HUB_SPOKE})
    zone = run.one("azure-native:privatedns:PrivateZone")
    assert zone.props["privateZoneName"] == "privatelink.redis.cache.windows.net"
    link = run.one("azure-native:privatedns:VirtualNetworkLink")
    assert link.props["virtualNetwork"]["id"] == HUB_SPOKE["foresight:vpcId"]
    group = run.one("azure-native:network:PrivateDnsZoneGroup")
    assert group.props["privateDnsZoneConfigs"][0]["privateDnsZoneId"].endswith(f"/PrivateZone/{zone.name}")
    assert link.urn in group.dependencies


def test_the_zone_key_is_refused_on_other_clouds_by_name(run_stack: RunStack) -> None:
    with pytest.raises(ConfigError) as raised:
        run_stack({**SCALE_OUT, ZONE_KEY: HUB_ZONE})
    assert raised.value.keys == [ZONE_KEY]


def test_bring_your_own_network_puts_nodes_and_endpoint_in_the_given_subnet(run_azure_stack: RunStack) -> None:
    vnet = f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/hub"
    run = run_azure_stack({**SCALE_OUT, "foresight:vpcId": vnet, "foresight:subnetIds": f'["{vnet}/subnets/aks"]'})
    assert not run.of_type("azure-native:network:VirtualNetwork") and not run.of_type("azure-native:network:Subnet")
    assert run.one(POOL).props["vnetSubnetID"] == f"{vnet}/subnets/aks"
    assert run.one("azure-native:network:PrivateEndpoint").props["subnet"]["id"] == f"{vnet}/subnets/aks"
    assert run.one("azure-native:privatedns:VirtualNetworkLink").props["virtualNetwork"]["id"] == vnet
    assert roles(run)["foresight-control-plane-subnet"]["scope"] == f"{vnet}/subnets/aks"


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"foresight:fallbackInstanceTypes": '["Standard_NC8as_T4_v3"]'}, "foresight:fallbackInstanceTypes", "one VM"),
        ({"foresight:allowedCidrs": "[]"}, "foresight:allowedCidrs", "admits these ranges only"),
        ({"foresight:instanceType": "Standard_D4s_v5"}, "foresight:instanceType", "NVIDIA GPU"),
        ({ZONE_KEY: HUB_ZONE}, ZONE_KEY, "only with foresight:cloud azure, foresight:scaleOut and foresight:vpcId"),
        ({**HUB_SPOKE, ZONE_KEY: HUB_ZONE.replace("redis.cache", "blob.core")}, ZONE_KEY, "not the resource id"),
        ({**HUB_SPOKE, ZONE_KEY: "privatelink.redis.cache.windows.net"}, ZONE_KEY, "not the resource id"),
    ],
)
def test_config_that_aks_cannot_take_names_its_key(overrides: dict[str, str], key: str, fragment: str) -> None:
    from stacks.azure import ScaleOutArgs

    config = {**AZURE_REQUIRED_CONFIG, **SCALE_OUT, **overrides}
    with pytest.raises(ConfigError) as raised:
        ScaleOutArgs.from_spec(StackSpec.from_values("foresight", "azure-test", config.get))
    assert raised.value.keys == [key] and fragment in str(raised.value)


def test_cloudapp_name_is_the_single_node_label_in_the_region() -> None:
    spec = StackSpec.from_values("foresight", "azure-test", {**AZURE_REQUIRED_CONFIG, **SCALE_OUT}.get)
    fqdn = cloudapp_fqdn(spec, AZURE_SUBSCRIPTION)
    assert re.fullmatch(r"foresight-azure-test-[0-9a-f]{8}\.westeurope\.cloudapp\.azure\.com", fqdn)
    assert fqdn == f"{dns_label(spec, AZURE_SUBSCRIPTION)}.westeurope.cloudapp.azure.com"


def test_the_same_stack_in_two_subscriptions_gets_two_dns_labels(scale_out: MockRun, run_azure_stack: RunStack) -> None:
    """A cloudapp.azure.com label is unique in its region across all of Azure, not per subscription."""
    other = run_azure_stack(SCALE_OUT, invoke=in_subscription(OTHER_SUBSCRIPTION))

    def label(run: MockRun) -> str:
        return str(load_balancer(run).props["metadata"]["annotations"][DNS_LABEL_ANNOTATION])

    assert label(other) != label(scale_out)
    host = other.outputs["endpointHost"].value
    assert host == f"{label(other)}.westeurope.cloudapp.azure.com"
    assert pki_role(other)["allowed_domains"] == [host]


def test_example_scale_out_stack_file_deploys(run_azure_stack: RunStack) -> None:
    config = _check_example("Pulumi.azure-scale-out-example.yaml")
    assert config["foresight:cloud"] == "azure" and config["foresight:scaleOut"] == "true"
    run = run_azure_stack(config)
    run.one(COMPONENT)
    assert run.one(POOL).props["count"] == int(config["foresight:nodes"])
    assert Path(ROOT / "Pulumi.azure-scale-out-example.yaml").read_text().count("scaleOut") >= 1


def test_every_kubernetes_object_the_stack_creates_passes_kubernetes_schemas(scale_out: MockRun) -> None:
    kinds = assert_valid(scale_out)  # the deploy-time settings and annotations merged in, as the cluster gets them
    assert {"ConfigMap", "Namespace", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount",
            "StatefulSet", "StorageClass"} <= set(kinds)


def test_load_balancer_waits_for_its_address_and_the_pods_for_the_certificate(scale_out: MockRun) -> None:
    assert_deploy_order(scale_out, scale_out.outputs["endpointHost"].value)


def test_a_new_ca_rolls_the_pods(
    scale_out: MockRun, run_azure_stack: RunStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced = with_a_new_ca(monkeypatch, lambda: run_azure_stack(SCALE_OUT))
    assert_deploy_order(replaced, replaced.outputs["endpointHost"].value)
    assert pod_issuer_digest(replaced) != pod_issuer_digest(scale_out)
