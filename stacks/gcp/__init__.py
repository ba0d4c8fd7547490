"""Google Cloud: not implemented yet. It will mirror stacks/aws/ file for file (component, network, identity,
kms, compute, vault) and must not import the AWS or Azure SDKs."""

from __future__ import annotations

from typing import NoReturn

from stacks.spec import ConfigError, StackSpec


def deploy(spec: StackSpec) -> NoReturn:
    raise ConfigError.one(
        "foresight:cloud",
        f"not implemented yet: foresight:cloud={spec.cloud} lands with the Google Cloud stack issue "
        "that follows issue 6; use foresight:cloud=aws for now",
    )
