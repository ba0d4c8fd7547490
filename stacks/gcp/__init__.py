"""Google Cloud: `foresight:gcp:GpuNode` and its parts (component, network, identity, kms, compute, vault),
file for file as stacks/aws/; with `foresight:scaleOut: true`, `foresight:gcp:ScaleOut` (scale_out, cluster,
tier) on GKE and Memorystore instead.

Importing this package imports pulumi_gcp and pulumi_vault, never an AWS or Azure SDK; the
scale-out component, which also needs pulumi_kubernetes, is imported only when chosen.
"""

from __future__ import annotations

from stacks.gcp.component import GpuNode, GpuNodeArgs
from stacks.spec import StackOutputs, StackSpec

__all__ = ["GpuNode", "GpuNodeArgs", "deploy"]


def deploy(spec: StackSpec) -> StackOutputs:
    if spec.scale_out:
        from stacks.gcp.scale_out import ScaleOut, ScaleOutArgs

        return ScaleOut("foresight", ScaleOutArgs.from_spec(spec)).outputs
    return GpuNode("foresight", GpuNodeArgs.from_spec(spec)).outputs
