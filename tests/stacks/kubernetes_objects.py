"""The Kubernetes objects a mock run of a scale-out stack created, as the manifests the cluster would receive, and
the order every cloud's scale-out deploys them in."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from onboarding.metrics_token_cli import vault_path
from stacks.cloudinit import TLS_COMMON_NAME_SETTING
from stacks.cluster import TLS_ISSUER_ANNOTATION, WORKLOAD_NAME
from stacks.kubernetes.manifests import WAIT_FOR_ADDRESS, WAIT_FOR_ANNOTATION
from tests.stacks import mockrun
from tests.stacks.mockrun import MockRun, Registered
from tests.stacks.test_kubernetes_manifests import KUBERNETES_VERSION

WAIT_FOR_THE_ADDRESS = {WAIT_FOR_ANNOTATION: WAIT_FOR_ADDRESS}
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"

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


def load_balancer(run: MockRun) -> Registered:
    (found,) = [
        resource
        for resource in run.of_type("kubernetes:core/v1:Service")
        if resource.props["spec"].get("type") == "LoadBalancer"
    ]
    return found


def pod_issuer_digest(run: MockRun) -> str:
    """The digest of the CA and the role's names that the pod template carries (a change rolls the pods)."""
    return str(run.one(STATEFUL_SET).props["spec"]["template"]["metadata"]["annotations"][TLS_ISSUER_ANNOTATION])


def pod_settings(run: MockRun) -> dict[str, str]:
    """The workload's ConfigMap data, deploy-time settings merged in."""
    [settings] = [
        resource.props["data"]
        for resource in run.of_type("kubernetes:core/v1:ConfigMap")
        if resource.props["metadata"]["name"] == f"{WORKLOAD_NAME}-env"
    ]
    return dict(settings)


def assert_deploy_order(run: MockRun, endpoint: str) -> None:
    """The load balancer waits for its address only, never for the pods; the PKI role and the pods' settings name
    `endpoint`, the name the load balancer is reached by; the pods wait for the role (their template carries the
    digest of its CA and names), not for the Service."""
    balancer = load_balancer(run)
    annotations = balancer.props["metadata"]["annotations"]
    assert {key: annotations[key] for key in WAIT_FOR_THE_ADDRESS} == WAIT_FOR_THE_ADDRESS
    assert "pulumi.com/skipAwait" not in annotations
    pods = run.one(STATEFUL_SET)
    role = run.one(mockrun.PKI_ROLE)
    assert balancer.urn not in pods.dependencies
    assert role.urn in pods.dependencies
    assert pods.custom_timeouts["create"] == "30m"
    assert mockrun.pki_role(run)["allowed_domains"] == [endpoint]
    assert pod_settings(run)[TLS_COMMON_NAME_SETTING] == endpoint
    [config_map] = [r for r in run.of_type("kubernetes:core/v1:ConfigMap") if r.props["data"] == pod_settings(run)]
    assert config_map.urn in pods.dependencies  # the pods' settings, naming the endpoint, come before the pods
    ca = run.one(mockrun.PKI_ROOT_CERT)
    certificate = mockrun.fake_pem("CERTIFICATE", ca.name)
    role_json = run.one(mockrun.PKI_ROLE).props["dataJson"]  # the role's names among its settings
    assert pod_issuer_digest(run) == hashlib.sha256(f"{certificate}\n{role_json}".encode()).hexdigest()


def with_a_new_ca(monkeypatch: pytest.MonkeyPatch, deploy: Callable[[], MockRun]) -> MockRun:
    """`deploy()` again, with Vault generating a different root certificate (the CA replaced)."""
    issue = mockrun.fake_pem
    monkeypatch.setattr(mockrun, "fake_pem", lambda kind, name: issue(kind, f"{name}-replaced"))
    return deploy()


def assert_pods_read_the_scrape_token(run: MockRun, stack: str) -> None:
    """The pods' settings name the secret `foresight metrics-token rotate --stack <stack>` writes, and the node
    policy their Vault role hands out may read it."""
    settings = pod_settings(run)
    assert settings.get("FORESIGHT_VAULT_METRICS_PATH") == vault_path(stack)
    policy = run.one("vault:index/policy:Policy").props["policy"]
    readable = dict(re.findall(r'path "([^"]+)" \{\s*capabilities = \[([^\]]*)\]', policy))
    assert readable[f"{settings['FORESIGHT_VAULT_KV_MOUNT']}/data/{vault_path(stack)}"] == '"read"'
