"""Session-wide real servers; each starts only when a test asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers
from tests.object_stores import AzureStore, GcsStore, ObjectStore, S3Store, uncached


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


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[servers.Azurite]:
    from tests.images.tools import require_tool

    with servers.azurite(require_tool("azurite-blob")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[servers.GcsEmulator]:
    with servers.gcs_emulator() as server:
        yield server


@pytest.fixture(params=["s3", "gs", "az"])
def object_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    """Each cloud's object store on its emulator, with the environment that points the product's fsspec at it."""
    store: ObjectStore
    if request.param == "s3":
        store = S3Store(request.getfixturevalue("moto_server").endpoint)
    elif request.param == "gs":
        store = GcsStore(request.getfixturevalue("gcs_server").endpoint)
    else:
        server = request.getfixturevalue("azurite_server")
        store = AzureStore(server.connection_string, server.account)
    for name, value in store.environment.items():
        monkeypatch.setenv(name, value)
    with uncached(store.scheme):
        yield store
