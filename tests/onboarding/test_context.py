"""Which Vault, admin API and state directory the `tenants`/`keys` commands act on, from the environment and the
local deployment's record (no process runs: `resolve` connects to nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from onboarding.context import resolve
from onboarding.errors import InvalidInput
from onboarding.state import StatePaths
from tests.onboarding.conftest import LOCAL_VAULT, OPERATOR_TOKEN


def test_the_local_deployment_gives_everything_when_the_environment_names_nothing(recorded: StatePaths) -> None:
    target = resolve(recorded.root)
    assert (target.vault_addr, target.vault_token, target.kv_mount) == (LOCAL_VAULT, OPERATOR_TOKEN, "local-kv")
    assert target.admin_url == "https://127.0.0.1:8443" and target.admin_token == "local-admin-token"
    assert target.endpoints is not None and target.endpoints.resp_port == 6380
    assert target.local_vault and target.local_admin


def test_the_local_operator_token_is_never_sent_to_another_vault(
        recorded: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example.com:8200")
    with pytest.raises(InvalidInput, match="not the local deployment's Vault, but VAULT_TOKEN") as refused:
        resolve(recorded.root)
    assert OPERATOR_TOKEN not in str(refused.value)
    monkeypatch.setenv("VAULT_ADDR", LOCAL_VAULT)  # the local Vault named explicitly: its token is the local one
    assert resolve(recorded.root).vault_token == OPERATOR_TOKEN


def test_another_vault_takes_neither_the_local_admin_api_nor_its_endpoints(
        recorded: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local service serves the local Vault's tenants: asked to load one from another Vault, it never could."""
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example.com:8200")
    monkeypatch.setenv("VAULT_TOKEN", "s.remote")
    target = resolve(recorded.root)
    assert (target.admin_url, target.admin_token, target.endpoints) == (None, None, None)
    assert target.kv_mount == "foresight" and not target.local_vault and not target.local_admin
    monkeypatch.setenv("FORESIGHT_ADMIN_URL", "https://foresight.example.com:8443")
    monkeypatch.setenv("FORESIGHT_ADMIN_TOKEN", "remote-admin")
    target = resolve(recorded.root)
    assert target.admin_url == "https://foresight.example.com:8443" and target.admin_token == "remote-admin"


def test_local_up_adopts_a_directory_holding_only_what_onboarding_wrote_there(tmp_path: Path) -> None:
    """Acting on a remote Vault without a local deployment leaves the journal and the onboarding audit log in
    the default state directory; `local up` used to refuse it from then on."""
    paths = StatePaths(tmp_path / "foresight")
    paths.onboarding_audit.parent.mkdir(parents=True)
    for written in (paths.pending, paths.root / "pending.json.lock", paths.onboarding_audit,
                    paths.onboarding_audit.with_name("onboarding.jsonl.writer.lock")):
        written.write_text("")
    paths.create()
    assert paths.is_ours() and paths.onboarding_audit.exists()

    other = StatePaths(tmp_path / "mine")
    (other.root / "audit").mkdir(parents=True)
    (other.root / "audit" / "notes.txt").write_text("a user's file")
    with pytest.raises(InvalidInput, match="is not a Foresight state directory"):
        other.create()
    assert not other.is_ours()
