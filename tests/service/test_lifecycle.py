"""Configuration errors, production refusal, dev-mode binding and graceful shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from service.config import ConfigError, load_settings
from tests.servers import free_port, tcp_open, wait_until
from tests.service.harness import running_service

FORESIGHT = [sys.executable, "-c", "from service.cli import main; main()"]


def test_production_refuses_without_tls_and_key_source() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
    result = subprocess.run([*FORESIGHT, "serve", "--resp-port", "0", "--http-port", "0"], capture_output=True,
                            text=True, timeout=30, env=env)
    assert result.returncode == 2
    assert "TLS is not configured: set FORESIGHT_TLS_CERT_FILE" in result.stderr
    assert "no key source: set FORESIGHT_VAULT_ADDR or FORESIGHT_TENANTS_FILE" in result.stderr


def test_settings_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"resp_port \(FORESIGHT_RESP_PORT\)"):
        load_settings(resp_port=70000)
    with pytest.raises(ConfigError, match="eviction_policy 'mru' is unknown"):
        load_settings(eviction_policy="mru")
    with pytest.raises(ConfigError, match="dev mode binds loopback only"):
        load_settings(dev=True, bind="0.0.0.0")
    with pytest.raises(ConfigError, match="set together"):
        load_settings(tls_cert_file=tmp_path / "c.pem")
    bad = tmp_path / "bad.toml"
    bad.write_text("resp_port = [")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "foresight.toml"
    config.write_text('resp_port = 7001\nhttp_port = 7002\neviction_policy = "lru"\n')
    monkeypatch.setenv("FORESIGHT_HTTP_PORT", "7003")
    settings = load_settings(config, resp_port=7004)
    assert (settings.resp_port, settings.http_port, settings.eviction_policy) == (7004, 7003, "lru")


def test_unknown_setting_in_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "foresight.toml"
    config.write_text("resp_prot = 1\n")
    with pytest.raises(ConfigError, match="resp_prot"):
        load_settings(config)


def test_serve_dev_binds_loopback_and_stops_on_sigterm() -> None:
    resp_port, http_port = free_port(), free_port()
    proc = subprocess.Popen([*FORESIGHT, "serve", "--dev", "--resp-port", str(resp_port), "--http-port",
                             str(http_port)], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: tcp_open(resp_port), "foresight serve --dev")
        assert redis.Redis(port=resp_port).ping() is True
        proc.terminate()
        assert proc.wait(15) == 0
        assert '"msg": "stopped"' in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()


def test_drain_answers_in_flight_pipeline_before_closing(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "slow").write_bytes(b"loaded")
    with running_service(dev=True, prefetcher="none", origin=str(origin), origin_latency_ms=500) as svc:
        client = redis.Redis(port=svc.resp_port)
        result: list[object] = []
        pipe = client.pipeline(transaction=False)
        pipe.get("slow").set("after", "1").get("after")
        worker = threading.Thread(target=lambda: result.extend(pipe.execute()))
        worker.start()
        time.sleep(0.15)  # the read-through is in flight
        idle = redis.Redis(port=svc.resp_port)
        idle.ping()
        svc.call(svc.service.stop())
        worker.join(5)
        assert result == [b"loaded", True, b"1"]
        with pytest.raises(redis.ConnectionError):
            idle.ping()
