"""Running one policy of the pack the way Pulumi's analyzer does, shared by the per-cloud policy tests."""

from __future__ import annotations

from typing import Any

from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs, ResourceValidationPolicy
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.proxy import unknown_checking_proxy

from stacks.policies import rules

POLICIES: dict[str, ResourceValidationPolicy] = {policy.name: policy for policy in rules.POLICIES}
TAGS = {"foresight:project": "foresight", "foresight:stack": "dev", "managed-by": "pulumi"}
# (policy, resource type, properties, a fragment of the expected violation or None for none)
Case = tuple[str, str, dict[str, Any], str | None]


def violations(policy_name: str, resource_type: str, props: dict[str, Any]) -> list[str]:
    """Run one policy the way the analyzer does: engine-style properties behind the unknown-checking proxy."""
    found: list[str] = []
    options = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
    args = ResourceValidationArgs(
        resource_type, unknown_checking_proxy(deserialize_properties(props)), "urn:test", "test", options, None
    )
    policy = POLICIES[policy_name]
    assert policy.validate is not None and not isinstance(policy.validate, list)

    def report(message: str, _urn: str | None = None) -> None:
        found.append(message)

    policy.validate(args, report)
    return found


def assert_case(policy_name: str, resource_type: str, props: dict[str, Any], expected: str | None) -> None:
    """One Case: no violation when `expected` is None, else a violation whose message holds `expected`."""
    found = violations(policy_name, resource_type, props)
    if expected is None:
        assert found == []
    else:
        assert found and any(expected in message for message in found), found
