"""`foresight:kubernetes:Workload`: the scale-out workload in a managed cluster, from one `WorkloadSpec`.

It creates, all as its children (and through `WorkloadArgs.provider` when one is given), exactly what
`manifests.render` renders, each dict as the matching pulumi_kubernetes typed resource:
- a ServiceAccount without an API token, and the ConfigMap of the service's settings;
- a NetworkPolicy (ingress on the service ports from allowedCidrs; egress to DNS, HTTPS, Vault, the shared tier);
- a headless Service for the StatefulSet and the LoadBalancer Service of the service ports, which Pulumi waits
  for until the cloud gives it an address (not for its pods: they wait for the PKI role naming that address);
- the StatefulSet (TLS init container and refresh sidecar, GPU service container, one data volume per pod), which
  Pulumi waits for up to `STATEFUL_SET_TIMEOUTS` (a first GPU node and a multi-GB image pull take longer than the
  default 10 minutes); `WorkloadArgs.pod_annotations` roll its pods when they change (the stacks pass the digest
  of the CA and the endpoint's name, so a new CA or name reaches every pod; renewal needs no rollout);
- a PodDisruptionBudget of one pod.
Its outputs are the load balancer's address (hostname or IP), the namespace and the name. This is the only
module of stacks/kubernetes that imports pulumi_kubernetes, so rendering YAML never needs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pulumi
import pulumi_kubernetes as k8s

from stacks.kubernetes.device_plugin import device_plugin_manifest
from stacks.kubernetes.manifests import Manifest, headless_name, render
from stacks.kubernetes.spec import WorkloadSpec
from stacks.spec import HTTPS_PORT, RESP_PORT

COMPONENT_TYPE = "foresight:kubernetes:Workload"
T = TypeVar("T")
# A first rollout waits for a GPU node, the image pull and the TLS init container; an update replaces the pods one
# at a time, each drained, restarted and probed (up to 10 minutes of startup probe on a cold volume).
CREATE_TIMEOUT_MINUTES = 30
UPDATE_MINUTES_PER_POD = 15


def stateful_set_timeouts(replicas: int) -> pulumi.CustomTimeouts:
    """How long Pulumi waits for the StatefulSet to be ready after a create or an update."""
    update = max(CREATE_TIMEOUT_MINUTES, UPDATE_MINUTES_PER_POD * replicas)
    return pulumi.CustomTimeouts(create=f"{CREATE_TIMEOUT_MINUTES}m", update=f"{update}m")

# (apiVersion, kind) -> the typed resource; a manifest of any other kind is a bug in the renderer.
RESOURCE_TYPES: dict[tuple[str, str], Callable[..., pulumi.CustomResource]] = {
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Service"): k8s.core.v1.Service,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("apps/v1", "StatefulSet"): k8s.apps.v1.StatefulSet,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
}


@dataclass(frozen=True)
class WorkloadArgs:
    """The validated spec, and the cluster's provider (None: the stack's default kubeconfig).

    A stack knows some values only once the cloud has made them (the KMS key's ARN, the shared tier's endpoint,
    the pods' cloud role, the endpoint's name): `settings` adds or replaces those ConfigMap entries,
    `service_account_annotations` and `pod_annotations` those annotations, as Pulumi inputs. The spec holds what
    is known before (names, ports, the shape)."""

    spec: WorkloadSpec
    provider: k8s.Provider | None = None
    settings: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    service_account_annotations: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    # Added to the pod template's annotations: a change rolls every pod (a new CA, for one).
    pod_annotations: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    # What every object waits for (its namespace, the disks' StorageClass, the pods' cloud permissions): a
    # component's children do not inherit the component's own depends_on.
    depends_on: Sequence[pulumi.Resource] = ()


class Workload(pulumi.ComponentResource):
    """Foresight's pods behind one load balancer, with their identity, settings, policy and budget."""

    service_account: k8s.core.v1.ServiceAccount
    config_map: k8s.core.v1.ConfigMap
    network_policy: k8s.networking.v1.NetworkPolicy
    headless_service: k8s.core.v1.Service
    load_balancer: k8s.core.v1.Service
    stateful_set: k8s.apps.v1.StatefulSet
    disruption_budget: k8s.policy.v1.PodDisruptionBudget
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, args: WorkloadArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        spec = args.spec
        children: dict[tuple[str, str], pulumi.CustomResource] = {}
        for manifest in render(spec, managed_by="pulumi"):
            kind, object_name = manifest["kind"], manifest["metadata"]["name"]
            if kind == "ConfigMap" and args.settings:
                manifest["data"] = {**manifest["data"], **args.settings}
            if kind == "ServiceAccount" and args.service_account_annotations:
                annotations = manifest["metadata"].get("annotations", {})
                manifest["metadata"]["annotations"] = {**annotations, **args.service_account_annotations}
            after: list[pulumi.Resource] = []
            timeouts = None
            if kind == "StatefulSet":
                if args.pod_annotations:
                    template = manifest["spec"]["template"]["metadata"]
                    template["annotations"] = {**template.get("annotations", {}), **args.pod_annotations}
                # The pods come last and wait for what they read, so a first rollout never starts without them;
                # nothing in a pod reads the load balancer, and the stacks' PKI role and endpoint name wait for it.
                after = [child for key, child in children.items() if key != ("Service", spec.name)]
                timeouts = stateful_set_timeouts(spec.replicas)
            options = pulumi.ResourceOptions(
                parent=self, provider=args.provider, depends_on=[*args.depends_on, *after], custom_timeouts=timeouts
            )
            resource_type = RESOURCE_TYPES[(manifest["apiVersion"], kind)]
            children[(kind, object_name)] = resource_type(
                f"{name}-{kind.lower()}-{object_name}", opts=options, **_resource_args(manifest)
            )
        self.service_account = _typed(children, "ServiceAccount", spec.name, k8s.core.v1.ServiceAccount)
        self.config_map = _typed(children, "ConfigMap", f"{spec.name}-env", k8s.core.v1.ConfigMap)
        self.network_policy = _typed(children, "NetworkPolicy", spec.name, k8s.networking.v1.NetworkPolicy)
        self.headless_service = _typed(children, "Service", headless_name(spec), k8s.core.v1.Service)
        self.load_balancer = _typed(children, "Service", spec.name, k8s.core.v1.Service)
        self.stateful_set = _typed(children, "StatefulSet", spec.name, k8s.apps.v1.StatefulSet)
        self.disruption_budget = _typed(children, "PodDisruptionBudget", spec.name, k8s.policy.v1.PodDisruptionBudget)
        self.endpoint = self.load_balancer.status.apply(_ingress_address)
        self.register_outputs(
            {
                "endpoint": self.endpoint,
                "namespace": spec.namespace,
                "name": spec.name,
                "respPort": RESP_PORT,
                "httpsPort": HTTPS_PORT,
            }
        )


def _resource_args(manifest: Manifest) -> dict[str, Any]:
    """The manifest's top-level fields as the typed resource's keyword arguments (`automountServiceAccountToken`
    -> `automount_service_account_token`); nested dicts keep Kubernetes' own camelCase keys, which the SDK sends
    as they are."""
    return {
        re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value
        for key, value in manifest.items()
        if key not in ("apiVersion", "kind")
    }


def _typed(children: dict[tuple[str, str], pulumi.CustomResource], kind: str, name: str, cls: type[T]) -> T:
    resource = children[(kind, name)]
    assert isinstance(resource, cls), (kind, name)
    return resource


def _ingress_address(status: Any) -> str:
    """The load balancer's hostname (AWS) or IP (Google Cloud, Azure); empty until the cloud assigns one."""
    ingress = (status.load_balancer.ingress if status and status.load_balancer else None) or []
    return next((entry.hostname or entry.ip for entry in ingress if entry.hostname or entry.ip), "")


def create_device_plugin(
    name: str,
    node_selector: Mapping[str, str],
    provider: k8s.Provider | None,
    parent: pulumi.Resource,
    tolerations: Sequence[Mapping[str, str]] = (),
) -> k8s.apps.v1.DaemonSet:
    """NVIDIA's device plugin on the GPU pool (stacks/kubernetes/device_plugin.py says which clusters need it)."""
    manifest = device_plugin_manifest(node_selector, tolerations)
    return k8s.apps.v1.DaemonSet(
        f"{name}-nvidia-device-plugin",
        opts=pulumi.ResourceOptions(parent=parent, provider=provider),
        **_resource_args(manifest),
    )
