"""The Kubernetes workload's spec and manifests (stacks/kubernetes): what is refused, what is rendered, and that
the real `kubernetes-validate` (Kubernetes' own OpenAPI schemas, strict) accepts every manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from onboarding.metrics_token_cli import vault_path
from service.config import Settings
from service.http.routes.health import router as health_router
from stacks.boot import fetch_tls
from stacks.cloudinit import CONTAINER_TLS_DIR, DATA_DIR, service_environment
from stacks.kubernetes import manifests, pod
from stacks.kubernetes.manifests import render
from stacks.kubernetes.pod import TLS_REFRESH_INTERVAL_S
from stacks.kubernetes.spec import RENDERED_ENV_KEYS, SpecError, WorkloadSpec, parse_spec
from stacks.spec import HTTPS_PORT, SERVICE_PORTS, StackSpec
from stacks.tls import CERTIFICATE_TTL_SECONDS
from stacks.vault import VaultLayout
from tests.stacks.mockrun import REQUIRED_CONFIG

ROOT = Path(__file__).resolve().parents[2]
# A recent Kubernetes release that EKS, GKE and AKS all run, with its schemas shipped by kubernetes-validate.
KUBERNETES_VERSION = "1.33.0"
DIGEST_IMAGE = "ghcr.io/foresight/foresight:0.1.0@sha256:" + "ab" * 32
BASE: dict[str, Any] = {
    "namespace": "cache",
    "image": DIGEST_IMAGE,
    "allowedCidrs": ["203.0.113.0/24", "10.0.0.0/8"],
    "vaultAddress": "https://vault.example.test:8200",
    "vaultRole": "foresight-eks-node",
    "vaultKvMount": "foresight-eks",
    "vaultPkiMount": "foresight-eks-pki",
    "vaultPkiRole": "foresight-eks-endpoint",
    "tlsCommonName": "cache.example.test",
    "metricsVaultPath": "deployments/eks/metrics",
    "kmsProvider": "aws",
    "kmsKeyId": "alias/foresight-eks",
}
SHARED_TIER = {"sharedTierUrl": "rediss://tier.example.internal:6390", "sharedTierPasswordSecret": "tier-password"}


def spec_of(**changes: Any) -> WorkloadSpec:
    return parse_spec({**BASE, **changes})


def by_kind(rendered: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in rendered if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [m["metadata"]["name"] for m in found])
    return found[0]


def pod_spec(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(by_kind(rendered, "StatefulSet")["spec"]["template"]["spec"])


def container(rendered: list[dict[str, Any]], name: str = "foresight") -> dict[str, Any]:
    spec = pod_spec(rendered)
    return next(c for c in spec["containers"] + spec["initContainers"] if c["name"] == name)


VARIANTS = {
    "gpu": spec_of(),
    "gpu-shared-tier": spec_of(**SHARED_TIER, storageClass="gp3", gpusPerPod=2, nodeSelector={"pool": "gpu"}),
    "cpu-only": spec_of(gpusPerPod=0, replicas=1, serviceAnnotations={"example.com/lb": "internal"}),
}


# --- the spec --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"allowedCidrs": ["10.0.0.0/33"]}, "allowedCidrs", "'10.0.0.0/33' is not a valid CIDR"),
        ({"allowedCidrs": ["10.0.0.1/8"]}, "allowedCidrs", "did you mean '10.0.0.0/8'?"),
        ({"allowedCidrs": ["2001:db8::/32"]}, "allowedCidrs", "only IPv4"),
        ({"allowedCidrs": []}, "allowedCidrs", "at least one range is required"),
        ({"allowedCidrs": None}, "allowedCidrs", "must be a list of strings"),
        ({"vaultAddress": "http://vault.example.test:8200"}, "vaultAddress", "must be an https:// URL"),
        ({"image": "not an image"}, "image", "is not an image reference"),
        ({"replicas": 0}, "replicas", "greater than or equal to 1"),
        ({"gpusPerPod": -1}, "gpusPerPod", "greater than or equal to 0"),
        ({"name": "Foresight_1"}, "name", "lowercase letters"),
        ({"namespace": "x" * 64}, "namespace", "at most 63"),
        ({"cpuLimit": "4 cores"}, "cpuLimit", "not a CPU quantity"),
        ({"memoryRequest": "8GB"}, "memoryRequest", "not a memory quantity"),
        ({"kmsProvider": "none"}, "kmsProvider", "'aws', 'gcp', 'azure' or 'vault-transit'"),
        ({"vaultPkiRole": "../other"}, "vaultPkiRole", "must be a Vault name or path"),
        ({"tlsCommonName": "*.example.test"}, "tlsCommonName", "must be a DNS name"),
        ({"tlsCommonName": "cache.example.test,evil.example"}, "tlsCommonName", "must be a DNS name"),
        ({"sharedTierUrl": "redis://tier:6379", "sharedTierPasswordSecret": "p"}, "sharedTierUrl", "rediss://"),
        ({"sharedTierUrl": "rediss://tier:6379"}, "sharedTierPasswordSecret", "required with sharedTierUrl"),
        ({"sharedTierPasswordSecret": "p"}, "sharedTierPasswordSecret", "only with sharedTierUrl"),
        ({"extraEgressPorts": [70000]}, "extraEgressPorts", "not a TCP port"),
        ({"extraEnv": {"FORESIGHT_VAULT_METRICS_PATH": "deployments/x/metrics"}}, "extraEnv", "from metricsVaultPath"),
        ({"metricsVaultPath": "/abs/metrics"}, "metricsVaultPath", "must be a Vault name or path"),
        ({"replica": 3}, "replica", "Extra inputs are not permitted"),
    ],
)
def test_invalid_spec_names_the_key_to_fix(changes: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_of(**changes)
    assert [k for k, _ in info.value.problems] == [key]
    assert message in str(info.value)


def test_missing_required_keys_are_each_named() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"namespace": "cache"})
    assert {key for key, _ in info.value.problems} == {
        "allowedCidrs",
        "vaultAddress",
        "vaultRole",
        "vaultKvMount",
        "vaultPkiMount",
        "vaultPkiRole",
        "tlsCommonName",
        "kmsProvider",
        "kmsKeyId",
    }
    assert all(message == "required" for _, message in info.value.problems)


def test_shared_tier_url_with_a_password_is_refused_without_repeating_it() -> None:
    with pytest.raises(SpecError) as info:
        spec_of(sharedTierUrl="rediss://default:hunter2-secret@tier:6379", sharedTierPasswordSecret="p")
    assert "must not carry a user or password" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "key",
    ["FORESIGHT_ADMIN_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "REDIS_PASSWORD", "GOOGLE_CREDENTIALS"],
)
def test_extra_env_refuses_what_looks_like_a_secret(key: str) -> None:
    with pytest.raises(SpecError, match=f"extraEnv: {key} looks like a secret"):
        spec_of(extraEnv={key: "value"})


def test_extra_env_refuses_what_the_spec_sets_and_takes_file_paths_and_plain_settings() -> None:
    with pytest.raises(SpecError, match="FORESIGHT_KMS_KEY_ID comes from the spec's own fields"):
        spec_of(extraEnv={"FORESIGHT_KMS_KEY_ID": "alias/other"})
    env = {"FORESIGHT_VAULT_CA_FILE": "/etc/vault-ca/ca.pem", "AWS_REGION": "us-east-1", "FORESIGHT_LOG_LEVEL": "info"}
    data = by_kind(render(spec_of(extraEnv=env)), "ConfigMap")["data"]
    assert env.items() <= data.items()


def test_spec_fields_all_have_descriptions_and_snake_case_names_work_too() -> None:
    assert all(field.description for field in WorkloadSpec.model_fields.values())
    snake = WorkloadSpec.model_validate({**{re.sub(r"([A-Z])", r"_\1", k).lower(): v for k, v in BASE.items()}})
    assert snake == spec_of()


# --- what the pods get -------------------------------------------------------------------------------------------


def test_gpu_pods_request_their_gpus_and_tolerate_the_gpu_taint() -> None:
    rendered = render(VARIANTS["gpu-shared-tier"])
    assert container(rendered)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod_spec(rendered)["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod_spec(rendered)["nodeSelector"] == {"pool": "gpu"}
    assert "env" not in container(rendered)  # the device plugin says which GPUs the pod sees


def test_cpu_only_pods_ask_for_no_gpu_tolerate_no_taint_and_see_no_gpu() -> None:
    rendered = render(VARIANTS["cpu-only"])
    assert "nvidia.com/gpu" not in json.dumps(container(rendered)["resources"])
    assert "tolerations" not in pod_spec(rendered)
    assert container(rendered)["env"] == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]
    assert by_kind(rendered, "ConfigMap")["data"]["FORESIGHT_PREFETCH_DEVICE"] == "cpu"


def test_pods_log_in_to_vault_with_a_projected_token_for_the_roles_audience() -> None:
    rendered = render(spec_of(vaultAudience="https://vault.example.test"))
    [volume] = [v for v in pod_spec(rendered)["volumes"] if v["name"] == "vault-token"]
    assert volume["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "https://vault.example.test", "expirationSeconds": 3600, "path": "token"}}
    ]
    data = by_kind(rendered, "ConfigMap")["data"]
    assert data["FORESIGHT_VAULT_AUTH_METHOD"] == "jwt"
    assert data["FORESIGHT_VAULT_JWT_SOURCE"] == "file"
    for name in ("fetch-tls", "foresight"):
        [mount] = [m for m in container(rendered, name)["volumeMounts"] if m["name"] == "vault-token"]
        assert f"{mount['mountPath']}/token" == data["FORESIGHT_VAULT_JWT_FILE"] and mount["readOnly"]
    assert by_kind(rendered, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod_spec(rendered)["automountServiceAccountToken"] is False
    assert spec_of().bound_subject == "system:serviceaccount:cache:foresight"


def test_init_container_runs_the_vm_boot_script_from_the_images_virtualenv() -> None:
    rendered = render(spec_of())
    init = container(rendered, "fetch-tls")
    assert init["image"] == DIGEST_IMAGE and init["imagePullPolicy"] == "IfNotPresent"
    python, flag, module, *args = init["command"]
    assert "python3 -m venv /opt/foresight" in (ROOT / "images/service/Dockerfile").read_text()
    assert (python, flag, module, args) == (
        "/opt/foresight/bin/python",
        "-m",
        "stacks.boot.fetch_tls",
        ["--out", CONTAINER_TLS_DIR],
    )
    assert fetch_tls.__name__ == module  # importable under that name, as the installed package is


def test_a_sidecar_issues_a_fresh_certificate_daily_for_the_pods_lifetime() -> None:
    """Renewal without a rollout: the restartable init container (a native sidecar) runs the same script in a loop,
    with the init container's image, settings, mounts and limits."""
    rendered = render(spec_of())
    names = [c["name"] for c in pod_spec(rendered)["initContainers"]]
    assert names == ["fetch-tls", "tls-refresh"]  # the first certificate before the sidecar and the service start
    init, sidecar = container(rendered, "fetch-tls"), container(rendered, "tls-refresh")
    assert sidecar["restartPolicy"] == "Always" and "restartPolicy" not in init
    assert sidecar["command"] == [*init["command"], "--every", str(24 * 3600)]
    assert TLS_REFRESH_INTERVAL_S < CERTIFICATE_TTL_SECONDS / 7  # a week of failed refreshes still leaves time
    for key in ("image", "envFrom", "volumeMounts", "securityContext", "resources"):
        assert sidecar[key] == init[key], key


def test_tls_lands_in_memory_and_the_service_mounts_it_read_only() -> None:
    rendered = render(spec_of())
    [tls] = [v for v in pod_spec(rendered)["volumes"] if v["name"] == "tls"]
    assert tls["emptyDir"]["medium"] == "Memory"
    mounts = {
        name: {m["name"]: m for m in container(rendered, name)["volumeMounts"]}
        for name in ("fetch-tls", "tls-refresh", "foresight")
    }
    assert mounts["fetch-tls"]["tls"] == mounts["tls-refresh"]["tls"] == {"name": "tls", "mountPath": CONTAINER_TLS_DIR}
    assert mounts["foresight"]["tls"] == {"name": "tls", "mountPath": CONTAINER_TLS_DIR, "readOnly": True}
    assert mounts["foresight"]["data"]["mountPath"] == DATA_DIR
    data = by_kind(rendered, "ConfigMap")["data"]
    assert data["FORESIGHT_TLS_CERT_FILE"] == f"{CONTAINER_TLS_DIR}/tls.crt"
    assert data["FORESIGHT_TLS_KEY_FILE"] == f"{CONTAINER_TLS_DIR}/tls.key"


def test_pods_issue_their_certificate_from_the_pki_role_for_the_endpoint_name() -> None:
    data = by_kind(render(spec_of()), "ConfigMap")["data"]
    assert data["FORESIGHT_TLS_VAULT_PKI_MOUNT"] == BASE["vaultPkiMount"]
    assert data["FORESIGHT_TLS_NODE_PKI_ROLE"] == BASE["vaultPkiRole"]
    assert data["FORESIGHT_TLS_COMMON_NAME"] == BASE["tlsCommonName"]
    assert "FORESIGHT_TLS_VAULT_PKI_ROLE" not in data  # the service serves the files; it issues nothing itself
    assert by_kind(render(spec_of(tlsCommonName="203.0.113.10")), "ConfigMap")["data"][
        "FORESIGHT_TLS_COMMON_NAME"
    ] == "203.0.113.10"


def test_pods_read_the_scrape_token_where_rotate_writes_it_and_only_when_named() -> None:
    """`foresight metrics-token rotate --stack eks` writes deployments/eks/metrics: the VaultLayout of stack eks."""
    layout = VaultLayout(kv_mount=BASE["vaultKvMount"], pki_mount=BASE["vaultPkiMount"],
                         pki_role=BASE["vaultPkiRole"], auth_mount="jwt", role=BASE["vaultRole"], policy="p",
                         stack="eks")
    for variant in VARIANTS.values():
        data = by_kind(render(variant), "ConfigMap")["data"]
        assert data["FORESIGHT_VAULT_METRICS_PATH"] == layout.metrics_path == vault_path("eks")
    # Unnamed, no scrape token is read from Vault (rather than a guessed one): only the admin token scrapes.
    data = by_kind(render(spec_of(metricsVaultPath=None)), "ConfigMap")["data"]
    assert "FORESIGHT_VAULT_METRICS_PATH" not in data
    data = by_kind(render(spec_of(metricsVaultPath="pki/foresight/scrape")), "ConfigMap")["data"]
    assert data["FORESIGHT_VAULT_METRICS_PATH"] == "pki/foresight/scrape"  # where `rotate --path` writes it


def test_shared_tier_password_is_a_mounted_secret_file() -> None:
    rendered = render(VARIANTS["gpu-shared-tier"])
    data = by_kind(rendered, "ConfigMap")["data"]
    assert data["FORESIGHT_SHARED_TIER_URL"] == SHARED_TIER["sharedTierUrl"]
    [volume] = [v for v in pod_spec(rendered)["volumes"] if v["name"] == "shared-tier-password"]
    assert volume["secret"]["secretName"] == "tier-password"
    assert volume["secret"]["items"] == [{"key": "password", "path": "password"}]
    [mount] = [m for m in container(rendered)["volumeMounts"] if m["name"] == "shared-tier-password"]
    assert f"{mount['mountPath']}/password" == data["FORESIGHT_SHARED_TIER_PASSWORD_FILE"] and mount["readOnly"]
    assert "FORESIGHT_SHARED_TIER_URL" not in by_kind(render(spec_of()), "ConfigMap")["data"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_secret_is_rendered_anywhere(variant: str) -> None:
    rendered = render(VARIANTS[variant])
    assert "Secret" not in {m["kind"] for m in rendered}
    text = json.dumps(rendered)
    assert "secretKeyRef" not in text and "BEGIN" not in text  # secrets only as mounted files, by name
    for key in by_kind(rendered, "ConfigMap")["data"]:
        looks_secret = re.search(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|KEY(?!_ID$|_FILE$)", key)
        assert key.endswith("_FILE") or not looks_secret, key


def test_config_map_carries_every_setting_the_vm_gets_and_only_settings_something_reads() -> None:
    vm_spec = StackSpec.from_values("foresight", "aws-test", REQUIRED_CONFIG.get)
    vm_env = service_environment(
        vm_spec, VaultLayout.for_spec(vm_spec), {"FORESIGHT_VAULT_AUTH_METHOD": "aws"}, "aws", "k", "h.example", {}
    )
    for variant in VARIANTS.values():
        data = by_kind(render(variant), "ConfigMap")["data"]
        assert vm_env.keys() <= data.keys()
        assert data["FORESIGHT_DATA_DIR"] == vm_env["FORESIGHT_DATA_DIR"]
        assert data.keys() <= RENDERED_ENV_KEYS  # what extraEnv may not override
        readers = {f"FORESIGHT_{name.upper()}" for name in Settings.model_fields} | set(fetch_tls.SETTINGS)
        assert data.keys() <= readers, data.keys() - readers


def test_ports_are_service_ports_everywhere() -> None:
    rendered = render(spec_of())
    for name in ("foresight", "foresight-pods"):
        assert [p["port"] for p in by_kind(rendered, "Service", name)["spec"]["ports"]] == list(SERVICE_PORTS)
    assert [p["containerPort"] for p in container(rendered)["ports"]] == list(SERVICE_PORTS)
    sources = "".join(path.read_text() for path in (ROOT / "stacks/kubernetes").glob("*.py"))
    assert not re.search(r"\b(6380|8443)\b", sources)  # never hardcoded: stacks.spec owns them


def test_load_balancer_admits_only_the_allowed_cidrs_and_keeps_client_addresses() -> None:
    service = by_kind(render(VARIANTS["cpu-only"]), "Service", "foresight")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8", "203.0.113.0/24"]
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert service["metadata"]["annotations"] == {"example.com/lb": "internal"}
    headless = by_kind(render(spec_of()), "Service", "foresight-pods")
    assert headless["spec"]["clusterIP"] == "None"


def test_network_policy_admits_service_ports_from_allowed_cidrs_and_reaches_only_what_the_pod_needs() -> None:
    policy = by_kind(render(spec_of(**SHARED_TIER, extraEgressPorts=[988])), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = policy["ingress"]
    assert [block["ipBlock"]["cidr"] for block in ingress["from"]] == ["10.0.0.0/8", "203.0.113.0/24"]
    assert ingress["ports"] == [{"port": port, "protocol": "TCP"} for port in SERVICE_PORTS]
    dns, tcp = policy["egress"]
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert tcp == {"ports": [{"port": port, "protocol": "TCP"} for port in (443, 988, 6390, 8200)]}
    assert {"port": 6390, "protocol": "TCP"} not in by_kind(render(spec_of()), "NetworkPolicy")["spec"]["egress"][1][
        "ports"
    ]


def test_pod_and_containers_are_hardened() -> None:
    rendered = render(spec_of())
    assert pod_spec(rendered)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for name in ("fetch-tls", "foresight"):
        context = container(rendered, name)["securityContext"]
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
        assert context["capabilities"] == {"drop": ["ALL"]} and context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container(rendered, name)["resources"]["limits"].keys() >= {"cpu", "memory"}
    [tmp] = [m for m in container(rendered)["volumeMounts"] if m["name"] == "tmp"]
    assert tmp["mountPath"] == "/tmp"


def test_probes_ask_the_services_real_health_routes_over_https() -> None:
    service = container(render(spec_of()))
    routes = {route.path for route in health_router.routes}  # type: ignore[attr-defined]
    port_names = {p["name"]: p["containerPort"] for p in service["ports"]}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = service[probe]["httpGet"]
        assert (get["path"], get["scheme"], port_names[get["port"]]) == (path, "HTTPS", HTTPS_PORT)
        assert path in routes
    startup = service["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # the model may take minutes to warm


def test_termination_grace_outlasts_preStop_both_drains_the_snapshot_and_the_audit_close() -> None:
    spec = spec_of(shutdownGraceS=30)
    rendered = render(spec)
    assert pod_spec(rendered)["terminationGracePeriodSeconds"] >= pod.PRESTOP_SLEEP_S + 2 * 30 + 1 + 30 + 10
    assert by_kind(rendered, "ConfigMap")["data"]["FORESIGHT_SHUTDOWN_GRACE_S"] == "30"


def test_pods_spread_over_nodes_and_zones_and_at_most_one_is_disrupted() -> None:
    rendered = render(spec_of())
    keys = [(c["topologyKey"], c["whenUnsatisfiable"]) for c in pod_spec(rendered)["topologySpreadConstraints"]]
    assert keys == [("kubernetes.io/hostname", "DoNotSchedule"), ("topology.kubernetes.io/zone", "ScheduleAnyway")]
    assert by_kind(rendered, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    claim = by_kind(render(VARIANTS["gpu-shared-tier"]), "StatefulSet")["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["storageClassName"] == "gp3" and claim["spec"]["resources"]["requests"]["storage"] == "20Gi"


def test_every_object_carries_the_recommended_labels() -> None:
    for manifest in render(spec_of()):
        assert manifest["metadata"]["labels"] == {
            "app.kubernetes.io/instance": "foresight",
            "app.kubernetes.io/name": "foresight",
            "app.kubernetes.io/component": "cache",
            "app.kubernetes.io/managed-by": "foresight",
            "app.kubernetes.io/version": "0.1.0",
        }
        assert manifest["metadata"]["namespace"] == "cache"
    assert spec_of(image="registry.example/foresight@sha256:" + "cd" * 32).version == "sha256-" + "cd" * 6


def test_rendering_is_deterministic() -> None:
    one = spec_of(nodeSelector={"b": "2", "a": "1"}, extraEnv={"B_SETTING": "2", "A_SETTING": "1"})
    other = spec_of(nodeSelector={"a": "1", "b": "2"}, extraEnv={"A_SETTING": "1", "B_SETTING": "2"})
    assert yaml.safe_dump_all(render(one), sort_keys=False) == yaml.safe_dump_all(render(other), sort_keys=False)
    assert [m["kind"] for m in render(one)] == [
        "ServiceAccount",
        "ConfigMap",
        "NetworkPolicy",
        "Service",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
    ]


def test_renderer_imports_no_pulumi_module_of_its_own() -> None:
    for name in ("spec.py", "manifests.py", "pod.py", "cli.py"):
        assert not re.search(r"^\s*(import|from)\s+pulumi", (ROOT / "stacks/kubernetes" / name).read_text(), re.M), name
    assert manifests.__name__ == "stacks.kubernetes.manifests"


# --- Kubernetes' own schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_is_valid_kubernetes(variant: str) -> None:
    for manifest in render(VARIANTS[variant]):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_example_config_renders_valid_manifests() -> None:
    spec = parse_spec(yaml.safe_load((ROOT / "stacks/kubernetes/example.yaml").read_text()))
    for manifest in render(spec):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda m: m["spec"].update(replica=3),  # a misspelt field: only strict mode catches it
        lambda m: m["spec"]["template"]["spec"]["containers"][0].update(ports=[{"containerPort": "https"}]),
        lambda m: m["spec"].pop("selector"),
    ],
)
def test_the_validator_refuses_a_broken_manifest(breakage: Any) -> None:
    manifest = by_kind(render(spec_of()), "StatefulSet")
    breakage(manifest)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
