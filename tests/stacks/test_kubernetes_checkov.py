"""checkov's Kubernetes checks on the rendered workload: none fails but the accepted ones, each with its reason."""

from __future__ import annotations

import json
from pathlib import Path

from stacks.kubernetes.cli import to_yaml
from stacks.kubernetes.manifests import render
from tests.images.tools import run_checkov
from tests.stacks.test_kubernetes_manifests import SHARED_TIER, spec_of

# checkov findings we accept, and why (docs/kubernetes.md says the same). None today: a finding is fixed in the
# renderer, or lands here with its reason.
ACCEPTED_CHECKOV: dict[str, str] = {}


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
