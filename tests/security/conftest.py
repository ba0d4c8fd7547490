"""Fixtures for the security suite: a prepared OpenBao (key store, transit, PKI), tokens with the real
policies, local TLS material, and an authenticating moto server for SigV4 checks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest

from service.security.local_ca import CertificateAuthority
from service.security.vault_keys import ONBOARDING_POLICY, SERVICE_POLICY, VaultKeyAdmin
from tests import servers
from tests.security.helpers import token_client
from tests.servers import OpenBao

TRANSIT_KEY = "foresight-test"


@pytest.fixture(scope="session")
def bao_root(openbao: OpenBao) -> hvac.Client:
    """Root client on an OpenBao with the key store, transit and PKI set up the way `foresight local up` will."""
    client = openbao.client()
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if "transit/" not in mounts:  # another suite on this OpenBao may have mounted transit but not pki
        client.sys.enable_secrets_engine("transit", path="transit")
    if "pki/" not in mounts:
        client.sys.enable_secrets_engine("pki", path="pki", config={"max_lease_ttl": "87600h"})
        client.secrets.pki.generate_root("internal", "Foresight Test Root", mount_point="pki")
        client.secrets.pki.create_or_update_role(
            "foresight-server",
            {
                "allowed_domains": "localhost",
                "allow_localhost": True,
                "allow_bare_domains": True,
                "allow_ip_sans": True,
                "max_ttl": "72h",
                "key_type": "ec",
                "key_bits": 256,
            },
            mount_point="pki",
        )
    VaultKeyAdmin(client).setup(transit=("transit", TRANSIT_KEY), pki=("pki", "foresight-server"))
    client.secrets.transit.create_key(TRANSIT_KEY, mount_point="transit")
    return client


@pytest.fixture(scope="session")
def onboarding_client(openbao: OpenBao, bao_root: hvac.Client) -> hvac.Client:
    """The writer as operators run it: the onboarding policy, not root."""
    return token_client(openbao.addr, bao_root, ONBOARDING_POLICY)


@pytest.fixture(scope="session")
def service_client(openbao: OpenBao, bao_root: hvac.Client) -> hvac.Client:
    """The running service's client: read-only service policy."""
    return token_client(openbao.addr, bao_root, SERVICE_POLICY)


@pytest.fixture(scope="session")
def key_admin(onboarding_client: hvac.Client) -> VaultKeyAdmin:
    return VaultKeyAdmin(onboarding_client)


@dataclass(frozen=True)
class TlsFiles:
    ca: CertificateAuthority
    ca_file: Path
    cert_file: Path
    key_file: Path

    def rotate(self, common_name: str = "localhost") -> None:
        self.ca.issue(common_name, dns_names=["localhost"], ip_addresses=["127.0.0.1"]).write(
            self.cert_file, self.key_file
        )


@pytest.fixture(scope="session")
def local_ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture
def tls_files(local_ca: CertificateAuthority, tmp_path: Path) -> TlsFiles:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(local_ca.cert_pem)
    files = TlsFiles(local_ca, ca_file, tmp_path / "server.crt", tmp_path / "server.key")
    files.rotate()
    return files


@dataclass(frozen=True)
class AuthMoto:
    endpoint: str


@pytest.fixture(scope="session")
def auth_moto() -> Iterator[AuthMoto]:
    """A moto server that checks SigV4 signatures (after the first two unauthenticated setup calls)."""
    port = servers.free_port()
    argv = [str(servers.BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with servers.process(argv, "moto-auth", env={"INITIAL_NO_AUTH_ACTION_COUNT": "2"}):
        endpoint = f"http://127.0.0.1:{port}"
        servers.wait_until(lambda: servers.tcp_open(port), "moto (auth)")
        yield AuthMoto(endpoint)
