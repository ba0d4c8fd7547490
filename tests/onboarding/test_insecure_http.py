"""The CLI never sends the Vault token or the admin token over plain http:// to a host that is not loopback,
unless told to as the service is told (FORESIGHT_VAULT_ALLOW_INSECURE_HTTP, and its admin API's twin)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import Result

from onboarding.context import resolve
from onboarding.errors import EXIT_USAGE, InvalidInput
from tests.onboarding.conftest import invoke
from tests.onboarding.test_metrics_token_cli import rotate


@pytest.mark.parametrize("run", [lambda: invoke("tenants", "list", "--json"),
                                 lambda: rotate("--stack", "prod", "--json")], ids=["tenants", "metrics-token"])
def test_a_vault_token_is_never_sent_over_http_to_another_host(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, run: Callable[[], Result],
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://192.0.2.2:8200")
    monkeypatch.setenv("VAULT_TOKEN", "s.operator")
    result = run()
    assert result.exit_code == EXIT_USAGE, result.output
    error = json.loads(result.stdout)["error"]
    assert error.startswith("VAULT_ADDR 'http://192.0.2.2:8200': 192.0.2.2 is not loopback, so it must be reached "
                            "over https://; over http:// the Vault token would cross the network in clear")
    assert "FORESIGHT_VAULT_ALLOW_INSECURE_HTTP=true allows it" in error


def test_an_admin_token_is_never_sent_over_http_to_another_host(state_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example.com:8200")
    monkeypatch.setenv("VAULT_TOKEN", "s.operator")
    monkeypatch.setenv("FORESIGHT_ADMIN_URL", "http://foresight.example.com:8080")
    monkeypatch.setenv("FORESIGHT_ADMIN_TOKEN", "admin")
    with pytest.raises(InvalidInput, match="foresight.example.com is not loopback.*the admin token would cross the "
                       r"network in clear \(FORESIGHT_ADMIN_ALLOW_INSECURE_HTTP=true allows it"):
        resolve(state_dir)


def test_http_is_fine_to_loopback_and_elsewhere_only_when_allowed(state_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "s.operator")
    monkeypatch.setenv("FORESIGHT_ADMIN_TOKEN", "admin")
    for vault, admin in (("http://127.0.0.1:8200", "http://localhost:8080"), ("http://[::1]:8200", None)):
        monkeypatch.setenv("VAULT_ADDR", vault)
        assert resolve(state_dir, admin_url=admin).vault_addr == vault
    monkeypatch.setenv("VAULT_ADDR", "http://192.0.2.2:8200")
    monkeypatch.setenv("FORESIGHT_VAULT_ALLOW_INSECURE_HTTP", "true")
    monkeypatch.setenv("FORESIGHT_ADMIN_ALLOW_INSECURE_HTTP", "1")
    target = resolve(state_dir, admin_url="http://192.0.2.3:8080")
    assert (target.vault_addr, target.admin_url) == ("http://192.0.2.2:8200", "http://192.0.2.3:8080")
    monkeypatch.setenv("FORESIGHT_VAULT_ALLOW_INSECURE_HTTP", "false")
    with pytest.raises(InvalidInput, match=r"192\.0\.2\.2 is not loopback"):
        resolve(state_dir)
