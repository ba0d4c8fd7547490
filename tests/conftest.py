"""Session-wide real servers; each starts only when a test asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.RedisServer]:
    with servers.redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[servers.MotoServer]:
    with servers.moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def openbao() -> Iterator[servers.OpenBao]:
    with servers.openbao_dev_server() as server:
        yield server
