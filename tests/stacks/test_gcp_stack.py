"""`pulumi up` on Google Cloud with only the required config: what the program registers, resource by resource."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from stacks.cloudinit import INSTALL_DIR, NVIDIA_CTK_VERSION, RUNTIME_SCRIPT
from stacks.gcp.compute import DATA_DISK_PATH, IMAGE_FAMILY, IMAGE_PROJECT
from stacks.gcp.kms import KEY_USER_ROLE
from stacks.gcp.network import HEALTH_CHECK_RANGES
from stacks.spec import StackOutputs
from tests.stacks.conftest import GCP_STACK
from tests.stacks.endpoint_tls import assert_endpoint_tls, layout_of
from tests.stacks.mockrun import (
    GCP_EXTERNAL_ADDRESS,
    GCP_IMAGE,
    GCP_PROJECT,
    GCP_PROJECT_NUMBER,
    GCP_REGION,
    GCP_REQUIRED_CONFIG,
    GCP_ZONES,
    GCP_ZONES_WITHOUT_GPU,
    MockRun,
)

ALLOWED = "203.0.113.0/24"
TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
GROUP = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
FIREWALL = "gcp:compute/firewall:Firewall"
CRYPTO_KEY = "gcp:kms/cryptoKey:CryptoKey"
KEY_MEMBER = "gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember"
ACCOUNT = "gcp:serviceaccount/account:Account"
JWT_ROLE = "vault:jwt/authBackendRole:AuthBackendRole"


def node_email(run: MockRun) -> str:
    return f"{run.one(ACCOUNT).props['accountId']}@{GCP_PROJECT}.iam.gserviceaccount.com"


def firewall(run: MockRun, suffix: str) -> dict[str, Any]:
    return run.named(f"foresight-{suffix}").props


def gcp_user_data(run: MockRun) -> str:
    return str(run.one(TEMPLATE).props["metadata"]["user-data"])


def env_file(run: MockRun) -> dict[str, str]:
    files = {entry["path"]: entry["content"] for entry in yaml.safe_load(gcp_user_data(run))["write_files"]}
    return dict(line.split("=", 1) for line in files["/etc/foresight/foresight.env"].splitlines())


def test_everything_is_a_child_of_one_gpu_node_component(gcp_baseline: MockRun) -> None:
    component = gcp_baseline.one("foresight:gcp:GpuNode")
    assert component.parent.endswith("pulumi:pulumi:Stack::foresight-gcp-test")
    children = [resource for resource in gcp_baseline if resource is not component]
    assert len(children) > 25
    assert all(child.parent == component.urn for child in children), [
        child.name for child in children if child.parent != component.urn
    ]
    assert not any(resource.type.startswith(("aws:", "azure")) for resource in gcp_baseline)


def test_cloud_kms_key_rotates_and_only_the_node_and_compute_agent_use_it(gcp_baseline: MockRun) -> None:
    key = gcp_baseline.one(CRYPTO_KEY).props
    assert key["purpose"] == "ENCRYPT_DECRYPT"
    assert key["rotationPeriod"] == "7776000s"  # 90 days
    assert key["destroyScheduledDuration"] == "2592000s"
    assert gcp_baseline.one("gcp:kms/keyRing:KeyRing").props["location"] == GCP_REGION
    members = {m.props["member"]: m.props for m in gcp_baseline.of_type(KEY_MEMBER)}
    assert set(members) == {
        f"serviceAccount:{node_email(gcp_baseline)}",
        f"serviceAccount:service-{GCP_PROJECT_NUMBER}@compute-system.iam.gserviceaccount.com",
    }
    key_id = gcp_baseline.outputs["kmsKeyId"].value
    assert all(m["role"] == KEY_USER_ROLE and m["cryptoKeyId"] == key_id for m in members.values())
    # No project-, folder- or account-wide grant at all: the key's own IAM is the node's only permission.
    iam_types = [r.type for r in gcp_baseline if "iAM" in r.type or "IAM" in r.type]
    assert set(iam_types) == {KEY_MEMBER}


def test_boot_and_data_disks_are_encrypted_with_the_stack_key(gcp_baseline: MockRun) -> None:
    disks = gcp_baseline.one(TEMPLATE).props["disks"]
    key_id = gcp_baseline.outputs["kmsKeyId"].value
    assert [disk.get("boot", False) for disk in disks] == [True, False]
    assert all(disk["diskEncryptionKey"]["kmsKeySelfLink"] == key_id for disk in disks)
    assert disks[0]["sourceImage"] == GCP_IMAGE
    assert disks[1]["deviceName"] == "foresight-data" and disks[1]["diskSizeGb"] == 100
    assert f"/dev/disk/by-id/google-{disks[1]['deviceName']}" == DATA_DISK_PATH
    assert any(DATA_DISK_PATH in command for command in yaml.safe_load(gcp_user_data(gcp_baseline))["runcmd"])


def test_gpu_image_comes_from_the_deep_learning_family(gcp_baseline: MockRun) -> None:
    images = [args for token, args in gcp_baseline.invokes if token == "gcp:compute/getImage:getImage"]
    assert images == [{"family": IMAGE_FAMILY, "project": IMAGE_PROJECT}]


def test_own_network_keeps_the_node_private_behind_cloud_nat(gcp_baseline: MockRun) -> None:
    assert gcp_baseline.one("gcp:compute/network:Network").props["autoCreateSubnetworks"] is False
    subnet = gcp_baseline.one("gcp:compute/subnetwork:Subnetwork").props
    assert subnet["privateIpGoogleAccess"] is True and subnet["region"] == GCP_REGION
    nat = gcp_baseline.one("gcp:compute/routerNat:RouterNat").props
    assert nat["natIpAllocateOption"] == "AUTO_ONLY"
    interfaces = gcp_baseline.one(TEMPLATE).props["networkInterfaces"]
    assert len(interfaces) == 1 and not interfaces[0].get("accessConfigs")  # no public address


def test_only_service_ports_open_and_only_to_allowed_cidrs(gcp_baseline: MockRun) -> None:
    email = node_email(gcp_baseline)
    ingress = [r.props for r in gcp_baseline.of_type(FIREWALL) if r.props["direction"] == "INGRESS"]
    assert len(ingress) == 2
    service = firewall(gcp_baseline, "service-in")
    assert service["sourceRanges"] == [ALLOWED]
    assert service["allows"] == [{"protocol": "tcp", "ports": ["6380", "8443"]}]
    health = firewall(gcp_baseline, "health-in")
    assert health["sourceRanges"] == list(HEALTH_CHECK_RANGES)
    assert health["allows"] == [{"protocol": "tcp", "ports": ["8443"]}]
    assert all(rule["targetServiceAccounts"] == [email] for rule in ingress)
    assert not any("22" in allow.get("ports", []) for rule in ingress for allow in rule["allows"])


def test_node_egress_is_apt_https_and_vault_only(gcp_baseline: MockRun) -> None:
    allow, deny = firewall(gcp_baseline, "out"), firewall(gcp_baseline, "deny-out")
    assert allow["direction"] == deny["direction"] == "EGRESS"
    assert allow["allows"] == [{"protocol": "tcp", "ports": ["80", "443", "8200"]}]  # 80: Ubuntu's apt mirrors
    assert deny["denies"] == [{"protocol": "all"}] and deny["destinationRanges"] == ["0.0.0.0/0"]
    assert allow["priority"] < deny["priority"]


def test_passthrough_load_balancer_gives_a_stable_tls_endpoint(gcp_baseline: MockRun) -> None:
    address = gcp_baseline.one("gcp:compute/address:Address").props
    assert address["addressType"] == "EXTERNAL"  # 203.0.113.0/24 is public
    rule = gcp_baseline.one("gcp:compute/forwardingRule:ForwardingRule").props
    assert rule["ports"] == ["6380", "8443"] and rule["ipProtocol"] == "TCP"
    assert rule["ipAddress"] == GCP_EXTERNAL_ADDRESS and rule["loadBalancingScheme"] == "EXTERNAL"
    backend = gcp_baseline.one("gcp:compute/regionBackendService:RegionBackendService").props
    assert rule["backendService"] == "foresight-backend-id"
    assert backend["backends"][0]["group"].endswith("/instanceGroups/foresight-node-1a2b3c4")
    assert backend["healthChecks"] == "foresight-lb-health-id"
    check = gcp_baseline.one("gcp:compute/regionHealthCheck:RegionHealthCheck").props
    assert check["httpsHealthCheck"] == {"port": 8443, "requestPath": "/healthz"}
    assert gcp_baseline.outputs["endpointHost"].value == GCP_EXTERNAL_ADDRESS


def test_node_runs_as_its_own_service_account_with_os_login_and_no_project_keys(gcp_baseline: MockRun) -> None:
    template = gcp_baseline.one(TEMPLATE).props
    assert template["serviceAccount"]["email"] == node_email(gcp_baseline)
    metadata = template["metadata"]
    assert metadata["enable-oslogin"] == "TRUE" and metadata["block-project-ssh-keys"] == "TRUE"
    assert "ssh-keys" not in metadata
    shielded = template["shieldedInstanceConfig"]
    assert shielded["enableVtpm"] is True and shielded["enableIntegrityMonitoring"] is True


def test_group_of_one_heals_standard_vms_in_zones_offering_the_gpu(gcp_baseline: MockRun) -> None:
    template, group = gcp_baseline.one(TEMPLATE).props, gcp_baseline.one(GROUP).props
    assert template["machineType"] == "g2-standard-4"
    scheduling = template["scheduling"]
    assert scheduling["onHostMaintenance"] == "TERMINATE"  # GPUs cannot live-migrate
    assert scheduling["provisioningModel"] == "STANDARD" and scheduling["automaticRestart"] is True
    assert group["targetSize"] == 1
    assert group["distributionPolicyZones"] == sorted(set(GCP_ZONES) - GCP_ZONES_WITHOUT_GPU)
    assert group["versions"][0]["instanceTemplate"].endswith("?uniqueId=42")
    healing = group["autoHealingPolicies"]
    assert healing["healthCheck"] == "foresight-node-health-id" and healing["initialDelaySec"] == 1200
    update = group["updatePolicy"]
    assert update["maxSurgeFixed"] == 0 and update["maxUnavailableFixed"] == len(group["distributionPolicyZones"])
    assert "instanceFlexibilityPolicy" not in group
    assert gcp_baseline.outputs["instanceId"].value == "foresight-node-1a2b3c4"
    assert gcp_baseline.outputs["nodeIdentity"].value == node_email(gcp_baseline)  # the account the KMS key names


def test_vault_pki_issues_for_the_endpoint_address_only_and_no_key_is_in_the_state(gcp_baseline: MockRun) -> None:
    layout = layout_of(GCP_STACK, GCP_REQUIRED_CONFIG)
    assert_endpoint_tls(gcp_baseline, layout, GCP_EXTERNAL_ADDRESS, is_ip=True)
    env = env_file(gcp_baseline)
    assert env["FORESIGHT_TLS_COMMON_NAME"] == GCP_EXTERNAL_ADDRESS == gcp_baseline.outputs["endpointHost"].value
    assert (env["FORESIGHT_TLS_VAULT_PKI_MOUNT"], env["FORESIGHT_TLS_NODE_PKI_ROLE"]) == (
        layout.pki_mount,
        layout.pki_role,
    )
    assert "PRIVATE KEY" not in gcp_user_data(gcp_baseline)


def test_vault_wiring_trusts_google_and_binds_the_node_account(gcp_baseline: MockRun) -> None:
    backend = gcp_baseline.one("vault:jwt/authBackend:AuthBackend").props
    assert backend["type"] == "jwt" and backend["path"] == "foresight-gcp-test-gcp"
    assert backend["oidcDiscoveryUrl"] == backend["boundIssuer"] == "https://accounts.google.com"
    role = gcp_baseline.one(JWT_ROLE).props
    assert role["roleName"] == "foresight-gcp-test-node" and role["roleType"] == "jwt"
    assert role["boundAudiences"] == ["http://vault/foresight-gcp-test-node"]
    assert role["boundClaims"] == {"email": node_email(gcp_baseline)}
    assert role["tokenPolicies"] == ["foresight-gcp-test-node"]
    assert all(
        r.provider.startswith(gcp_baseline.named("foresight-vault").urn)
        for r in (gcp_baseline.one(JWT_ROLE), gcp_baseline.one("vault:jwt/authBackend:AuthBackend"))
    )


def test_user_data_logs_in_with_the_identity_token_and_runs_on_the_gpu(gcp_baseline: MockRun) -> None:
    env = env_file(gcp_baseline)
    assert env["FORESIGHT_VAULT_AUTH_METHOD"] == "jwt" and env["FORESIGHT_VAULT_JWT_SOURCE"] == "gcp"
    assert env["FORESIGHT_VAULT_AUTH_MOUNT"] == "foresight-gcp-test-gcp"
    assert env["FORESIGHT_KMS_PROVIDER"] == "gcp"
    assert env["FORESIGHT_KMS_KEY_ID"] == gcp_baseline.outputs["kmsKeyId"].value
    assert env["GOOGLE_CLOUD_PROJECT"] == GCP_PROJECT
    assert "--gpus all" in gcp_user_data(gcp_baseline)


# The lowest Linux driver of each CUDA major (NVIDIA's CUDA toolkit release notes, "CUDA Driver" table).
CUDA_MINIMUM_DRIVER = {12: 525, 13: 580}


def test_the_images_driver_runs_the_service_images_cuda() -> None:
    """The service image's CUDA needs a driver at least this new; the node image family names its driver (with
    570 under CUDA 13, the container would see no GPU)."""
    dockerfile = (Path(__file__).parents[2] / "images" / "service" / "Dockerfile").read_text()
    cuda = re.search(r"nvidia/cuda:(\d+)\.", dockerfile)
    driver = re.search(r"-nvidia-(\d+)$", IMAGE_FAMILY)
    assert cuda is not None and driver is not None
    assert int(driver[1]) >= CUDA_MINIMUM_DRIVER[int(cuda[1])]


def test_the_node_boots_an_image_g2_takes_and_installs_docker_first(gcp_baseline: MockRun) -> None:
    """Deep Learning VM images cannot boot G2 (the default type); the Ubuntu accelerator image has only the
    driver, so the marketplace image's runtime installer runs after the data mount, before Docker is used."""
    assert (IMAGE_PROJECT, IMAGE_FAMILY) == ("ubuntu-os-accelerator-images",
                                             "ubuntu-accelerator-2204-amd64-with-nvidia-580")
    document = yaml.safe_load(gcp_user_data(gcp_baseline))
    installer = f"{INSTALL_DIR}/{RUNTIME_SCRIPT.name}"
    assert {e["path"]: e["content"] for e in document["write_files"]}[installer] == RUNTIME_SCRIPT.read_text()
    steps = [" ".join(command) for command in document["runcmd"]]
    install = steps.index(f"env NVIDIA_CTK_VERSION={NVIDIA_CTK_VERSION} {installer}")
    assert any("mount_data_volume.sh" in step for step in steps[:install])
    assert install < steps.index("systemctl restart docker.service") < steps.index(
        "systemctl enable --now foresight.service")


def test_service_settings_accept_the_gcp_node_environment(gcp_baseline: MockRun, monkeypatch: Any) -> None:
    from service.config import load_settings

    for name, value in env_file(gcp_baseline).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.vault_auth_method, settings.vault_jwt_source) == ("jwt", "gcp")
    assert settings.vault_role == "foresight-gcp-test-node"
    assert settings.kms_provider == "gcp" and settings.kms_key_id.startswith(f"projects/{GCP_PROJECT}/locations/")
    # The service serves the files fetch_tls.py writes; it does not issue a certificate of its own.
    assert settings.tls_vault_pki_role is None and settings.tls_cert_file is not None


def test_outputs_are_the_shared_set_and_hold_no_secret(gcp_baseline: MockRun, baseline: MockRun) -> None:
    assert (
        set(gcp_baseline.outputs)
        == set(baseline.outputs)
        == {
            StackOutputs.export_name(n)
            for n in (
                "endpoint_host",
                "resp_port",
                "https_port",
                "ca_certificate",
                "kms_key_id",
                "vault_role",
                "vault_auth_mount",
                "vault_kv_mount",
                "instance_id",
                "node_identity",
            )
        }
    )
    assert not any(output.secret for output in gcp_baseline.outputs.values())
    assert not any("PRIVATE KEY" in str(output.value) for output in gcp_baseline.outputs.values())
    assert gcp_baseline.outputs["respPort"].value == 6380 and gcp_baseline.outputs["httpsPort"].value == 8443


def test_required_labels_on_every_labelled_resource(gcp_baseline: MockRun) -> None:
    expected = {"foresight-project": "foresight", "foresight-stack": "gcp-test", "managed-by": "pulumi"}
    labelled = [r for r in gcp_baseline if r.type.startswith("gcp:") and "labels" in r.props]
    assert {r.type for r in labelled} >= {
        TEMPLATE,
        CRYPTO_KEY,
        "gcp:compute/address:Address",
        "gcp:compute/forwardingRule:ForwardingRule",
    }
    assert all(r.props["labels"] == expected for r in labelled)
