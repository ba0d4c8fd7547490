"""The StatefulSet's pod template: the TLS containers, the hardened service container, and their volumes.

The pod's identity toward Vault is a projected service-account token (audience `vaultAudience`, one hour,
rotated by the kubelet), read from a file by the TLS containers and the service (Vault's jwt method).
The init container `fetch-tls` issues the pod's certificate from Vault PKI before the service starts; the sidecar
`tls-refresh` (a restartable init container, Kubernetes 1.29 and later) issues a fresh one every day after, which
the service reloads without a restart: that is how a pod's certificate is renewed. TLS lands in a memory-backed
emptyDir that only those two can write. The root filesystem is read-only; /tmp and the data volume are the only
writable places.
"""

from __future__ import annotations

from typing import Any

from stacks.cloudinit import CONTAINER_TLS_DIR, DATA_DIR, SERVICE_GID
from stacks.kubernetes.spec import WorkloadSpec
from stacks.shutdown import service_stop_s
from stacks.spec import HTTPS_PORT, RESP_PORT, SERVICE_PORTS

Manifest = dict[str, Any]

PORT_NAMES = {RESP_PORT: "resp", HTTPS_PORT: "https"}
VAULT_TOKEN_DIR = "/var/run/secrets/foresight/vault"  # noqa: S105 - a path, not a token
VAULT_TOKEN_FILE = f"{VAULT_TOKEN_DIR}/token"
VAULT_TOKEN_TTL_S = 3600
SHARED_TIER_SECRET_DIR = "/var/run/secrets/foresight/shared-tier"  # noqa: S105 - a path
SHARED_TIER_CA_DIR = "/etc/foresight/shared-tier-ca"
# The init container runs the VM's boot script, which the image installs with the `stacks` package. No --group:
# the emptyDir belongs to root (group fsGroup), so the non-root script could not chown it; it writes the files
# as the service's own user instead.
FETCH_TLS_COMMAND = ["/opt/foresight/bin/python", "-m", "stacks.boot.fetch_tls", "--out", CONTAINER_TLS_DIR]
# The sidecar renews as the VMs' daily timer does, well inside the certificate's 30 days (stacks/tls.py).
TLS_REFRESH_INTERVAL_S = 24 * 3600
GPU_RESOURCE = "nvidia.com/gpu"
# Shutdown: the load balancer stops sending new connections while preStop sleeps; then the service's own stop
# (stacks/shutdown.py).
PRESTOP_SLEEP_S = 10
# Startup: loading torch and the prefetch models from a cold volume can take minutes on a fresh node.
STARTUP_PROBE_PERIOD_S = 10
STARTUP_PROBE_FAILURES = 60


def termination_grace_s(spec: WorkloadSpec) -> int:
    """Enough for preStop and the service's stop."""
    return PRESTOP_SLEEP_S + service_stop_s(spec.shutdown_grace_s)


def pod_template(spec: WorkloadSpec, labels: dict[str, str]) -> Manifest:
    pod: Manifest = {
        "serviceAccountName": spec.name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # no other Service's address leaks into the environment
        "terminationGracePeriodSeconds": termination_grace_s(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SERVICE_GID,
            "runAsGroup": SERVICE_GID,
            "fsGroup": SERVICE_GID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": [
            _spread(labels, "kubernetes.io/hostname", "DoNotSchedule"),
            _spread(labels, "topology.kubernetes.io/zone", "ScheduleAnyway"),
        ],
        "initContainers": [_fetch_tls_container(spec), _tls_refresh_container(spec)],
        "containers": [_service_container(spec)],
        "volumes": _volumes(spec),
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    if spec.gpus_per_pod:
        # GPU node pools carry this taint (EKS, GKE and AKS add it) so that only GPU workloads land there.
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if spec.tolerations:
        pod["tolerations"] = [*pod.get("tolerations", []), *(dict(t) for t in spec.tolerations)]
    return {"metadata": {"labels": {**spec.pod_labels, **labels}}, "spec": pod}


def _spread(labels: dict[str, str], topology_key: str, when_unsatisfiable: str) -> Manifest:
    selector = {key: labels[key] for key in ("app.kubernetes.io/instance", "app.kubernetes.io/name")}
    return {
        "maxSkew": 1,
        "topologyKey": topology_key,
        "whenUnsatisfiable": when_unsatisfiable,
        "labelSelector": {"matchLabels": selector},
    }


def _security_context() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": SERVICE_GID,
        "runAsGroup": SERVICE_GID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env_from(spec: WorkloadSpec) -> list[Manifest]:
    return [{"configMapRef": {"name": f"{spec.name}-env"}}]


def _tls_refresh_container(spec: WorkloadSpec) -> Manifest:
    """fetch_tls.py again every TLS_REFRESH_INTERVAL_S, for the pod's lifetime (restartPolicy Always: a sidecar)."""
    return {
        **_fetch_tls_container(spec),
        "name": "tls-refresh",
        "command": [*FETCH_TLS_COMMAND, "--every", str(TLS_REFRESH_INTERVAL_S)],
        "restartPolicy": "Always",
    }


def _fetch_tls_container(spec: WorkloadSpec) -> Manifest:
    return {
        "name": "fetch-tls",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": FETCH_TLS_COMMAND,
        "envFrom": _env_from(spec),
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "250m", "memory": "128Mi"},
        },
        "securityContext": _security_context(),
        "volumeMounts": [
            {"name": "tls", "mountPath": CONTAINER_TLS_DIR},
            {"name": "vault-token", "mountPath": VAULT_TOKEN_DIR, "readOnly": True},
        ],
    }


def _service_container(spec: WorkloadSpec) -> Manifest:
    limits = {"cpu": spec.cpu_limit, "memory": spec.memory_limit}
    env: list[Manifest] = []
    if spec.gpus_per_pod:
        limits[GPU_RESOURCE] = str(spec.gpus_per_pod)
    else:
        # The image says NVIDIA_VISIBLE_DEVICES=all; on a GPU node without a GPU request that would hand the pod
        # every GPU behind the scheduler's back. `void` tells the NVIDIA runtime to expose none.
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
    mounts = [
        {"name": "data", "mountPath": DATA_DIR},
        {"name": "tls", "mountPath": CONTAINER_TLS_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir of this pod's own
        {"name": "vault-token", "mountPath": VAULT_TOKEN_DIR, "readOnly": True},
    ]
    if spec.shared_tier_password_secret is not None:
        mounts.append({"name": "shared-tier-password", "mountPath": SHARED_TIER_SECRET_DIR, "readOnly": True})
    if spec.shared_tier_ca_config_map is not None:
        mounts.append({"name": "shared-tier-ca", "mountPath": SHARED_TIER_CA_DIR, "readOnly": True})
    container: Manifest = {
        "name": "foresight",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "envFrom": _env_from(spec),
        "ports": [{"name": PORT_NAMES[port], "containerPort": port, "protocol": "TCP"} for port in SERVICE_PORTS],
        "resources": {"requests": {"cpu": spec.cpu_request, "memory": spec.memory_request}, "limits": limits},
        "securityContext": _security_context(),
        "startupProbe": _probe("/healthz", STARTUP_PROBE_PERIOD_S, STARTUP_PROBE_FAILURES),
        "livenessProbe": _probe("/healthz", 15, 3),
        "readinessProbe": _probe("/readyz", 5, 2),
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sleep", str(PRESTOP_SLEEP_S)]}}},
        "volumeMounts": mounts,
    }
    if env:
        container["env"] = env
    return container


def _probe(path: str, period_s: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": PORT_NAMES[HTTPS_PORT], "scheme": "HTTPS"},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _volumes(spec: WorkloadSpec) -> list[Manifest]:
    volumes: list[Manifest] = [
        {"name": "tls", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {
            "name": "vault-token",
            "projected": {
                "defaultMode": 0o440,
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": spec.vault_audience,
                            "expirationSeconds": VAULT_TOKEN_TTL_S,
                            "path": "token",
                        }
                    }
                ],
            },
        },
    ]
    if spec.shared_tier_password_secret is not None:
        secret = {
            "secretName": spec.shared_tier_password_secret,
            "defaultMode": 0o440,
            "items": [{"key": "password", "path": "password"}],
        }
        volumes.append({"name": "shared-tier-password", "secret": secret})
    if spec.shared_tier_ca_config_map is not None:
        ca = {"name": spec.shared_tier_ca_config_map, "items": [{"key": "ca.pem", "path": "ca.pem"}]}
        volumes.append({"name": "shared-tier-ca", "configMap": ca})
    return volumes
