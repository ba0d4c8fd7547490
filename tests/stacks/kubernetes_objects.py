"""The Kubernetes objects a mock run of a scale-out stack created, as the manifests the cluster would receive."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from tests.stacks.mockrun import MockRun
from tests.stacks.test_kubernetes_manifests import KUBERNETES_VERSION

# pulumi_kubernetes type token prefix -> apiVersion group ("core" is the empty group).
_PREFIX = "kubernetes:"


def manifests(run: MockRun) -> list[dict[str, Any]]:
    """Every kubernetes:<group>/<version>:<Kind> resource as {apiVersion, kind, **its inputs}."""
    found = []
    for resource in run:
        if not resource.type.startswith(_PREFIX):
            continue
        group_version, kind = resource.type.removeprefix(_PREFIX).split(":")
        group, version = group_version.split("/")
        api_version = version if group == "core" else f"{group}/{version}"
        found.append({"apiVersion": api_version, "kind": kind, **resource.props})
    return found


def assert_valid(run: MockRun) -> list[str]:
    """Validate every object against Kubernetes' own schemas (strict); returns the kinds checked."""
    checked = []
    for manifest in manifests(run):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        checked.append(manifest["kind"])
    return sorted(checked)
