"""Start and stop around the warm snapshot: nothing lost when a start fails or a stop races late writes, a KMS
that cannot open the snapshot starts the service cold, start-up failures are one line, a signal during start-up
stops it, and a background task that ends while serving says so."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import hvac
import pytest
import redis

from service import snapshot
from service.cache import TenantRegistry
from service.config import ConfigError, Settings, load_settings
from service.security.audit import AuditLog
from service.security.envelope import EnvelopeCipher
from service.security.kms.base import KmsUnavailable, WrappedKey
from service.security.kms.local import LocalKms
from service.security.kms.vault_transit import VaultTransitKms
from service.server import Service, _setting_holding
from service.state import DEV_TENANT
from service.tenancy import TenantSpec
from tests.security.helpers import token_client, unique
from tests.servers import OpenBao, wait_until
from tests.service.harness import running_service, write_tenants_file
from tests.tlsutil import PKI

FORESIGHT = [sys.executable, "-c", "from service.cli import main; main()"]


def _warm(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """A dev service keeping its snapshot in tmp_path/data (each its own audit log: a failed start keeps its open)."""
    return dict(dev=True, prefetcher="none", data_dir=tmp_path / "data", kms_provider="local",
                kms_key_id=str(tmp_path / "keyring.json"), audit_log=tmp_path / unique("audit"), **settings)


def _saved(tmp_path: Path) -> dict[bytes, bytes]:
    """The dev tenant's entries in the snapshot on disk."""
    cipher = EnvelopeCipher(LocalKms.from_file(tmp_path / "keyring.json"))
    data = cipher.decrypt((tmp_path / "data" / snapshot.FILENAME).read_bytes(), snapshot.AAD)
    return {key: value for key, value, _deadline in snapshot.decode(data)[DEV_TENANT].entries}


def test_a_start_that_fails_after_the_restore_keeps_the_snapshot_for_the_next(tmp_path: Path) -> None:
    with running_service(**_warm(tmp_path)) as svc:
        redis.Redis(port=svc.resp_port).set("balance", "100")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken, pytest.raises(ConfigError, match="cannot listen"), running_service(
            **_warm(tmp_path, http_port=taken.getsockname()[1])):
        pass
    assert sorted(p.name for p in (tmp_path / "data").iterdir() if "snapshot" in p.name) == [snapshot.FILENAME]
    with running_service(**_warm(tmp_path)) as svc:
        assert redis.Redis(port=svc.resp_port).get("balance") == b"100"
        assert not (tmp_path / "data" / snapshot.FILENAME).exists()  # it serves: the file is gone
        assert not (tmp_path / "data" / snapshot.RESTORING).exists()


def test_equal_ports_and_endless_durations_are_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"FORESIGHT_RESP_PORT, FORESIGHT_HTTP_PORT: resp_port and http_port are "
                                          r"both 7000"):
        load_settings(resp_port=7000, http_port=7000)
    assert load_settings(resp_port=0, http_port=0).resp_port == 0  # two free ports, picked apart
    for name in ("shutdown_grace_s", "auth_cache_ttl_s", "active_expire_interval_s", "tls_reload_interval_s"):
        for value in ("inf", "nan"):
            monkeypatch.setenv(f"FORESIGHT_{name.upper()}", value)
            with pytest.raises(ConfigError, match=rf"{name} \(FORESIGHT_{name.upper()}\): .*finite"):
                load_settings()
        monkeypatch.delenv(f"FORESIGHT_{name.upper()}")
    with pytest.raises(ConfigError, match=r"FORESIGHT_EVICTION_POLICY: eviction_policy 'bogus' is unknown"):
        load_settings(eviction_policy="bogus")


def test_the_stop_snapshot_holds_every_write_before_stop_while_late_loads_keep_landing(tmp_path: Path) -> None:
    keys = 200_000
    with running_service(**_warm(tmp_path, shutdown_grace_s=0)) as svc:
        client = redis.Redis(port=svc.resp_port)
        for start in range(0, keys, 10_000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, start + 10_000):
                pipe.set(f"key{i}", f"v{i}")
            pipe.execute()
        store = svc.state.tenants.get(DEV_TENANT).store
        landing = threading.Event()
        done = threading.Event()

        async def late_loads() -> None:  # what read-throughs and prefetches finishing during stop() do
            i = 0
            while not done.is_set():
                for _ in range(100):
                    store.set(b"late%d" % i, b"x")
                    i += 1
                landing.set()
                await asyncio.sleep(0.001)  # a loop that never waits would starve stop()'s threads of the GIL

        writer = asyncio.run_coroutine_threadsafe(late_loads(), svc.loop)
        try:
            landing.wait(10)
            svc.call(svc.service.stop())
        finally:  # a writer left running would hold the loop (and the GIL) through every later test
            done.set()
            writer.result(10)
    saved = _saved(tmp_path)
    assert all(saved.get(b"key%d" % i) == b"v%d" % i for i in range(keys))


@pytest.fixture
def transit_key(openbao: OpenBao) -> str:
    root = openbao.client()
    if "transit/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("transit", path="transit")
    name = unique("snapshot")
    root.secrets.transit.create_key(name, mount_point="transit")
    return name


def test_a_snapshot_the_kms_cannot_open_now_is_kept_and_the_start_is_cold(
        tmp_path: Path, openbao: OpenBao, transit_key: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "KMS_RETRY_DELAYS_S", (0.01,))  # unreachable stays so: one quick retry is enough
    root = openbao.client()
    tenants = TenantRegistry(Settings())
    tenants.upsert(TenantSpec(name="acme"))
    tenants.get("acme").store.set(b"balance", b"100", 0)  # type: ignore[union-attr]
    snapshot.save(tenants, tmp_path, EnvelopeCipher(VaultTransitKms(root, transit_key)))
    denied = EnvelopeCipher(VaultTransitKms(token_client(openbao.addr, root, "default"), transit_key))
    unreachable = EnvelopeCipher(VaultTransitKms(hvac.Client(url="http://127.0.0.1:9", timeout=1), transit_key))
    for cipher in (denied, unreachable):
        cold = TenantRegistry(Settings())
        cold.upsert(TenantSpec(name="acme"))
        with caplog.at_level(logging.ERROR, logger="service.snapshot"):
            assert snapshot.restore(cold, tmp_path, cipher) == 0
        assert "not restored; starting cold" in caplog.text and "moved aside at the next stop" in caplog.text
        assert sorted(p.name for p in tmp_path.iterdir()) == [snapshot.FILENAME]  # not deleted, not rejected
    warm = TenantRegistry(Settings())
    warm.upsert(TenantSpec(name="acme"))
    assert snapshot.restore(warm, tmp_path, EnvelopeCipher(VaultTransitKms(root, transit_key))) == 1


def test_a_kept_snapshot_is_moved_aside_also_when_the_run_that_served_cannot_save_its_own(
        tmp_path: Path, openbao: OpenBao, transit_key: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    transit = EnvelopeCipher(VaultTransitKms(openbao.client(), transit_key))
    before = TenantRegistry(Settings())
    before.upsert(TenantSpec(name=DEV_TENANT))
    before.get(DEV_TENANT).store.set(b"balance", b"100", 0)  # type: ignore[union-attr]
    snapshot.save(before, tmp_path / "data", transit)
    with running_service(**_warm(tmp_path)) as svc:  # a local keyring now: the transit snapshot is kept, start cold
        client = redis.Redis(port=svc.resp_port)
        assert client.get("balance") is None
        client.delete("balance")  # what this run did, and the kept snapshot does not know

        def kms_down(*_args: object) -> WrappedKey:  # so this run's own snapshot cannot be written
            raise KmsUnavailable("Vault transit unreachable: ConnectionError")

        monkeypatch.setattr(svc.service.security.cipher.kms, "wrap", kms_down)
        with caplog.at_level(logging.WARNING, logger="service"):
            svc.call(svc.service.stop())
    assert "snapshot not written" in caplog.text and "values are older than this run's" in caplog.text
    kept = [p.name for p in (tmp_path / "data").iterdir()]
    assert len(kept) == 1 and kept[0].startswith(snapshot.FILENAME + ".unrestored-")
    later = TenantRegistry(Settings())
    later.upsert(TenantSpec(name=DEV_TENANT))
    assert snapshot.restore(later, tmp_path / "data", transit) == 0  # the deleted balance does not come back by itself


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
    return subprocess.run([*FORESIGHT, "serve", "--resp-port", "0", "--http-port", "0"], capture_output=True,
                          text=True, timeout=60, env={**base, **env})


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    return errors[0]


def test_start_up_failures_are_one_line_naming_the_setting(tmp_path: Path, openbao: OpenBao, pki: PKI) -> None:
    keyring = _one_error_line(_serve({"FORESIGHT_DEV": "true", "FORESIGHT_KMS_PROVIDER": "local",
                                      "FORESIGHT_KMS_KEY_ID": str(tmp_path / "missing" / "keyring.json")}))
    assert "No such file or directory (FORESIGHT_KMS_KEY_ID)" in keyring
    with AuditLog(tmp_path / "audit.log"):  # another writer holds the log
        audit = _one_error_line(_serve({"FORESIGHT_DEV": "true", "FORESIGHT_AUDIT_LOG": str(tmp_path / "audit.log")}))
    assert "FORESIGHT_AUDIT_LOG" in audit
    token = tmp_path / "token"
    token.write_text(token_client(openbao.addr, openbao.client(), "default").token)  # may not read the tenants
    tenants = _one_error_line(_serve({"FORESIGHT_TLS_CERT_FILE": str(pki.cert), "FORESIGHT_TLS_KEY_FILE": str(pki.key),
                                      "FORESIGHT_VAULT_ADDR": openbao.addr, "FORESIGHT_VAULT_TOKEN_FILE": str(token),
                                      "FORESIGHT_PREFETCHER": "none"}))
    assert "cannot read the tenants (FORESIGHT_VAULT_ADDR, FORESIGHT_VAULT_KV_MOUNT)" in tenants


def test_sigterm_during_start_up_stops_without_serving(tmp_path: Path, pki: PKI) -> None:
    tenants_file = tmp_path / "tenants.json"
    write_tenants_file(tenants_file, {"acme": {}})
    content = tenants_file.read_bytes()
    service = Service(Settings(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants_file,
                               prefetcher="none", resp_port=0, http_port=0))
    tenants_file.unlink()
    os.mkfifo(tenants_file)  # the start's tenant listing now waits for a writer: a key source that hangs
    returned = threading.Event()

    def signal_once_listing() -> None:
        while True:
            try:
                fd = os.open(tenants_file, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as err:  # ENXIO: nobody reads it yet
                if err.errno != errno.ENXIO:
                    raise
        os.kill(os.getpid(), signal.SIGTERM)
        returned.wait(20)  # the old behaviour: start-up goes on once the listing answers
        os.write(fd, content)
        os.close(fd)

    helper = threading.Thread(target=signal_once_listing)
    loop = asyncio.new_event_loop()
    try:
        helper.start()
        loop.run_until_complete(service.run_until_signalled())
        returned.set()
        helper.join(30)
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    assert service.endpoints is None and not service.state.ready  # never listened, never reported ready


def test_a_background_task_that_ends_while_serving_is_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="service.server"), running_service(dev=True, prefetcher="none") as svc:
        http = svc.service._http
        assert http is not None
        svc.loop.call_soon_threadsafe(setattr, http, "should_exit", True)  # uvicorn ends on its own
        wait_until(lambda: "background task 'HTTP listener' ended while serving" in caplog.text, "the error log")


def test_serve_raises_its_open_files_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, hard, 256)
    assert lowered < hard, "the test needs a hard limit above 256"
    base = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
    proc = subprocess.Popen([*FORESIGHT, "serve", "--dev", "--resp-port", "0", "--http-port", "0"], env=base,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard)))
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving RESP" in line or "open files limit" in line:
                break
        assert json.loads(line)["msg"] == f"open files limit: {hard}"
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_file_error_names_the_setting_whose_directory_holds_the_file_not_a_sibling(tmp_path: Path) -> None:
    settings = Settings(dev=True, data_dir=tmp_path / "fs")
    assert _setting_holding(settings, str(tmp_path / "fs" / "snapshot.fse")) == "FORESIGHT_DATA_DIR"
    assert _setting_holding(settings, str(tmp_path / "fs-old" / "snapshot.fse")) is None
    keyring = Settings(dev=True, kms_provider="local", kms_key_id=str(tmp_path / "keyring.json"))
    assert _setting_holding(keyring, str(tmp_path / "keyring.json.tmp")) == "FORESIGHT_KMS_KEY_ID"
