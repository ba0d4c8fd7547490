"""The workload's shared tier login (cloud identity or password), the tier's CA, extra pod labels and NVIDIA's
device plugin: what the spec refuses, what the manifests carry, and that Kubernetes' schemas accept them."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from service.config import load_settings
from stacks.kubernetes.device_plugin import IMAGE, device_plugin_manifest
from stacks.kubernetes.manifests import render
from stacks.kubernetes.pod import SHARED_TIER_CA_DIR
from stacks.kubernetes.spec import SpecError
from tests.stacks.test_kubernetes_manifests import KUBERNETES_VERSION, by_kind, container, pod_spec, spec_of

TIER = "rediss://master.fs.abc123.use1.cache.amazonaws.com:6379"
AWS_TIER = {"sharedTierUrl": TIER, "sharedTierAuth": "aws", "sharedTierUsername": "foresight-pods",
            "sharedTierAwsCache": "fs-tier"}


def config_map(**changes: Any) -> dict[str, str]:
    return dict(by_kind(render(spec_of(**changes)), "ConfigMap")["data"])


def test_cloud_identity_login_needs_no_secret_and_tells_the_service_how() -> None:
    data = config_map(**AWS_TIER)
    assert {k: v for k, v in data.items() if k.startswith("FORESIGHT_SHARED_TIER")} == {
        "FORESIGHT_SHARED_TIER_URL": TIER, "FORESIGHT_SHARED_TIER_AUTH": "aws",
        "FORESIGHT_SHARED_TIER_USERNAME": "foresight-pods", "FORESIGHT_SHARED_TIER_AWS_CACHE": "fs-tier"}
    rendered = render(spec_of(**AWS_TIER))
    assert not any("secret" in volume for volume in pod_spec(rendered)["volumes"])
    # The service accepts exactly these settings (its own validation, as the pod will run it).
    settings = load_settings(**{k.removeprefix("FORESIGHT_").lower(): v for k, v in data.items()
                                if k.startswith("FORESIGHT_SHARED_TIER")}, dev=True)
    assert (settings.shared_tier_auth, settings.shared_tier_aws_cache) == ("aws", "fs-tier")


@pytest.mark.parametrize(("changes", "message"), [
    ({"sharedTierUrl": TIER}, "required with sharedTierUrl"),
    ({**AWS_TIER, "sharedTierUsername": None}, "sharedTierUsername: required with sharedTierAuth aws"),
    ({**AWS_TIER, "sharedTierAwsCache": None}, "sharedTierAwsCache: required with sharedTierAuth aws"),
    ({"sharedTierUrl": TIER, "sharedTierAuth": "azure"}, "sharedTierUsername: required with sharedTierAuth azure"),
    ({**AWS_TIER, "sharedTierPasswordSecret": "tier"}, "not with sharedTierAuth aws"),
    ({"sharedTierUrl": TIER, "sharedTierAuth": "kerberos"}, "sharedTierAuth"),
])
def test_tier_login_mistakes_name_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_of(**{k: v for k, v in changes.items() if v is not None})


def test_google_login_needs_no_user_and_the_tiers_own_ca_is_mounted() -> None:
    changes = {"sharedTierUrl": TIER, "sharedTierAuth": "gcp", "sharedTierCaConfigMap": "foresight-tier-ca"}
    rendered = render(spec_of(**changes))
    assert config_map(**changes)["FORESIGHT_SHARED_TIER_CA_FILE"] == f"{SHARED_TIER_CA_DIR}/ca.pem"
    volume = next(v for v in pod_spec(rendered)["volumes"] if v["name"] == "shared-tier-ca")
    assert volume["configMap"] == {"name": "foresight-tier-ca", "items": [{"key": "ca.pem", "path": "ca.pem"}]}
    mount = next(m for m in container(rendered)["volumeMounts"] if m["name"] == "shared-tier-ca")
    assert mount == {"name": "shared-tier-ca", "mountPath": SHARED_TIER_CA_DIR, "readOnly": True}
    for manifest in rendered:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_extra_pod_labels_never_replace_the_selector_labels() -> None:
    labels = {"azure.workload.identity/use": "true", "app.kubernetes.io/name": "impostor"}
    template = by_kind(render(spec_of(podLabels=labels)), "StatefulSet")["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "foresight"


def test_device_plugin_is_nvidias_pinned_unprivileged_daemonset_on_the_gpu_pool() -> None:
    manifest = device_plugin_manifest({"foresight.dev/pool": "gpu"})
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    pod = manifest["spec"]["template"]["spec"]
    (plugin,) = pod["containers"]
    assert plugin["image"] == IMAGE  # a release, by its digest
    assert re.fullmatch(r"nvcr\.io/nvidia/k8s-device-plugin:v[0-9.]+@sha256:[0-9a-f]{64}", IMAGE)
    assert plugin["resources"]["limits"].keys() == {"cpu", "memory"}
    assert pod["nodeSelector"] == {"foresight.dev/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert plugin["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["volumes"] == [{"name": "device-plugin", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}]


def test_extra_tolerations_reach_the_pods_and_malformed_ones_are_refused() -> None:
    spot = {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot",
            "effect": "NoSchedule"}
    tolerations = pod_spec(render(spec_of(tolerations=[spot])))["tolerations"]
    assert tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, spot]
    assert spot in device_plugin_manifest({}, [spot])["spec"]["template"]["spec"]["tolerations"]
    with pytest.raises(SpecError, match="not a toleration"):
        spec_of(tolerations=[{"operator": "Exists"}])
    with pytest.raises(SpecError, match="not a taint effect"):
        spec_of(tolerations=[{"key": "a", "effect": "Sometimes"}])
