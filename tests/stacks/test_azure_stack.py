"""`pulumi up` on Azure with only the required config: what the program registers, resource by resource."""

from __future__ import annotations

import base64
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from stacks.azure.compute import DATA_DISK_PATH, IMAGE, NO_LOGIN_KEY
from stacks.azure.kms import CRYPTO_SERVICE_ENCRYPTION_USER
from stacks.azure.vault import IDENTITY_AUDIENCE
from tests.stacks.conftest import AZURE_STACK, RunStack
from tests.stacks.endpoint_tls import assert_endpoint_tls, layout_of
from tests.stacks.mockrun import (
    AZURE_DES_PRINCIPAL,
    AZURE_LOCATION,
    AZURE_NODE_CLIENT,
    AZURE_NODE_PRINCIPAL,
    AZURE_REQUIRED_CONFIG,
    AZURE_SUBSCRIPTION,
    AZURE_TENANT,
    OTHER_SUBSCRIPTION,
    MockRun,
    in_subscription,
    pki_role,
)

ALLOWED = "203.0.113.0/24"
SCALE_SET = "azure-native:compute:VirtualMachineScaleSet"
NSG = "azure-native:network:NetworkSecurityGroup"
LOAD_BALANCER = "azure-native:network:LoadBalancer"
KEY = "azure-native:keyvault:Key"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
JWT_ROLE = "vault:jwt/authBackendRole:AuthBackendRole"


def node_profile(run: MockRun) -> dict[str, Any]:
    return dict(run.one(SCALE_SET).props["virtualMachineProfile"])


def azure_user_data(run: MockRun) -> str:
    return base64.b64decode(node_profile(run)["osProfile"]["customData"]).decode()


def env_file(run: MockRun) -> dict[str, str]:
    files = {entry["path"]: entry["content"] for entry in yaml.safe_load(azure_user_data(run))["write_files"]}
    return dict(line.split("=", 1) for line in files["/etc/foresight/foresight.env"].splitlines())


def security_rules(run: MockRun) -> dict[str, dict[str, Any]]:
    return {rule["name"]: rule for rule in run.one(NSG).props["securityRules"]}


def test_everything_is_a_child_of_one_gpu_node_component(azure_baseline: MockRun) -> None:
    component = azure_baseline.one("foresight:azure:GpuNode")
    assert component.parent.endswith("pulumi:pulumi:Stack::foresight-azure-test")
    children = [resource for resource in azure_baseline if resource is not component]
    assert len(children) > 20
    assert all(child.parent == component.urn for child in children), [
        child.name for child in children if child.parent != component.urn
    ]
    assert not any(resource.type.startswith(("aws:", "gcp:")) for resource in azure_baseline)
    group = azure_baseline.one("azure-native:resources:ResourceGroup").props
    assert group["location"] == AZURE_LOCATION


def test_key_vault_key_rotates_and_protects_against_purge(azure_baseline: MockRun) -> None:
    vault = azure_baseline.one("azure-native:keyvault:Vault").props
    properties = vault["properties"]
    assert properties["enableRbacAuthorization"] is True and properties["enablePurgeProtection"] is True
    assert properties["enableSoftDelete"] is True and properties["softDeleteRetentionInDays"] == 90
    assert properties["tenantId"] == AZURE_TENANT
    assert 3 <= len(vault["vaultName"]) <= 24 and vault["vaultName"].isalnum()
    assert vault["vaultName"].endswith(AZURE_NODE_PRINCIPAL.replace("-", "")[:12])
    key = azure_baseline.one(KEY).props["properties"]
    assert (key["kty"], key["keySize"]) == ("RSA", 3072)
    policy = key["rotationPolicy"]
    assert policy["lifetimeActions"] == [{"action": {"type": "rotate"}, "trigger": {"timeAfterCreate": "P90D"}}]
    assert policy["attributes"] == {"expiryTime": "P2Y"}


def test_disks_are_encrypted_through_the_stacks_encryption_set(azure_baseline: MockRun) -> None:
    encryption_set = azure_baseline.one("azure-native:compute:DiskEncryptionSet")
    props = encryption_set.props
    assert props["encryptionType"] == "EncryptionAtRestWithCustomerKey"
    assert props["rotationToLatestKeyVersionEnabled"] is True
    assert props["activeKey"]["keyUrl"].endswith("/keys/foresight-key/0123456789abcdef0123456789abcdef")
    storage = node_profile(azure_baseline)["storageProfile"]
    disks = [storage["osDisk"], *storage["dataDisks"]]
    ids = {disk["managedDisk"]["diskEncryptionSet"]["id"] for disk in disks}
    assert len(ids) == 1 and next(iter(ids)).endswith("/DiskEncryptionSet/foresight-disks")
    assert storage["dataDisks"][0]["lun"] == 0 and storage["dataDisks"][0]["diskSizeGB"] == 100
    assert DATA_DISK_PATH == "/dev/disk/azure/scsi1/lun0"
    assert any(DATA_DISK_PATH in command for command in yaml.safe_load(azure_user_data(azure_baseline))["runcmd"])


def test_only_the_encryption_set_and_the_node_may_use_the_key(azure_baseline: MockRun) -> None:
    group = f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/foresight-rg"
    key_id = f"{group}/providers/Microsoft.keyvault/Key/foresight-key"
    roles = {r.props["principalId"]: r.props for r in azure_baseline.of_type(ROLE_ASSIGNMENT)}
    definitions = f"/subscriptions/{AZURE_SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/"
    assert {principal: role["roleDefinitionId"] for principal, role in roles.items()} == {
        AZURE_DES_PRINCIPAL: definitions + CRYPTO_SERVICE_ENCRYPTION_USER,
        AZURE_NODE_PRINCIPAL: definitions + CRYPTO_SERVICE_ENCRYPTION_USER,  # wrap/unwrap only
    }
    assert all(role["scope"] == key_id and role["principalType"] == "ServicePrincipal" for role in roles.values())


def test_own_network_keeps_the_node_private_behind_a_nat_gateway(azure_baseline: MockRun) -> None:
    subnet = azure_baseline.one("azure-native:network:Subnet").props
    assert subnet["addressPrefix"] == "10.42.0.0/20" and subnet["defaultOutboundAccess"] is False
    assert subnet["natGateway"]["id"].endswith("/NatGateway/foresight-nat")
    configs = node_profile(azure_baseline)["networkProfile"]["networkInterfaceConfigurations"]
    assert len(configs) == 1
    ip = configs[0]["ipConfigurations"][0]
    assert "publicIPAddressConfiguration" not in ip  # no public address on the node
    assert configs[0]["networkSecurityGroup"]["id"].endswith("/NetworkSecurityGroup/foresight-node")


def test_only_service_ports_open_and_only_to_allowed_cidrs(azure_baseline: MockRun) -> None:
    rules = security_rules(azure_baseline)
    inbound = {name: rule for name, rule in rules.items() if rule["direction"] == "Inbound"}
    assert set(inbound) == {"service-in", "health-probe-in"}
    service = inbound["service-in"]
    assert service["sourceAddressPrefixes"] == [ALLOWED] and service["access"] == "Allow"
    assert service["destinationPortRanges"] == ["6380", "8443"] and service["protocol"] == "Tcp"
    probe = inbound["health-probe-in"]
    assert probe["sourceAddressPrefix"] == "AzureLoadBalancer" and probe["destinationPortRanges"] == ["8443"]


def test_node_egress_is_https_and_vault_only(azure_baseline: MockRun) -> None:
    rules = security_rules(azure_baseline)
    allow, deny = rules["https-vault-out"], rules["deny-internet-out"]
    assert allow["direction"] == deny["direction"] == "Outbound"
    assert allow["destinationPortRanges"] == ["443", "8200"] and allow["destinationAddressPrefix"] == "Internet"
    assert (deny["access"], deny["protocol"], deny["destinationPortRange"]) == ("Deny", "*", "*")
    assert allow["priority"] < deny["priority"]


def test_standard_load_balancer_gives_a_dns_named_tls_passthrough_endpoint(azure_baseline: MockRun) -> None:
    address = azure_baseline.named("foresight-address").props
    assert address["sku"] == {"name": "Standard"} and address["publicIPAllocationMethod"] == "Static"
    label = address["dnsSettings"]["domainNameLabel"]
    assert azure_baseline.outputs["endpointHost"].value == f"{label}.{AZURE_LOCATION}.cloudapp.azure.com"
    lb = azure_baseline.one(LOAD_BALANCER).props
    assert lb["sku"] == {"name": "Standard", "tier": "Regional"}
    assert [(r["frontendPort"], r["backendPort"], r["protocol"]) for r in lb["loadBalancingRules"]] == [
        (6380, 6380, "Tcp"),
        (8443, 8443, "Tcp"),
    ]
    assert lb["probes"][0]["requestPath"] == "/healthz"
    assert (lb["probes"][0]["protocol"], lb["probes"][0]["port"]) == ("Https", 8443)
    pool = node_profile(azure_baseline)["networkProfile"]["networkInterfaceConfigurations"][0]["ipConfigurations"][0]
    assert pool["loadBalancerBackendAddressPools"][0]["id"].endswith(
        "/providers/Microsoft.Network/loadBalancers/foresight-azure-test-lb/backendAddressPools/node"
    )
    rule = lb["loadBalancingRules"][0]
    assert rule["probe"]["id"].endswith("/loadBalancers/foresight-azure-test-lb/probes/healthz")


def test_the_same_stack_in_two_subscriptions_gets_two_dns_labels(
    azure_baseline: MockRun, run_azure_stack: RunStack
) -> None:
    """A cloudapp.azure.com label is unique in its region across all of Azure, and every project is `foresight`."""
    other = run_azure_stack(invoke=in_subscription(OTHER_SUBSCRIPTION))

    def label(run: MockRun) -> str:
        return str(run.named("foresight-address").props["dnsSettings"]["domainNameLabel"])

    assert label(other) != label(azure_baseline)
    assert label(other).startswith("foresight-azure-test-") and len(label(other)) <= 63
    host = other.outputs["endpointHost"].value
    assert host == f"{label(other)}.{AZURE_LOCATION}.cloudapp.azure.com"
    assert pki_role(other)["allowed_domains"] == [host]


def test_scale_set_of_one_repairs_a_regular_node(azure_baseline: MockRun) -> None:
    scale_set = azure_baseline.one(SCALE_SET).props
    assert scale_set["orchestrationMode"] == "Flexible"
    assert scale_set["sku"] == {"name": "Standard_NC4as_T4_v3", "capacity": 1}
    assert "skuProfile" not in scale_set
    assert scale_set["automaticRepairsPolicy"] == {"enabled": True, "gracePeriod": "PT20M", "repairAction": "Replace"}
    assert "spotRestorePolicy" not in scale_set  # Try & restore is for evicted Spot nodes only
    profile = node_profile(azure_baseline)
    assert profile["priority"] == "Regular" and "evictionPolicy" not in profile
    assert profile["storageProfile"]["imageReference"] == IMAGE
    [health] = profile["extensionProfile"]["extensions"]
    assert (health["publisher"], health["type"]) == ("Microsoft.ManagedServices", "ApplicationHealthLinux")
    assert health["settings"]["port"] == 8443 and health["settings"]["requestPath"] == "/healthz"
    assert scale_set["identity"]["userAssignedIdentities"][0].endswith("/UserAssignedIdentity/foresight-node")


def test_health_extension_mode_matches_what_healthz_answers(azure_baseline: MockRun) -> None:
    """Binary Health States ("1.0"): a 200 is Healthy, anything else or no answer Unhealthy, and repaired. Rich
    ("2.0") calls a node Healthy only on a body with `"ApplicationHealthState": "Healthy"` and every other answer,
    no answer included, Unknown: a switch to Rich fails here until /healthz sends that field."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from service.http.routes import health as health_routes

    [health] = node_profile(azure_baseline)["extensionProfile"]["extensions"]
    assert health["typeHandlerVersion"] == "1.0"
    assert health["settings"]["protocol"] == "https" and "gracePeriod" not in health["settings"]  # Rich-only
    app = FastAPI()
    app.include_router(health_routes.router)  # the router the service mounts (service/http/app.py)
    answer = TestClient(app).get(health["settings"]["requestPath"])
    assert answer.status_code == 200
    assert "ApplicationHealthState" not in answer.json()


def test_no_password_and_a_key_nobody_holds_without_ssh(azure_baseline: MockRun) -> None:
    linux = node_profile(azure_baseline)["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert "adminPassword" not in node_profile(azure_baseline)["osProfile"]
    [key] = linux["ssh"]["publicKeys"]
    assert key["keyData"] == NO_LOGIN_KEY
    public = load_ssh_public_key(NO_LOGIN_KEY.encode())
    assert isinstance(public, RSAPublicKey) and public.key_size == 3072
    assert "systemctl disable --now ssh.socket" in azure_user_data(azure_baseline)


def test_vault_pki_issues_for_the_endpoint_only_and_no_key_is_in_the_state(azure_baseline: MockRun) -> None:
    host = azure_baseline.outputs["endpointHost"].value
    layout = layout_of(AZURE_STACK, AZURE_REQUIRED_CONFIG)
    assert_endpoint_tls(azure_baseline, layout, host, is_ip=False)
    assert f"FORESIGHT_TLS_COMMON_NAME={host}\n" in azure_user_data(azure_baseline)
    assert "PRIVATE KEY" not in azure_user_data(azure_baseline)


def test_vault_wiring_trusts_the_tenant_and_binds_the_node_identity(azure_baseline: MockRun) -> None:
    backend = azure_baseline.one("vault:jwt/authBackend:AuthBackend").props
    assert backend["type"] == "jwt" and backend["path"] == "foresight-azure-test-azure"
    assert backend["oidcDiscoveryUrl"] == backend["boundIssuer"] == f"https://sts.windows.net/{AZURE_TENANT}/"
    role = azure_baseline.one(JWT_ROLE).props
    assert role["roleName"] == "foresight-azure-test-node" and role["roleType"] == "jwt"
    assert role["boundAudiences"] == [IDENTITY_AUDIENCE] == ["https://management.azure.com/"]
    assert role["boundClaims"] == {"oid": AZURE_NODE_PRINCIPAL}
    assert role["tokenPolicies"] == ["foresight-azure-test-node"]


def test_user_data_logs_in_with_the_managed_identity_and_runs_on_the_gpu(azure_baseline: MockRun) -> None:
    env = env_file(azure_baseline)
    assert env["FORESIGHT_VAULT_AUTH_METHOD"] == "jwt" and env["FORESIGHT_VAULT_JWT_SOURCE"] == "azure"
    assert env["FORESIGHT_VAULT_AZURE_CLIENT_ID"] == env["AZURE_CLIENT_ID"] == AZURE_NODE_CLIENT
    assert env["FORESIGHT_KMS_PROVIDER"] == "azure"
    assert env["FORESIGHT_KMS_KEY_ID"] == azure_baseline.outputs["kmsKeyId"].value
    assert env["FORESIGHT_KMS_KEY_ID"].startswith("https://") and "/keys/" in env["FORESIGHT_KMS_KEY_ID"]
    assert "--gpus all" in azure_user_data(azure_baseline)


def test_service_settings_accept_the_azure_node_environment(azure_baseline: MockRun, monkeypatch: Any) -> None:
    from service.config import load_settings

    for name, value in env_file(azure_baseline).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.vault_auth_method, settings.vault_jwt_source) == ("jwt", "azure")
    assert settings.vault_azure_client_id == AZURE_NODE_CLIENT
    assert settings.kms_provider == "azure" and settings.kms_key_id.endswith("/keys/foresight-key")


def test_outputs_are_the_shared_set_and_hold_no_secret(azure_baseline: MockRun, baseline: MockRun) -> None:
    assert set(azure_baseline.outputs) == set(baseline.outputs)
    assert not any(output.secret for output in azure_baseline.outputs.values())
    assert not any("PRIVATE KEY" in str(output.value) for output in azure_baseline.outputs.values())
    assert azure_baseline.outputs["instanceId"].value == "foresight-node1a2b3c4"
    assert azure_baseline.outputs["nodeIdentity"].value == AZURE_NODE_PRINCIPAL  # the one Vault's login binds


def test_required_tags_on_every_tagged_resource(azure_baseline: MockRun) -> None:
    tagged = [r for r in azure_baseline if r.type.startswith("azure-native:") and "tags" in r.props]
    untagged = {r.type for r in azure_baseline if r.type.startswith("azure-native:")} - {r.type for r in tagged}
    assert untagged == {"azure-native:network:Subnet", ROLE_ASSIGNMENT}  # neither takes tags
    for resource in tagged:
        tags = resource.props["tags"]
        assert {tags.get(k) for k in ("foresight:project", "foresight:stack", "managed-by")} == {
            "foresight",
            "azure-test",
            "pulumi",
        }, resource.name
