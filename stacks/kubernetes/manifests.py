"""The workload's Kubernetes manifests, rendered from a `WorkloadSpec` by one pure function, `render(spec)`.

What comes out, in apply order (docs/kubernetes.md says why each choice):
- ServiceAccount: no API token is mounted; the pods' only token is a projected one for Vault's audience.
- ConfigMap: the non-secret FORESIGHT_* settings, the same ones the VM stacks write to foresight.env.
- NetworkPolicy: ingress only on the service ports from allowedCidrs; egress only to DNS, HTTPS, Vault and the
  shared tier.
- Services: a headless one naming the StatefulSet's pods, and the LoadBalancer exposing exactly SERVICE_PORTS
  (rendered for Pulumi, it tells the provider to wait for its address only, `WAIT_FOR_ADDRESS`).
- StatefulSet: per-pod encrypted-data volume, an init container issuing the pod's certificate from Vault PKI (the
  VM's fetch_tls.py, run from the image) into memory, a tls-refresh sidecar issuing a fresh one daily, the
  hardened service container with the GPU.
- PodDisruptionBudget: a voluntary disruption takes at most one pod at a time.

No pulumi import here: the CLI renders without the engine, and the component turns each dict into a resource.
"""

from __future__ import annotations

from typing import Any

from stacks.cloudinit import CONTAINER_TLS_DIR, DATA_DIR, TLS_COMMON_NAME_SETTING
from stacks.kubernetes.pod import (
    PORT_NAMES,
    SHARED_TIER_CA_DIR,
    SHARED_TIER_SECRET_DIR,
    VAULT_TOKEN_FILE,
    pod_template,
)
from stacks.kubernetes.spec import WorkloadSpec
from stacks.spec import HTTPS_PORT, RESP_PORT, SERVICE_PORTS

Manifest = dict[str, Any]
# pulumi-kubernetes (4.18 and later) waits for exactly this instead of its own Service check, which also wants
# every selected pod ready: the pods wait for the certificate that names this address, so that would deadlock.
WAIT_FOR_ANNOTATION = "pulumi.com/waitFor"
WAIT_FOR_ADDRESS = "jsonpath={.status.loadBalancer.ingress[0]}"


def render(spec: WorkloadSpec, *, managed_by: str = "foresight") -> list[Manifest]:
    """Every manifest of the workload, in apply order; the same spec always gives the same output."""
    return [
        _service_account(spec, managed_by),
        _config_map(spec, managed_by),
        _network_policy(spec, managed_by),
        _headless_service(spec, managed_by),
        _load_balancer(spec, managed_by),
        _stateful_set(spec, managed_by),
        _disruption_budget(spec, managed_by),
    ]


def selector_labels(spec: WorkloadSpec) -> dict[str, str]:
    return {"app.kubernetes.io/instance": spec.name, "app.kubernetes.io/name": "foresight"}


def labels(spec: WorkloadSpec, managed_by: str) -> dict[str, str]:
    return {
        **selector_labels(spec),
        "app.kubernetes.io/component": "cache",
        "app.kubernetes.io/managed-by": managed_by,
        "app.kubernetes.io/version": spec.version,
    }


def headless_name(spec: WorkloadSpec) -> str:
    return f"{spec.name}-pods"


def environment(spec: WorkloadSpec) -> dict[str, str]:
    """The ConfigMap's settings: stacks.cloudinit.service_environment's keys with the pod's jwt login (the scrape
    token's path only where metricsVaultPath is set), plus the listeners (the pod binds all interfaces) and the
    shared tier. Settings only, never a secret."""
    env = {
        "FORESIGHT_BIND": "0.0.0.0",
        "FORESIGHT_RESP_PORT": str(RESP_PORT),
        "FORESIGHT_HTTP_PORT": str(HTTPS_PORT),
        "FORESIGHT_TLS_CERT_FILE": f"{CONTAINER_TLS_DIR}/tls.crt",
        "FORESIGHT_TLS_KEY_FILE": f"{CONTAINER_TLS_DIR}/tls.key",
        "FORESIGHT_VAULT_ADDR": spec.vault_address,
        "FORESIGHT_VAULT_AUTH_METHOD": "jwt",
        "FORESIGHT_VAULT_JWT_SOURCE": "file",
        "FORESIGHT_VAULT_JWT_FILE": VAULT_TOKEN_FILE,
        "FORESIGHT_VAULT_AUTH_MOUNT": spec.vault_auth_mount,
        "FORESIGHT_VAULT_ROLE": spec.vault_role,
        "FORESIGHT_VAULT_KV_MOUNT": spec.vault_kv_mount,
        "FORESIGHT_TLS_VAULT_PKI_MOUNT": spec.vault_pki_mount,
        "FORESIGHT_TLS_NODE_PKI_ROLE": spec.vault_pki_role,
        TLS_COMMON_NAME_SETTING: spec.tls_common_name,
        "FORESIGHT_KMS_PROVIDER": spec.kms_provider,
        "FORESIGHT_KMS_KEY_ID": spec.kms_key_id,
        "FORESIGHT_DATA_DIR": DATA_DIR,
        "FORESIGHT_SHUTDOWN_GRACE_S": str(spec.shutdown_grace_s),
    }
    if spec.metrics_vault_path is not None:
        env["FORESIGHT_VAULT_METRICS_PATH"] = spec.metrics_vault_path
    if spec.gpus_per_pod == 0:
        env["FORESIGHT_PREFETCH_DEVICE"] = "cpu"
    if spec.shared_tier_url is not None:
        env["FORESIGHT_SHARED_TIER_URL"] = spec.shared_tier_url
        env["FORESIGHT_SHARED_TIER_AUTH"] = spec.shared_tier_auth
        if spec.shared_tier_password_secret is not None:
            env["FORESIGHT_SHARED_TIER_PASSWORD_FILE"] = f"{SHARED_TIER_SECRET_DIR}/password"
        if spec.shared_tier_username is not None:
            env["FORESIGHT_SHARED_TIER_USERNAME"] = spec.shared_tier_username
        if spec.shared_tier_aws_cache is not None:
            env["FORESIGHT_SHARED_TIER_AWS_CACHE"] = spec.shared_tier_aws_cache
    if spec.shared_tier_ca_config_map is not None:  # mounted whenever named: a stack may give the URL at deploy time
        env["FORESIGHT_SHARED_TIER_CA_FILE"] = f"{SHARED_TIER_CA_DIR}/ca.pem"
    return dict(sorted({**env, **spec.extra_env}.items()))


def _metadata(
    spec: WorkloadSpec, managed_by: str, name: str | None = None, annotations: dict[str, str] | None = None
) -> Manifest:
    metadata: Manifest = {"name": name or spec.name, "namespace": spec.namespace, "labels": labels(spec, managed_by)}
    if annotations:
        metadata["annotations"] = dict(sorted(annotations.items()))
    return metadata


def _service_account(spec: WorkloadSpec, managed_by: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(spec, managed_by, annotations=spec.service_account_annotations),
        "automountServiceAccountToken": False,
    }


def _config_map(spec: WorkloadSpec, managed_by: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, managed_by, f"{spec.name}-env"),
        "data": environment(spec),
    }


def _service_ports() -> list[Manifest]:
    return [{"name": PORT_NAMES[port], "port": port, "protocol": "TCP", "targetPort": port} for port in SERVICE_PORTS]


def _headless_service(spec: WorkloadSpec, managed_by: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, managed_by, headless_name(spec)),
        "spec": {"clusterIP": "None", "ports": _service_ports(), "selector": selector_labels(spec)},
    }


def _load_balancer(spec: WorkloadSpec, managed_by: str) -> Manifest:
    annotations = dict(spec.service_annotations)
    if managed_by == "pulumi":
        annotations[WAIT_FOR_ANNOTATION] = WAIT_FOR_ADDRESS
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, managed_by, annotations=annotations),
        "spec": {
            "type": "LoadBalancer",
            # Local: the client's address reaches the pod (so the NetworkPolicy's ipBlocks hold) and no node
            # forwards traffic to another node's pod.
            "externalTrafficPolicy": "Local",
            "loadBalancerSourceRanges": [str(cidr) for cidr in sorted(spec.allowed_cidrs)],
            "ports": _service_ports(),
            "selector": selector_labels(spec),
        },
    }


def _network_policy(spec: WorkloadSpec, managed_by: str) -> Manifest:
    egress_ports = sorted({443, spec.vault_port, *([spec.shared_tier_port] if spec.shared_tier_port else [])})
    egress_ports = sorted({*egress_ports, *spec.extra_egress_ports})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec, managed_by),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": str(cidr)}} for cidr in sorted(spec.allowed_cidrs)],
                    "ports": [{"port": port, "protocol": "TCP"} for port in SERVICE_PORTS],
                }
            ],
            "egress": [
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                {"ports": [{"port": port, "protocol": "TCP"} for port in egress_ports]},
            ],
        },
    }


def _disruption_budget(spec: WorkloadSpec, managed_by: str) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, managed_by),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec)}},
    }


def _stateful_set(spec: WorkloadSpec, managed_by: str) -> Manifest:
    claim_spec: Manifest = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": f"{spec.data_volume_gb}Gi"}},
    }
    if spec.storage_class is not None:
        claim_spec["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(spec, managed_by),
        "spec": {
            "replicas": spec.replicas,
            "serviceName": headless_name(spec),
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "minReadySeconds": 10,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector_labels(spec)},
            "template": pod_template(spec, labels(spec, managed_by)),
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": claim_spec}],
        },
    }
