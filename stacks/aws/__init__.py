"""AWS: `foresight:aws:GpuNode` and its parts (component, network, identity, kms, compute, vault).

Importing this package imports pulumi_aws, pulumi_tls and pulumi_vault, never a Google Cloud or Azure SDK.
"""

from __future__ import annotations

from stacks.aws.component import GpuNode, GpuNodeArgs
from stacks.spec import StackOutputs, StackSpec

__all__ = ["GpuNode", "GpuNodeArgs", "deploy"]


def deploy(spec: StackSpec) -> StackOutputs:
    return GpuNode("foresight", GpuNodeArgs.from_spec(spec)).outputs
