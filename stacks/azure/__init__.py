"""Azure: `foresight:azure:GpuNode` and its parts (component, network, identity, kms, compute, vault), file for
file as stacks/aws/.

Importing this package imports pulumi_azure_native, pulumi_tls and pulumi_vault, never an AWS or Google
Cloud SDK.
"""

from __future__ import annotations

from stacks.azure.component import GpuNode, GpuNodeArgs
from stacks.spec import StackOutputs, StackSpec

__all__ = ["GpuNode", "GpuNodeArgs", "deploy"]


def deploy(spec: StackSpec) -> StackOutputs:
    return GpuNode("foresight", GpuNodeArgs.from_spec(spec)).outputs
