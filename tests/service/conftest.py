"""Fixtures that run the real service: dev mode, and production mode with TLS and a tenants file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.security.apikeys import IssuedKey
from tests import servers
from tests.service.harness import RunningService, running_service, write_tenants_file
from tests.tlsutil import PKI, make_pki


@pytest.fixture
def dev_service() -> Iterator[RunningService]:
    with running_service(dev=True) as svc:
        yield svc


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class ProductionService:
    svc: RunningService
    keys: dict[str, IssuedKey]
    pki: PKI
    tenants_file: Path


@pytest.fixture
def prod_service(tmp_path: Path, pki: PKI) -> Iterator[ProductionService]:
    """Two tenants (acme, globex) behind TLS and API keys."""
    tenants_file = tmp_path / "tenants.json"
    keys = write_tenants_file(tenants_file, {"acme": {}, "globex": {}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants_file,
                         auth_cache_ttl_s=0.5) as svc:
        yield ProductionService(svc, keys, pki, tenants_file)


@pytest.fixture(scope="module")
def reference() -> Iterator[int]:
    """Debian's redis-server (7.0) with one database, so SELECT's range matches Foresight's: the port."""
    port = servers.free_port()
    argv = [servers.find_binary("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--databases", "1"]
    with servers.process(argv, "redis-reference"):
        servers.wait_until(lambda: servers.tcp_open(port), "reference redis-server")
        yield port


@pytest.fixture(scope="module")
def foresight() -> Iterator[int]:
    """A dev-mode Foresight beside it: the port."""
    with running_service(dev=True) as svc:
        yield svc.resp_port
