"""Tenant and key lifecycle against a real OpenBao: what `create` writes, how a failure half-way is undone,
and that the audit log records every action without a secret."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import hvac
import pytest

from onboarding.auditing import OnboardingAudit
from onboarding.errors import Conflict, InvalidInput, LocalFailure, NotFound, ServiceFailure, VaultFailure
from onboarding.journal import Journal
from onboarding.plans import PLANS
from onboarding.tenants import Onboarder
from service.security.audit import verify_files
from service.security.vault_keys import VaultKeyAdmin, VaultUnavailable, tenant_policy_name
from service.security.vault_source import VaultKeySource
from service.tenancy import TenantSpec
from tests.security.helpers import unique
from tests.servers import OpenBao


class FakeAdmin:
    """The service's admin API as onboarding sees it; `down` makes every call fail like an unreachable service."""

    def __init__(self, key_admin: VaultKeyAdmin) -> None:
        self.key_admin = key_admin
        self.down = False
        self.refreshes = 0
        self.dropped: list[str] = []
        self.calls: list[str] = []

    def refresh_tenant(self, tenant: str) -> bool:
        self._check()
        self.refreshes += 1
        self.calls.append(f"refresh {tenant}")
        return self.key_admin.get_tenant(tenant) is not None

    def drop_data(self, tenant: str) -> None:
        self._check()
        self.dropped.append(tenant)
        self.calls.append(f"drop {tenant}")

    def list_tenants(self) -> list[dict]:
        self._check()
        return [{"name": t.name, "used_bytes": 0} for t in self.key_admin.list_tenants()]

    def close(self) -> None:
        pass

    def _check(self) -> None:
        if self.down:
            raise ServiceFailure("refresh the service's tenants", "service at https://127.0.0.1:1 unreachable")


class VaultGoesAway(VaultKeyAdmin):
    """A key admin whose Vault vanishes right after the first tenant record is written (until `back()`)."""

    gone = False
    tripped = False

    def create_tenant(self, spec: TenantSpec, *, exclusive: bool = False) -> TenantSpec:
        created = super().create_tenant(spec, exclusive=exclusive)
        if not self.tripped:
            self.gone = self.tripped = True
        return created

    def issue_key(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._check()
        return super().issue_key(*args, **kwargs)

    def delete_tenant(self, name: str) -> None:
        self._check()
        super().delete_tenant(name)

    def back(self) -> None:
        self.gone = False

    def _check(self) -> None:
        if self.gone:
            raise VaultUnavailable("cannot write foresight/tenants: Vault unreachable (ConnectionError)")


@pytest.fixture
def admin(key_admin: VaultKeyAdmin) -> FakeAdmin:
    return FakeAdmin(key_admin)


@pytest.fixture
def onboard(key_admin: VaultKeyAdmin, admin: FakeAdmin, tmp_path: Path, bao: OpenBao) -> Onboarder:
    return Onboarder(key_admin, admin, OnboardingAudit(tmp_path / "audit.jsonl"),  # type: ignore[arg-type]
                     Journal(tmp_path / "pending.json", bao.addr))


def source(bao: OpenBao) -> VaultKeySource:
    return VaultKeySource(bao.client(), cache_ttl=0, negative_ttl=0)


def audit_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_create_writes_tenant_policy_and_a_working_key(onboard: Onboarder, admin: FakeAdmin, bao: OpenBao) -> None:
    name = unique("acme")
    created = onboard.create_tenant(name, PLANS["pro"])
    assert created.spec.quota == PLANS["pro"]
    assert onboard.key_admin.get_tenant(name) == TenantSpec(name=name, quota=PLANS["pro"])
    assert bao.client().sys.read_policy(tenant_policy_name(name))
    principal = source(bao).authenticate(created.key.secret)
    assert principal is not None and principal.tenant == name
    assert admin.refreshes == 1


def test_a_second_create_is_refused_and_issues_no_second_key(onboard: Onboarder) -> None:
    name = unique("twice")
    onboard.create_tenant(name, PLANS["starter"])
    with pytest.raises(Conflict, match="already exists"):
        onboard.create_tenant(name, PLANS["starter"])
    with pytest.raises(Conflict):
        onboard.create_tenant(name, PLANS["pro"])
    assert len(onboard.list_keys(name)) == 1
    assert [v.spec.name for v in onboard.list_tenants().tenants].count(name) == 1


def test_service_down_during_create_rolls_everything_back(
    onboard: Onboarder, admin: FakeAdmin, bao: OpenBao, tmp_path: Path
) -> None:
    name = unique("nosvc")
    admin.down = True
    with pytest.raises(ServiceFailure, match="unreachable"):
        onboard.create_tenant(name, PLANS["starter"])
    assert onboard.key_admin.get_tenant(name) is None
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.client().sys.read_policy(tenant_policy_name(name))
    assert bao.client().secrets.kv.v2.list_secrets("keyids/", mount_point="foresight")  # others' keys remain
    assert onboard.journal is not None and onboard.journal.pending() == []
    actions = [(e["action"], e["outcome"]) for e in audit_events(tmp_path / "audit.jsonl") if e["tenant"] == name]
    assert actions == [("tenant.create.rollback", "success"), ("tenant.create", "failure")]


def test_vault_lost_half_way_leaves_no_half_tenant_once_it_returns(
    bao: OpenBao, operator_token: str, admin: FakeAdmin, tmp_path: Path
) -> None:
    flaky = VaultGoesAway(hvac.Client(url=bao.addr, token=operator_token, timeout=2))
    journal = Journal(tmp_path / "pending.json", bao.addr)
    onboard = Onboarder(flaky, admin, OnboardingAudit(tmp_path / "audit.jsonl"), journal)  # type: ignore[arg-type]
    name = unique("half")
    with pytest.raises(VaultFailure) as err:
        onboard.create_tenant(name, PLANS["starter"])
    assert "issue the first API key" in str(err.value) and "rollback pending" in str(err.value)
    assert journal.pending() == [name]
    flaky.back()
    # the next command that reaches Vault finishes the rollback, whatever it was asked to do
    other = unique("next")
    onboard.create_tenant(other, PLANS["starter"])
    assert flaky.get_tenant(name) is None and flaky.get_tenant(other) is not None
    assert journal.pending() == []
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.client().sys.read_policy(tenant_policy_name(name))


def test_a_creation_whose_process_died_is_rolled_back_but_a_running_one_is_not(
    onboard: Onboarder, key_admin: VaultKeyAdmin, tmp_path: Path
) -> None:
    dead, running = unique("dead"), unique("running")
    key_admin.create_tenant(TenantSpec(name=dead))
    key_admin.create_tenant(TenantSpec(name=running))
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    assert onboard.journal is not None
    onboard.journal.begin(running)  # this process: alive, so still in flight
    onboard.journal.begin(dead)
    entries = json.loads((tmp_path / "pending.json").read_text())
    entries[-1]["pid"], entries[-1]["start_time"] = int(child.stdout), None
    (tmp_path / "pending.json").write_text(json.dumps(entries))
    assert onboard.recover() == [dead]
    assert key_admin.get_tenant(dead) is None and key_admin.get_tenant(running) is not None


def test_suspend_refuses_keys_and_resume_restores_them(onboard: Onboarder, bao: OpenBao) -> None:
    name = unique("susp")
    key = onboard.create_tenant(name, PLANS["starter"]).key
    onboard.set_suspended(name, True)
    assert onboard.show_tenant(name).spec.suspended
    assert source(bao).authenticate(key.secret) is None
    onboard.set_suspended(name, False)
    assert source(bao).authenticate(key.secret) is not None


def test_delete_removes_keys_policy_records_and_cached_data(
    onboard: Onboarder, admin: FakeAdmin, bao: OpenBao
) -> None:
    name = unique("gone")
    key = onboard.create_tenant(name, PLANS["starter"]).key
    admin.calls.clear()
    onboard.delete_tenant(name)
    # The data first: after the refresh the service no longer serves the tenant, so it could not name the data.
    assert admin.calls == [f"drop {name}", f"refresh {name}"]
    assert source(bao).authenticate(key.secret) is None
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.client().sys.read_policy(tenant_policy_name(name))
    with pytest.raises(NotFound):
        onboard.show_tenant(name)
    with pytest.raises(NotFound):
        onboard.delete_tenant(name)


def test_delete_with_the_service_down_still_deletes_and_warns(onboard: Onboarder, admin: FakeAdmin) -> None:
    name = unique("warn")
    onboard.create_tenant(name, PLANS["starter"])
    admin.down = True
    outcome = onboard.delete_tenant(name)
    assert onboard.key_admin.get_tenant(name) is None
    assert outcome.warnings and all("unreachable" in w for w in outcome.warnings)


def test_keys_issue_rotate_revoke(onboard: Onboarder, bao: OpenBao) -> None:
    name = unique("keys")
    first = onboard.create_tenant(name, PLANS["starter"]).key
    issued = onboard.issue_key(name, ["read"], dt.timedelta(days=1))
    assert issued.info.scopes == ["read"] and issued.info.expires is not None
    rotated = onboard.rotate_key(first.key_id, dt.timedelta(minutes=5))
    assert rotated.replaced is not None and rotated.replaced.rotated_to == rotated.info.key_id
    keys = source(bao)
    assert keys.authenticate(first.secret) is not None  # inside the overlap window
    info, _ = onboard.revoke_key(first.key_id)
    assert info.state == "revoked" and keys.authenticate(first.secret) is None
    assert keys.authenticate(rotated.key.secret) is not None
    with pytest.raises(Conflict, match="revoked"):
        onboard.rotate_key(first.key_id, dt.timedelta(minutes=5))
    with pytest.raises(NotFound):
        onboard.revoke_key("aaaaaaaaaaaa")


def test_every_action_is_audited_in_a_valid_chain_without_secrets(onboard: Onboarder, tmp_path: Path) -> None:
    name = unique("audit")
    created = onboard.create_tenant(name, PLANS["starter"])
    issued = onboard.issue_key(name, ["read", "write"])
    onboard.list_tenants()
    onboard.revoke_key(issued.key.key_id)
    onboard.delete_tenant(name)
    log = tmp_path / "audit.jsonl"
    text = log.read_text()
    assert created.key.secret not in text and issued.key.secret not in text
    actions = [e["action"] for e in audit_events(log) if e["tenant"] in (name, None)]
    for action in ("tenant.create", "key.issue", "tenant.list", "key.revoke", "tenant.delete"):
        assert action in actions
    _, verdict = verify_files([log])
    assert verdict.ok


def test_any_command_finishes_the_rollback_of_a_creation_whose_process_died(
    bao: OpenBao, operator_token: str, key_admin: VaultKeyAdmin, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tenants create` was killed between creating the tenant and issuing its key. The next command of any kind
    (here: connecting to list tenants) must not show, or issue keys to, that half tenant."""
    from onboarding.context import resolve

    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", operator_token)
    half = unique("killed")
    key_admin.create_tenant(TenantSpec(name=half))
    target = resolve()
    journal = Journal(target.paths.pending, target.vault_addr)
    journal.begin(half)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    entries = json.loads(target.paths.pending.read_text())
    entries[-1]["pid"], entries[-1]["start_time"] = int(dead.stdout), None
    target.paths.pending.write_text(json.dumps(entries))

    onboard = Onboarder.connect(target)
    try:
        assert half not in [t.spec.name for t in onboard.list_tenants().tenants]
        assert key_admin.get_tenant(half) is None and journal.pending() == []
    finally:
        onboard.close()


def test_an_empty_scope_list_is_refused(onboard: Onboarder) -> None:
    with pytest.raises(InvalidInput, match="--scopes"):
        onboard.create_tenant(unique("noscope"), PLANS["starter"], scopes=[])


def test_a_torn_journal_names_its_file_and_a_rewrite_replaces_it_whole(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "pending.json", "http://vault")
    journal.begin("acme")
    journal.done("acme")
    assert json.loads((tmp_path / "pending.json").read_text()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pending.json", "pending.json.lock"]  # no temporary left
    (tmp_path / "pending.json").write_text('[{"tenant": "acme", "vault_')  # as a process killed mid-write left it
    with pytest.raises(LocalFailure, match=re.escape(str(tmp_path / "pending.json"))):
        journal.pending()
    (tmp_path / "pending.json").write_text('[{"tenant": "x"}]')  # JSON, not notes: was "unexpected KeyError"
    with pytest.raises(LocalFailure, match=r"not a list of notes \(0.vault_addr: Field required\); fix or remove"):
        journal.pending()


def test_a_new_key_is_shown_from_what_was_written_so_a_read_after_it_cannot_lose_the_secret(
    onboard: Onboarder, bao: OpenBao, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vault failing right after the write (the audit reproduced it with a proxy) used to lose a key that works."""
    name = unique("shown")
    first = onboard.create_tenant(name, PLANS["starter"]).key

    def unreachable(*_args: object, **_kwargs: object) -> None:
        raise VaultUnavailable("Vault unreachable (VaultDown)")

    monkeypatch.setattr(onboard.key_admin, "get_key", unreachable)
    issued = onboard.issue_key(name, ["read"], dt.timedelta(days=1))
    rotated = onboard.rotate_key(first.key_id, dt.timedelta(0))
    monkeypatch.undo()
    assert issued.info == onboard.key_admin.get_key(issued.key.key_id)  # the record shown is the one stored
    assert rotated.info == onboard.key_admin.get_key(rotated.key.key_id)
    assert rotated.replaced == onboard.key_admin.get_key(first.key_id)
    assert rotated.replaced is not None and rotated.replaced.rotated_to == rotated.key.key_id
    keys = source(bao)
    assert keys.authenticate(issued.key.secret) is not None and keys.authenticate(rotated.key.secret) is not None
    assert keys.authenticate(first.secret) is None  # rotated with no overlap: the new secret is the only way in


def test_a_deletion_cut_short_is_finished_by_running_it_again(
    onboard: Onboarder, admin: FakeAdmin, bao: OpenBao, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("half")
    key = onboard.create_tenant(name, PLANS["starter"]).key

    def cut(*_args: object, **_kwargs: object) -> None:
        raise VaultUnavailable("Vault unreachable (VaultDown)")

    monkeypatch.setattr(onboard.key_admin, "write_record", cut)  # the first step, which refuses its keys
    with pytest.raises(VaultFailure) as failure:
        onboard.delete_tenant(name)
    assert "partly deleted" not in str(failure.value)  # nothing changed: its keys still work, say nothing else
    assert source(bao).authenticate(key.secret) is not None
    monkeypatch.undo()
    monkeypatch.setattr(onboard.key_admin, "list_records", cut)  # after the tenant is marked as being deleted
    with pytest.raises(VaultFailure) as failure:
        onboard.delete_tenant(name)
    assert "partly deleted" in str(failure.value) and "run the deletion again" in str(failure.value)
    monkeypatch.undo()
    assert onboard.key_admin.get_tenant(name) is None and onboard.key_admin.deletion_pending(name)
    assert source(bao).authenticate(key.secret) is None  # refused from the first step on
    admin.calls.clear()
    outcome = onboard.delete_tenant(name)
    assert any("finished an earlier, interrupted deletion" in warning for warning in outcome.warnings)
    assert admin.calls == [f"drop {name}", f"refresh {name}"]  # its data dropped, as in a deletion that ran through
    assert not onboard.key_admin.deletion_pending(name)
    with pytest.raises(NotFound):
        onboard.delete_tenant(name)
