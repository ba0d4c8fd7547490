"""Fixtures that run the real Pulumi program under mocks; the baseline run uses only the required config."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from tests.stacks.mockrun import REQUIRED_CONFIG, MockRun, run_program

RunStack = Callable[..., MockRun]
STACKS_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pulumi_aws warns about its own deprecated resources when its modules load; not ours to fix."""
    for item in items:
        if item.path.is_relative_to(STACKS_TESTS):
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws.*"))


def _run(
    overrides: Mapping[str, str | None] | None = None, secret_keys: tuple[str, ...] = (), **kwargs: object
) -> MockRun:
    config = dict(REQUIRED_CONFIG)
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
