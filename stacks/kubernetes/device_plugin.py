"""NVIDIA's device plugin, which makes a node's GPUs schedulable as `nvidia.com/gpu`.

EKS's NVIDIA AMIs and AKS's GPU pools install the driver and the container toolkit but not this DaemonSet
(GKE installs its own), so those two stacks create it from here. It is NVIDIA's published DaemonSet
(k8s-device-plugin, static deployment), pinned to one release, confined to the GPU pool's nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# v0.17.0 by the digest nvcr.io serves for that tag (minikube's nvidia-device-plugin addon pins the same one): the
# pull is reproducible, and with a digest IfNotPresent cannot run another build.
IMAGE = (
    "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"
    "@sha256:7089559ce6153018806857f5049085bae15b3bf6f1c8bd19d8b12f707d087dea"
)
NAME = "nvidia-device-plugin"
NAMESPACE = "kube-system"


def device_plugin_manifest(
    node_selector: Mapping[str, str], tolerations: Sequence[Mapping[str, str]] = ()
) -> dict[str, Any]:
    """`tolerations`: taints of the pool beyond the GPU one (AKS's Spot taint)."""
    labels = {"app.kubernetes.io/name": NAME}
    pod = {
        "nodeSelector": dict(node_selector),
        "tolerations": [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            *(dict(toleration) for toleration in tolerations),
        ],
        "priorityClassName": "system-node-critical",
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": NAME,
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}],
                # It only registers a socket with the kubelet: no privileges, no writes but that directory.
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": True,
                },
                # It lists the GPUs at start and then waits on NVML's health events: a tenth of a core is ample.
                "resources": {
                    "requests": {"cpu": "10m", "memory": "32Mi"},
                    "limits": {"cpu": "100m", "memory": "128Mi"},
                },
                "volumeMounts": [{"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"}],
            }
        ],
        "volumes": [{"name": "device-plugin", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
