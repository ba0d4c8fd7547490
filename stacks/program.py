"""The Pulumi program: validate the stack's config, build the named cloud's component, export its outputs."""

from __future__ import annotations

import importlib
from typing import Protocol, cast

from stacks.spec import Cloud, StackOutputs, StackSpec

# Imported only when chosen: a stack for one cloud never imports another cloud's SDK.
CLOUD_PACKAGES: dict[Cloud, str] = {
    Cloud.AWS: "stacks.aws",
    Cloud.GCP: "stacks.gcp",
    Cloud.AZURE: "stacks.azure",
}


class CloudPackage(Protocol):
    def deploy(self, spec: StackSpec) -> StackOutputs: ...


def deploy(spec: StackSpec) -> StackOutputs:
    """Build the component of `spec.cloud` and return its outputs."""
    package = cast(CloudPackage, importlib.import_module(CLOUD_PACKAGES[spec.cloud]))
    return package.deploy(spec)


def main() -> None:
    deploy(StackSpec.from_pulumi_config()).export()
