"""Google Cloud: `foresight:gcp:GpuNode` and its parts (component, network, identity, kms, compute, vault),
file for file as stacks/aws/.

Importing this package imports pulumi_gcp, pulumi_tls and pulumi_vault, never an AWS or Azure SDK.
"""

from __future__ import annotations

from stacks.gcp.component import GpuNode, GpuNodeArgs
from stacks.spec import StackOutputs, StackSpec

__all__ = ["GpuNode", "GpuNodeArgs", "deploy"]


def deploy(spec: StackSpec) -> StackOutputs:
    return GpuNode("foresight", GpuNodeArgs.from_spec(spec)).outputs
