"""Azure: `foresight:azure:GpuNode` and its parts (component, network, identity, kms, compute, vault), file for
file as stacks/aws/, and, with `foresight:scaleOut`, `foresight:azure:ScaleOut` (scale_out, cluster, tier).

Importing this package imports pulumi_azure_native, pulumi_kubernetes and pulumi_vault, never an AWS
or Google Cloud SDK.
"""

from __future__ import annotations

from stacks.azure.component import GpuNode, GpuNodeArgs
from stacks.azure.scale_out import ScaleOut, ScaleOutArgs
from stacks.spec import StackOutputs, StackSpec

__all__ = ["GpuNode", "GpuNodeArgs", "ScaleOut", "ScaleOutArgs", "deploy"]


def deploy(spec: StackSpec) -> StackOutputs:
    """A scale-out stack on AKS when `foresight:scaleOut` is true, else one GPU node."""
    if spec.scale_out:
        return ScaleOut("foresight", ScaleOutArgs.from_spec(spec)).outputs
    return GpuNode("foresight", GpuNodeArgs.from_spec(spec)).outputs
