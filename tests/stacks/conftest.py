"""Fixtures that run the real Pulumi program under mocks; the baseline run uses only the required config."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.security.metadata_fakes import JwtIssuer
from tests.stacks.iam_moto import IamMoto, iam_enforcing_moto
from tests.stacks.mockrun import AZURE_REQUIRED_CONFIG, GCP_REQUIRED_CONFIG, REQUIRED_CONFIG, MockRun, run_program

RunStack = Callable[..., MockRun]
GCP_STACK = "gcp-test"
AZURE_STACK = "azure-test"
STACKS_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The cloud providers' SDKs warn about their own deprecated resources when their modules load; not ours."""
    for item in items:
        if item.path.is_relative_to(STACKS_TESTS):
            for provider in ("pulumi_aws", "pulumi_gcp", "pulumi_azure_native"):
                item.add_marker(pytest.mark.filterwarnings(f"ignore::DeprecationWarning:{provider}.*"))


def _run(
    overrides: Mapping[str, str | None] | None = None,
    secret_keys: tuple[str, ...] = (),
    base: Mapping[str, str] = REQUIRED_CONFIG,
    **kwargs: object,
) -> MockRun:
    config = dict(base)
    for key, value in (overrides or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return run_program(config, secret_keys, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def run_stack() -> RunStack:
    """`run_stack({"foresight:spot": "true"})`: the required config plus overrides (None removes a key)."""
    return _run


@pytest.fixture(scope="session")
def baseline() -> MockRun:
    """The program run with only the required config (the acceptance baseline)."""
    return _run()


def _run_gcp(
    overrides: Mapping[str, str | None] | None = None, secret_keys: tuple[str, ...] = (), **kwargs: object
) -> MockRun:
    return _run(overrides, secret_keys, base=GCP_REQUIRED_CONFIG, stack=GCP_STACK, **kwargs)


@pytest.fixture(scope="session")
def run_gcp_stack() -> RunStack:
    """`run_gcp_stack({...})`: the Google Cloud stack `gcp-test`, its required config plus overrides."""
    return _run_gcp


@pytest.fixture(scope="session")
def gcp_baseline() -> MockRun:
    """The Google Cloud program run with only the required config (and the provider's project)."""
    return _run_gcp()


def _run_azure(
    overrides: Mapping[str, str | None] | None = None, secret_keys: tuple[str, ...] = (), **kwargs: object
) -> MockRun:
    return _run(overrides, secret_keys, base=AZURE_REQUIRED_CONFIG, stack=AZURE_STACK, **kwargs)


@pytest.fixture(scope="session")
def run_azure_stack() -> RunStack:
    """`run_azure_stack({...})`: the Azure stack `azure-test`, its required config plus overrides."""
    return _run_azure


@pytest.fixture(scope="session")
def azure_baseline() -> MockRun:
    """The Azure program run with only the required config."""
    return _run_azure()


@pytest.fixture(scope="session")
def issuer() -> JwtIssuer:
    """A test key standing in for a cloud's token signer (Google's, Entra ID's) in the boot login tests."""
    return JwtIssuer()


@pytest.fixture(scope="session")
def iam_moto() -> Iterator[IamMoto]:
    """A moto server that evaluates IAM policies on every call, for the stacks' S3 grants."""
    with iam_enforcing_moto() as moto:
        yield moto
