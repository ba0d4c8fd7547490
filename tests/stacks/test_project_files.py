"""Pulumi.yaml and the example stack file: what the Pulumi CLI would accept, and in step with the spec.

There is no Pulumi CLI here, so `_project_problems` applies the checks of Pulumi's own project loader
(`Project.Validate` and `ValidateConfigValue` in sdk/go/common/workspace/project.go) to our Pulumi.yaml.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from stacks.spec import CONFIG_KEYS, DEFAULT_IMAGE, DEFAULT_VOLUME_SIZE_GB, REQUIRED_KEYS
from tests.stacks.conftest import RunStack
from tests.stacks.mockrun import ROOT

PROJECT = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
DECLARATION_ATTRIBUTES = {"type", "items", "description", "secret", "default"}


def _matches(type_name: str, items: dict[str, Any] | None, value: Any) -> bool:
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    if type_name == "array" and items is not None and isinstance(value, list):
        return all(_matches(items["type"], items.get("items"), item) for item in value)
    return False


def _project_problems(project: dict[str, Any]) -> list[str]:
    problems = []
    if not project.get("name") or not project.get("runtime"):
        problems.append("name and runtime are required")
    for key, declaration in (project.get("config") or {}).items():
        if ":" in key and not key.startswith(f"{project['name']}:"):
            problems.append(f"{key}: only project keys may declare a type")
        if set(declaration) - DECLARATION_ATTRIBUTES:
            problems.append(f"{key}: unknown attributes {set(declaration) - DECLARATION_ATTRIBUTES}")
        if declaration.get("type") not in ("string", "integer", "boolean", "array"):
            problems.append(f"{key}: type must be string, integer, boolean or array")
        if declaration.get("type") == "array" and "items" not in declaration:
            problems.append(f"{key}: an array needs items")
        if "default" in declaration and not _matches(
            declaration["type"], declaration.get("items"), declaration["default"]
        ):
            problems.append(f"{key}: default is not a {declaration['type']}")
        if declaration.get("secret") and "default" in declaration:
            problems.append(f"{key}: a secret with a default fails as 'must be encrypted'")
    return problems


def test_pulumi_yaml_is_a_valid_python_project_running_stacks() -> None:
    assert _project_problems(PROJECT) == []
    assert PROJECT["name"] == "foresight"
    assert PROJECT["runtime"]["name"] == "python"
    assert PROJECT["main"] == "stacks/"
    assert (ROOT / PROJECT["main"] / "__main__.py").is_file()


def test_pulumi_yaml_declares_every_key_with_type_description_and_default() -> None:
    declared = PROJECT["config"]
    assert list(declared) == [f"foresight:{name}" for name in CONFIG_KEYS]
    for name in CONFIG_KEYS:
        declaration = declared[f"foresight:{name}"]
        assert declaration["type"] and declaration["description"].strip()
        assert ("default" in declaration) == (name not in REQUIRED_KEYS), name


def test_pulumi_yaml_defaults_are_the_programs_defaults() -> None:
    defaults = {key.split(":")[1]: value["default"] for key, value in PROJECT["config"].items() if "default" in value}
    assert defaults == {
        "instanceType": "",  # the cloud's own default, which the spec fills in
        "fallbackInstanceTypes": [],
        "spot": False,
        "image": DEFAULT_IMAGE,
        "vpcId": "",
        "subnetIds": [],
        "sshPublicKey": "",
        "volumeSizeGb": DEFAULT_VOLUME_SIZE_GB,
        "scaleOut": False,
        "nodes": 2,
        "redisPrivateDnsZoneId": "",
        "auditBucket": "",  # no shipping: the trail stays on the nodes
        "originBuckets": [],  # no grants on tenants' buckets: the operator's, to nodeIdentity
        "tlsCaGenerations": [1],  # one root CA, the one every stack before rotation has
        "tlsCaIssuing": 0,  # the last generation issues
    }


def _stack_config(path: str) -> dict[str, str]:
    """A stack file's config as the engine hands it to the program: objects as JSON, scalars as strings."""
    config = yaml.safe_load((ROOT / path).read_text())["config"]
    return {
        key: json.dumps(value)
        if isinstance(value, list | dict)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
        for key, value in config.items()
    }


def _check_example(path: str) -> dict[str, str]:
    """The example's config, after checking each project key's value against its declared type."""
    config = _stack_config(path)
    for key, value in yaml.safe_load((ROOT / path).read_text())["config"].items():
        if key in PROJECT["config"]:
            declaration = PROJECT["config"][key]
            assert _matches(declaration["type"], declaration.get("items"), value), key
    assert set(config) >= {f"foresight:{name}" for name in REQUIRED_KEYS}
    return config


def test_example_stack_file_deploys(run_stack: RunStack) -> None:
    run = run_stack(_check_example("Pulumi.aws-example.yaml"))
    overrides = run.one("aws:autoscaling/group:Group").props["mixedInstancesPolicy"]["launchTemplate"]["overrides"]
    assert [o["instanceType"] for o in overrides] == ["g6.xlarge", "g5.xlarge", "g6e.xlarge"]


def test_gcp_example_stack_file_deploys(run_gcp_stack: RunStack) -> None:
    config = _check_example("Pulumi.gcp-example.yaml")
    assert config["foresight:cloud"] == "gcp" and config["gcp:region"]
    run = run_gcp_stack(config)
    group = run.one("gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager").props
    selections = group["instanceFlexibilityPolicy"]["instanceSelections"]
    assert [s["machineTypes"] for s in selections] == [["g2-standard-4"], ["g2-standard-8"]]


def test_azure_example_stack_file_deploys(run_azure_stack: RunStack) -> None:
    config = _check_example("Pulumi.azure-example.yaml")
    assert config["foresight:cloud"] == "azure" and config["azure-native:location"]
    run = run_azure_stack(config)
    sizes = run.one("azure-native:compute:VirtualMachineScaleSet").props["skuProfile"]["vmSizes"]
    assert [size["name"] for size in sizes] == ["Standard_NC4as_T4_v3", "Standard_NC8as_T4_v3"]


def test_policy_pack_project_file_is_python() -> None:
    pack = yaml.safe_load((ROOT / "stacks/policies/PulumiPolicy.yaml").read_text())
    assert pack["runtime"]["name"] == "python"
    assert (ROOT / "stacks/policies" / pack["runtime"]["options"]["virtualenv"] / "bin/python").exists()
