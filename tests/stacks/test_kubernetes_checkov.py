"""checkov's Kubernetes checks on the rendered workload: none fails but the accepted ones, each with its reason."""

from __future__ import annotations

import json
from pathlib import Path

from stacks.kubernetes.cli import to_yaml
from stacks.kubernetes.device_plugin import device_plugin_manifest
from stacks.kubernetes.manifests import render
from tests.images.tools import run_checkov
from tests.stacks.test_kubernetes_manifests import SHARED_TIER, spec_of

# checkov findings we accept, and why (docs/kubernetes.md says the same). None today: a finding is fixed in the
# renderer, or lands here with its reason.
ACCEPTED_CHECKOV: dict[str, str] = {}
# NVIDIA's device plugin is NVIDIA's design, which these findings are about; its image, pull policy and CPU and memory
# limits are set, so what is left is what the plugin cannot do otherwise (docs/kubernetes.md says the same).
DEVICE_PLUGIN_ACCEPTED_CHECKOV = {
    "CKV_K8S_23": "it runs as root: it creates its socket in the kubelet's root-owned /var/lib/kubelet/device-plugins "
    "(a hostPath, which fsGroup does not reach) and opens the root-owned /dev/nvidia* devices through NVML",
    "CKV_K8S_40": "the same: a high UID could neither write the kubelet's socket directory nor open the GPUs",
    "CKV_K8S_8": "no liveness probe: the plugin serves no HTTP or TCP endpoint and ships no health command; it "
    "re-registers by itself when the kubelet restarts, and the kubelet drops its GPUs when its socket goes",
    "CKV_K8S_9": "no readiness probe, for the same reason; no Service sends it traffic, so readiness gates nothing",
    "CKV2_K8S_6": "no NetworkPolicy: the plugin opens no port and connects nowhere; it speaks to the kubelet only over "
    "a Unix socket, which a NetworkPolicy does not govern",
}


def test_checkov_fails_only_the_accepted_checks(tmp_path: Path) -> None:
    rendered = render(spec_of(**SHARED_TIER, storageClass="gp3"))
    path = tmp_path / "workload.yaml"
    path.write_text(to_yaml(rendered))
    report = run_checkov(path, "kubernetes")
    summary = report["summary"]
    failed = {check["check_id"] for check in report["results"]["failed_checks"]}
    assert failed == set(ACCEPTED_CHECKOV), json.dumps(report["results"]["failed_checks"], indent=1)
    assert summary["skipped"] == 0 == summary["parsing_errors"]
    assert summary["resource_count"] >= len(rendered), summary  # checkov also counts the claim template
    assert summary["passed"] >= 80, summary  # the checks really ran (94 when written)


def test_checkov_bites_on_a_weakened_pod(tmp_path: Path) -> None:
    """The same run on a pod that may escalate privileges and runs a tag-only image fails those checks."""
    rendered = render(spec_of(image="ghcr.io/foresight/foresight:0.1.0"))
    statefulset = next(m for m in rendered if m["kind"] == "StatefulSet")
    statefulset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    path = tmp_path / "weak.yaml"
    path.write_text(to_yaml(rendered))
    report = run_checkov(path, "kubernetes")
    failed = {check["check_id"] for check in report["results"]["failed_checks"]}
    assert {"CKV_K8S_20", "CKV_K8S_43"} <= failed, failed


def test_checkov_fails_only_the_accepted_checks_on_the_device_plugin(tmp_path: Path) -> None:
    path = tmp_path / "device-plugin.yaml"
    path.write_text(to_yaml([device_plugin_manifest({"foresight.dev/pool": "gpu"})]))
    report = run_checkov(path, "kubernetes")
    summary = report["summary"]
    failed = {check["check_id"] for check in report["results"]["failed_checks"]}
    assert failed == set(DEVICE_PLUGIN_ACCEPTED_CHECKOV), json.dumps(report["results"]["failed_checks"], indent=1)
    assert summary["skipped"] == 0 == summary["parsing_errors"]
    assert summary["passed"] >= 80, summary  # the checks really ran (84 when written)
