"""Configuration errors, production refusal, dev-mode binding and graceful shutdown."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from service.config import ConfigError, load_settings
from service.state import DEV_TENANT
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
        wait_until(lambda: svc.state.tenants.get(DEV_TENANT).in_flight(b"slow"), "the read-through of 'slow'")
        idle = redis.Redis(port=svc.resp_port)
        idle.ping()
        svc.call(svc.service.stop())
        worker.join(5)
        assert result == [b"loaded", True, b"1"]
        with pytest.raises(redis.ConnectionError):
            idle.ping()


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`foresight serve ARGS` that is expected to refuse to start, with only the given FORESIGHT_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
    return subprocess.run([*FORESIGHT, "serve", *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})})


@pytest.mark.parametrize(("content", "name", "message"), [
    (None, "conf.d", "is a directory"),
    (bytes(range(128, 256)), "bin.toml", "is not UTF-8 text"),
    (b"[1, 2]", "list.json", "must hold a table (JSON: an object) of settings, not a list"),
    (b"resp_port: 7000\n", "settings.yaml", "YAML is not supported; use .toml or .json"),
])
def test_a_config_that_is_no_settings_file_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes | None, name: str, message: str
) -> None:
    config = tmp_path / name
    if content is None:
        config.mkdir()
    else:
        config.write_bytes(content)
    result = _serve("--dev", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == f"error: config file {config}{':' if name.endswith('.yaml') else ''} {message}\n"
    assert result.stdout == ""


def test_list_settings_take_comma_separated_variables_and_a_mapping_says_it_wants_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"FORESIGHT_TLS_ALT_NAMES": "cache.example, 10.0.0.7", "FORESIGHT_KMS_PREVIOUS_KEY_IDS": '["old"]'}
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        settings = load_settings()
    assert settings.tls_alt_names == ["cache.example", "10.0.0.7"]
    assert settings.kms_previous_key_ids == ["old"]
    resp_port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")}
    proc = subprocess.Popen([*FORESIGHT, "serve", "--dev", "--resp-port", str(resp_port), "--http-port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**base, **env})
    try:
        wait_until(lambda: tcp_open(resp_port) or proc.poll() is not None, "foresight serve --dev")
        assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    refused = _serve("--dev", env={"FORESIGHT_PREFETCH_AB_ARMS": "stride"})
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert ("prefetch_ab_arms (FORESIGHT_PREFETCH_AB_ARMS): must be a JSON object of prefetcher weights, e.g. "
            '{"learned": 1, "stride": 1}') in refused.stderr


def test_vault_login_names_the_token_file_setting_and_unknown_variables_are_warned(tmp_path: Path) -> None:
    result = _serve(env={"FORESIGHT_TLS_CERT_FILE": str(tmp_path / "c.pem"), "FORESIGHT_TLS_KEY_FILE":
                         str(tmp_path / "k.pem"), "FORESIGHT_VAULT_ADDR": "http://127.0.0.1:1",
                         "FORESIGHT_VAULT_TOKEN": "s.x", "FORESIGHT_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.endswith("error: cannot log in to Vault at http://127.0.0.1:1 (FORESIGHT_VAULT_*): Vault "
                                  "login needs the token: set FORESIGHT_VAULT_TOKEN_FILE to a file holding it\n")
    warnings = [json.loads(line)["msg"] for line in result.stderr.splitlines() if line.startswith("{")]
    # FORESIGHT_STATE_DIR is the onboarding commands': no warning for it
    assert warnings == ["FORESIGHT_VAULT_TOKEN is not a setting of foresight serve and is ignored; did you mean "
                        "FORESIGHT_VAULT_TOKEN_FILE?"]


def test_version_comes_from_the_installed_package() -> None:
    result = subprocess.run([*FORESIGHT, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout == f"foresight {importlib.metadata.version('foresight')}\n"
