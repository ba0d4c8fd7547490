"""Vault transit failures land in the KMS error class callers act on (unavailable, denied, retired, error), so
`foresight audit verify` never calls an intact archive "tampered" (exit 1) because of Vault."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hvac
import pytest

from service.security.audit import AuditLog
from service.security.envelope import EnvelopeCipher
from service.security.kms.base import KmsDenied, KmsError, KmsKeyRetired, KmsUnavailable
from service.security.kms.vault_transit import VaultTransitKms
from tests.security.helpers import unique
from tests.servers import OpenBao


@dataclass
class TransitFault:
    """What the stand-in answers for transit encrypt/decrypt/rewrap calls: None forwards them to OpenBao."""

    status: int | None = None
    addr: str = ""
    calls: list[str] = field(default_factory=list)


@pytest.fixture
def faulty_vault(openbao: OpenBao) -> Iterator[TransitFault]:
    """An HTTP server in front of the real OpenBao that forwards everything, except that transit calls get the
    status the test sets.

    A stand-in only for those statuses: a real OpenBao cannot be made to answer 429 (rate limit), 504 (a proxy's
    timeout), 401 or 501 on demand, and those are exactly the replies a load balancer or an overloaded Vault
    gives. Everything else (logins, token lookups, the transit calls when no fault is set) is OpenBao's own answer.
    """
    fault = TransitFault()

    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            if fault.status is not None and "/v1/transit/" in self.path:
                fault.calls.append(self.path)
                data, code = json.dumps({"errors": ["injected"]}).encode(), fault.status
            else:
                headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-vault")}
                request = urllib.request.Request(openbao.addr + self.path, data=body, method=self.command,
                                                 headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=10) as reply:
                        data, code = reply.read(), reply.status
                except urllib.error.HTTPError as err:
                    data, code = err.read(), err.code
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_LIST = _forward

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fault.addr = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fault
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def transit_key(bao_root: hvac.Client) -> str:
    """A transit key of this test's own, which it may rotate, retire or delete."""
    name = unique("kek")
    bao_root.secrets.transit.create_key(name, mount_point="transit")
    bao_root.secrets.transit.update_key_configuration(name, deletion_allowed=True, mount_point="transit")
    return name


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, KmsUnavailable),
        (500, KmsUnavailable),
        (501, KmsUnavailable),
        (502, KmsUnavailable),
        (503, KmsUnavailable),
        (504, KmsUnavailable),
        (401, KmsDenied),
        (403, KmsDenied),
        (408, KmsUnavailable),  # hvac has no class for it (UnexpectedError, no status kept): a proxy's
    ],
)
def test_each_vault_status_lands_in_its_kms_error_class(
    faulty_vault: TransitFault, openbao: OpenBao, bao_root: hvac.Client, transit_key: str, status: int,
    error: type[KmsError]
) -> None:
    kms = VaultTransitKms(hvac.Client(url=faulty_vault.addr, token=openbao.token, timeout=5), transit_key)
    wrapped = kms.wrap(b"k" * 32)
    faulty_vault.status = status
    for call in (lambda: kms.wrap(b"k" * 32), lambda: kms.unwrap(wrapped), lambda: kms.rewrap(wrapped)):
        with pytest.raises(KmsError) as info:
            call()
        assert type(info.value) is error, info.value
    assert len(faulty_vault.calls) == 3
    envelope = EnvelopeCipher(VaultTransitKms(bao_root, transit_key)).encrypt(b"data", b"aad")
    with pytest.raises(error):  # and the envelope passes it on: never TamperedEnvelope
        EnvelopeCipher(kms).decrypt(envelope, b"aad")


def test_a_revoked_token_is_denied_by_the_real_openbao(openbao: OpenBao, bao_root: hvac.Client) -> None:
    token = bao_root.auth.token.create(policies=["root"], ttl="1h")["auth"]["client_token"]
    kms = VaultTransitKms(hvac.Client(url=openbao.addr, token=token, timeout=5), "foresight-test")
    wrapped = kms.wrap(b"k" * 32)
    bao_root.auth.token.revoke(token)
    with pytest.raises(KmsDenied, match="expired or was revoked"):
        kms.unwrap(wrapped)


def test_a_retired_key_version_is_its_own_error_naming_the_version_and_the_rewrap(
    bao_root: hvac.Client, transit_key: str
) -> None:
    """OpenBao answers 400 "ciphertext or signature version is disallowed by policy (too old)"."""
    kms = VaultTransitKms(bao_root, transit_key)
    cipher = EnvelopeCipher(kms)
    envelope = cipher.encrypt(b"checkpoint", b"ckpt")
    bao_root.secrets.transit.rotate_key(transit_key, mount_point="transit")
    bao_root.secrets.transit.update_key_configuration(transit_key, min_decryption_version=2, mount_point="transit")
    expected = (rf"transit key transit/{transit_key} version 1 is retired .*lower min_decryption_version to 1, "
                r"rewrap with `foresight kms rewrap`")
    with pytest.raises(KmsKeyRetired, match=expected):
        cipher.decrypt(envelope, b"ckpt")
    with pytest.raises(KmsKeyRetired, match=expected):  # transit's rewrap must decrypt too
        cipher.rewrap(envelope)
    bao_root.secrets.transit.update_key_configuration(transit_key, min_decryption_version=1, mount_point="transit")
    rewrapped = cipher.rewrap(envelope)
    bao_root.secrets.transit.update_key_configuration(transit_key, min_decryption_version=2, mount_point="transit")
    assert cipher.decrypt(rewrapped, b"ckpt") == b"checkpoint"


def _archive(tmp_path: Path, bao_root: hvac.Client, key: str) -> list[Path]:
    """An audit log with one rotation archived under transit `key`: [archive, live file]."""
    log = AuditLog(tmp_path / "audit.log", archive=EnvelopeCipher(VaultTransitKms(bao_root, key)))
    log.record("tenant.create", actor="admin:ops", tenant="acme")
    archive = log.rotate()
    log.close()
    assert archive.suffix == ".fse"
    return [archive, tmp_path / "audit.log"]


def _verify(files: list[Path], addr: str, token: str, key: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORESIGHT_", "VAULT_", "BAO_"))}
    env |= {"FORESIGHT_KMS_PROVIDER": "vault-transit", "FORESIGHT_KMS_KEY_ID": key, "FORESIGHT_VAULT_ADDR": addr,
            "FORESIGHT_VAULT_TOKEN_FILE": str(token_file)}
    return subprocess.run([sys.executable, "-c", "from service.cli import main; main()", "audit", "verify",
                           *map(str, files)], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("status", [429, 504])
def test_audit_verify_exits_cannot_verify_not_tampered_when_vault_is_overloaded(
    tmp_path: Path, faulty_vault: TransitFault, openbao: OpenBao, bao_root: hvac.Client, transit_key: str,
    status: int
) -> None:
    files = _archive(tmp_path, bao_root, transit_key)
    faulty_vault.status = status
    result = _verify(files, faulty_vault.addr, openbao.token, transit_key, tmp_path)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: cannot decrypt the archives: Vault transit unavailable"), result.stderr
    assert "tampered" not in result.stderr
    faulty_vault.status = None
    assert _verify(files, faulty_vault.addr, openbao.token, transit_key, tmp_path).returncode == 0


def test_audit_verify_with_the_transit_key_deleted_is_an_error_not_tampering(
    tmp_path: Path, openbao: OpenBao, bao_root: hvac.Client, transit_key: str
) -> None:
    files = _archive(tmp_path, bao_root, transit_key)
    bao_root.secrets.transit.delete_key(transit_key, mount_point="transit")
    result = _verify(files, openbao.addr, openbao.token, transit_key, tmp_path)
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"error: cannot decrypt the archives: transit key transit/{transit_key} does not exist\n"


def test_audit_verify_of_an_archive_under_a_retired_version_says_so(
    tmp_path: Path, openbao: OpenBao, bao_root: hvac.Client, transit_key: str
) -> None:
    files = _archive(tmp_path, bao_root, transit_key)
    bao_root.secrets.transit.rotate_key(transit_key, mount_point="transit")
    bao_root.secrets.transit.update_key_configuration(transit_key, min_decryption_version=2, mount_point="transit")
    result = _verify(files, openbao.addr, openbao.token, transit_key, tmp_path)
    assert result.returncode == 3, result.stderr
    assert "version 1 is retired" in result.stderr and "foresight kms rewrap" in result.stderr
    assert "tampered" not in result.stderr
