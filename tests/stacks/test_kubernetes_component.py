"""`foresight:kubernetes:Workload` under `pulumi.runtime.set_mocks`: it registers exactly the rendered manifests as
typed pulumi_kubernetes resources, all parented to it and through the given provider, and no secret."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest
from pulumi.runtime import settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from stacks.kubernetes.component import COMPONENT_TYPE, Workload, WorkloadArgs, stateful_set_timeouts
from stacks.kubernetes.manifests import WAIT_FOR_ANNOTATION, render
from tests.stacks.mockrun import MockRun, RecordingMonitor, StackOutput
from tests.stacks.test_kubernetes_manifests import SHARED_TIER, spec_of

LB_HOSTNAME = "k8s-cache-foresight-0123456789.elb.us-east-1.amazonaws.com"
SPEC = spec_of(**SHARED_TIER)
TYPES = {
    "ServiceAccount": "kubernetes:core/v1:ServiceAccount",
    "ConfigMap": "kubernetes:core/v1:ConfigMap",
    "NetworkPolicy": "kubernetes:networking.k8s.io/v1:NetworkPolicy",
    "Service": "kubernetes:core/v1:Service",
    "StatefulSet": "kubernetes:apps/v1:StatefulSet",
    "PodDisruptionBudget": "kubernetes:policy/v1:PodDisruptionBudget",
}


class ClusterMocks(pulumi.runtime.Mocks):
    """A cluster that assigns the LoadBalancer Service a hostname, as EKS's load balancer controller does."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        if args.typ == TYPES["Service"] and state["spec"].get("type") == "LoadBalancer":
            state["status"] = {"loadBalancer": {"ingress": [{"hostname": LB_HOSTNAME}]}}
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        raise AssertionError(f"the workload invokes nothing, yet asked for {args.token}")


def run_workload(with_provider: bool, **deploy_time: Any) -> tuple[MockRun, Workload]:
    """Register the component in a fresh mock engine; the returned run holds every registration in order."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    settings.ROOT.set(None)
    monitor = RecordingMonitor(ClusterMocks())
    pulumi.runtime.set_mocks(ClusterMocks(), project="foresight", stack="k8s-test", preview=False, monitor=monitor)
    made: list[Workload] = []

    def program() -> None:
        provider = k8s.Provider("cluster", kubeconfig="{}") if with_provider else None
        extra = {key: {k: pulumi.Output.from_input(v) for k, v in value.items()} for key, value in deploy_time.items()}
        workload = Workload("cache", WorkloadArgs(SPEC, provider, **extra))
        pulumi.export("endpoint", workload.endpoint)
        made.append(workload)

    _sync_await(run_pulumi_func(program))
    root = settings.get_root_resource()
    outputs = {}
    for name, value in root.outputs.items():  # type: ignore[union-attr]
        output = pulumi.Output.from_input(value)
        outputs[name] = StackOutput(_sync_await(output.future()), bool(_sync_await(output.is_secret())))
    return MockRun(resources=monitor.registered, outputs=outputs), made[0]


@pytest.fixture(scope="module")
def with_provider() -> tuple[MockRun, Workload]:
    return run_workload(with_provider=True)


def test_component_registers_exactly_the_rendered_manifests_as_typed_resources(
    with_provider: tuple[MockRun, Workload],
) -> None:
    run, _ = with_provider
    children = [r for r in run if r.type.startswith("kubernetes:")]
    rendered = render(SPEC, managed_by="pulumi")
    by_name = {resource.name: resource for resource in children}
    assert len(by_name) == len(children) == len(rendered)
    for manifest in rendered:
        resource = by_name[f"cache-{manifest['kind'].lower()}-{manifest['metadata']['name']}"]
        assert resource.type == TYPES[manifest["kind"]]
        fields = {key: value for key, value in manifest.items() if key not in ("apiVersion", "kind")}
        assert {key: resource.props[key] for key in fields} == json.loads(json.dumps(fields)), manifest["kind"]
    statefulset = run.one(TYPES["StatefulSet"])
    before = rendered[: [m["kind"] for m in rendered].index("StatefulSet")]
    read_first = {
        by_name[f"cache-{m['kind'].lower()}-{m['metadata']['name']}"].urn
        for m in before
        if m.get("spec", {}).get("type") != "LoadBalancer"
    }
    assert read_first <= set(statefulset.dependencies), "the pods wait for what they read"


def test_load_balancer_waits_for_its_address_only_and_the_pods_do_not_wait_for_it(
    with_provider: tuple[MockRun, Workload],
) -> None:
    """pulumi-kubernetes' own Service check also wants every selected pod ready, and the pods wait for the
    certificate that names the load balancer's address: the Service waits for the address alone instead."""
    run, _ = with_provider
    balancer = run.named("cache-service-foresight")
    annotations = balancer.props["metadata"]["annotations"]
    assert annotations[WAIT_FOR_ANNOTATION] == "jsonpath={.status.loadBalancer.ingress[0]}"
    assert "pulumi.com/skipAwait" not in annotations  # the certificate needs the address the wait returns
    statefulset = run.one(TYPES["StatefulSet"])
    assert balancer.urn not in statefulset.dependencies
    # A first GPU node and a multi-GB image pull outlast the provider's default 10 minutes.
    assert statefulset.custom_timeouts == {"create": "30m", "update": "30m"}
    assert run.outputs["endpoint"] == StackOutput(LB_HOSTNAME, False)


def test_a_larger_workload_gets_a_longer_rolling_update() -> None:
    assert stateful_set_timeouts(1).update == "30m"
    assert stateful_set_timeouts(8).update == "120m"


def test_the_kubectl_manifests_carry_no_pulumi_annotation() -> None:
    balancer = next(m for m in render(SPEC) if m.get("spec", {}).get("type") == "LoadBalancer")
    assert not [key for key in balancer["metadata"].get("annotations", {}) if key.startswith("pulumi.com/")]


def test_pod_annotations_reach_the_pod_template() -> None:
    run, _ = run_workload(with_provider=True, pod_annotations={"foresight.dev/tls-certificate-sha256": "ab12"})
    template = run.one(TYPES["StatefulSet"]).props["spec"]["template"]["metadata"]
    assert template["annotations"] == {"foresight.dev/tls-certificate-sha256": "ab12"}
    assert template["labels"]["app.kubernetes.io/name"] == "foresight"


def test_every_child_is_parented_to_the_component_and_uses_the_given_provider(
    with_provider: tuple[MockRun, Workload],
) -> None:
    run, _ = with_provider
    component = run.one(COMPONENT_TYPE)
    provider = run.one("pulumi:providers:kubernetes")
    children = [r for r in run if r.type.startswith("kubernetes:")]
    assert len(children) == 7
    for child in children:
        assert child.parent == component.urn, child.name
        assert child.provider.startswith(provider.urn), child.name


def test_children_are_typed_attributes_and_the_endpoint_is_the_load_balancers_address(
    with_provider: tuple[MockRun, Workload],
) -> None:
    run, workload = with_provider
    assert isinstance(workload.load_balancer, k8s.core.v1.Service)
    assert isinstance(workload.stateful_set, k8s.apps.v1.StatefulSet)
    assert isinstance(workload.disruption_budget, k8s.policy.v1.PodDisruptionBudget)
    assert isinstance(workload.network_policy, k8s.networking.v1.NetworkPolicy)
    assert run.outputs["endpoint"] == StackOutput(LB_HOSTNAME, False)
    managed_by = {
        r.props["metadata"]["labels"]["app.kubernetes.io/managed-by"] for r in run if r.type in TYPES.values()
    }
    assert managed_by == {"pulumi"}


def test_no_secret_reaches_the_engine(with_provider: tuple[MockRun, Workload]) -> None:
    """The shared tier's password is named (its Secret) and pointed at (its file), never carried."""
    run, _ = with_provider
    recorded = json.dumps([r.inputs for r in run if r.type.startswith("kubernetes:")])
    assert not [r for r in run if r.type.endswith(":Secret")]
    assert "secretKeyRef" not in recorded and "BEGIN " not in recorded
    config = run.one(TYPES["ConfigMap"]).props["data"]
    assert config["FORESIGHT_SHARED_TIER_PASSWORD_FILE"].endswith("/password")
    assert all(not value.startswith("eyJ") for value in config.values())  # no JWT either


def test_without_a_provider_children_use_the_default_one() -> None:
    run, _ = run_workload(with_provider=False)
    children = [r for r in run if r.type.startswith("kubernetes:")]
    assert len(children) == 7 and not run.of_type("pulumi:providers:kubernetes")
    assert all("cluster" not in child.provider for child in children)


def test_values_the_cloud_knows_only_at_deploy_time_reach_the_config_map_and_service_account() -> None:
    key_arn = "arn:aws:kms:us-east-1:123456789012:key/0f0e0d0c-0b0a-0908-0706-050403020100"
    role = "arn:aws:iam::123456789012:role/foresight-pods"
    run, _ = run_workload(
        with_provider=True,
        settings={"FORESIGHT_KMS_KEY_ID": key_arn, "FORESIGHT_SHARED_TIER_AUTH": "aws"},
        service_account_annotations={"eks.amazonaws.com/role-arn": role},
    )
    data = run.one(TYPES["ConfigMap"]).props["data"]
    assert data["FORESIGHT_KMS_KEY_ID"] == key_arn  # replaced the spec's own value
    assert data["FORESIGHT_SHARED_TIER_AUTH"] == "aws"
    assert data["FORESIGHT_VAULT_ROLE"] == SPEC.vault_role  # the rest as rendered
    account = run.one(TYPES["ServiceAccount"]).props["metadata"]
    assert account["annotations"] == {"eks.amazonaws.com/role-arn": role}
