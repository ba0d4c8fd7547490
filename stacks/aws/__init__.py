"""AWS: `foresight:aws:GpuNode` (one node) and `foresight:aws:ScaleOut` (`foresight:scaleOut`: EKS, ElastiCache),
and their parts (component, network, identity, kms, compute, vault; cluster, tier, scale_out).

Importing this package imports pulumi_aws, pulumi_kubernetes and pulumi_vault, never a Google Cloud or
Azure SDK.
"""

from __future__ import annotations

from stacks.aws.component import GpuNode, GpuNodeArgs
from stacks.aws.scale_out import ScaleOut, ScaleOutArgs
from stacks.spec import StackOutputs, StackSpec

__all__ = ["GpuNode", "GpuNodeArgs", "ScaleOut", "ScaleOutArgs", "deploy"]


def deploy(spec: StackSpec) -> StackOutputs:
    """The scale-out component for `foresight:scaleOut: true`, else the single GPU node."""
    if spec.scale_out:
        return ScaleOut("foresight", ScaleOutArgs.from_spec(spec)).outputs
    return GpuNode("foresight", GpuNodeArgs.from_spec(spec)).outputs
