"""`foresight snapshot show` and `merge`: the entries set aside beside the snapshot (unclaimed tenants, a snapshot
the KMS could not open) go back into it without turning the other tenants cold, through the real command, the real
local KMS and a real service's audit lock."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from service import snapshot
from service.security.envelope import EnvelopeCipher
from service.security.kms.local import LocalKms
from service.snapshot_cli import app as snapshot_app
from service.store import now_ms
from tests.service.harness import running_service
from tests.service.test_snapshot_durability import fill, only, registry


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in [n for n in os.environ if n.startswith("FORESIGHT_")]:
        monkeypatch.delenv(name)
    LocalKms.generate(tmp_path / "keyring.json")
    return {"FORESIGHT_KMS_PROVIDER": "local", "FORESIGHT_KMS_KEY_ID": str(tmp_path / "keyring.json"),
            "FORESIGHT_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def cipher(env: dict[str, str]) -> EnvelopeCipher:
    return EnvelopeCipher(LocalKms.from_file(Path(env["FORESIGHT_KMS_KEY_ID"])))


def command(env: dict[str, str], *args: str) -> tuple[int, Any]:
    root = typer.Typer()
    root.add_typer(snapshot_app, name="snapshot")
    result = CliRunner().invoke(root, ["snapshot", *args, "--json"], env=env)
    return result.exit_code, json.loads(result.stdout)


def contents(data: Path) -> list[tuple[str, bytes]]:
    """The data dir's files and bytes, but the lock file the stopped-service check leaves (as `kms rewrap` does)."""
    return sorted((p.name, p.read_bytes()) for p in data.iterdir() if not p.name.endswith(".writer.lock"))


def unclaimed_globex(data: Path, cipher: EnvelopeCipher) -> Path:
    """A start without globex in the tenant list (its entries set aside), then its stop."""
    before = registry("acme", "globex")
    fill(before, "acme", 5)
    fill(before, "globex", 300)
    snapshot.save(before, data, cipher)
    run = registry("acme")
    assert snapshot.restore(run, data, cipher) == 5
    snapshot.forget_restored(data)
    run.get("acme").store.set(b"acme-new", b"1", 0)  # type: ignore[union-attr]
    snapshot.save(run, data, cipher)
    return only(data, "snapshot.unclaimed-*.fse")


def test_merge_puts_an_unclaimed_tenant_back_and_keeps_the_others_warm(env: dict[str, str],
                                                                       cipher: EnvelopeCipher) -> None:
    data = Path(env["FORESIGHT_DATA_DIR"])
    aside = unclaimed_globex(data, cipher)
    code, shown = command(env, "show")
    assert code == 0
    assert {Path(f["path"]).name: [(t["name"], t["entries"]) for t in f["tenants"]] for f in shown["files"]} == {
        snapshot.FILENAME: [("acme", 6)], aside.name: [("globex", 300)]}

    code, merged = command(env, "merge", str(aside))
    assert code == 0 and merged["added"] == {"globex": 300} and merged["skipped"] == {}
    assert aside.exists()  # left as it was, for the operator to delete
    back = registry("acme", "globex")
    assert snapshot.restore(back, data, cipher) == 306  # globex back, and acme's six, new key included
    assert back.get("acme").store.get(b"acme-new") is not None  # type: ignore[union-attr]


def test_merge_keeps_the_snapshots_newer_values_and_drops_expired_entries(env: dict[str, str],
                                                                         cipher: EnvelopeCipher) -> None:
    data = Path(env["FORESIGHT_DATA_DIR"])
    older = {"acme": snapshot.SavedTenant(None, [(b"k", b"old", 0), (b"gone", b"x", now_ms() - 1),
                                                 (b"only-old", b"o", 0)])}
    snapshot.write(older, data, cipher)
    os.replace(data / snapshot.FILENAME, data / "snapshot.fse.unrestored-20260101T000000Z")
    snapshot.write({"acme": snapshot.SavedTenant(None, [(b"k", b"new", 0)])}, data, cipher)

    code, merged = command(env, "merge", str(data / "snapshot.fse.unrestored-20260101T000000Z"))
    assert code == 0 and (merged["added"], merged["kept"]) == ({"acme": 1}, {"acme": 1})
    [(_incarnation, entries)] = snapshot.read(data / snapshot.FILENAME, cipher).values()
    assert entries == [(b"only-old", b"o", 0), (b"k", b"new", 0)]  # the older one coldest, the newer value kept


def test_merge_skips_a_section_of_another_tenant_of_the_same_name(env: dict[str, str],
                                                                   cipher: EnvelopeCipher) -> None:
    data = Path(env["FORESIGHT_DATA_DIR"])
    snapshot.write({"acme": snapshot.SavedTenant("old1", [(b"k", b"v", 0)])}, data, cipher)
    os.replace(data / snapshot.FILENAME, data / "aside.fse")
    snapshot.write({"acme": snapshot.SavedTenant("new2", [(b"j", b"w", 0)])}, data, cipher)
    before = (data / snapshot.FILENAME).read_bytes()
    code, merged = command(env, "merge", str(data / "aside.fse"))
    assert code == 0 and merged["added"] == {} and "another incarnation" in merged["skipped"]["acme"]
    assert (data / snapshot.FILENAME).read_bytes() == before  # nothing to add: not even rewritten


def test_merge_refuses_what_it_cannot_do_and_changes_nothing(env: dict[str, str], cipher: EnvelopeCipher,
                                                             tmp_path: Path) -> None:
    data = Path(env["FORESIGHT_DATA_DIR"])
    aside = unclaimed_globex(data, cipher)
    before = contents(data)

    code, reply = command(env, "merge", str(aside), "--tenant", "initech")
    assert code == 2 and "holds no entries of initech" in reply["error"]
    code, reply = command(env, "merge", str(data / snapshot.FILENAME))
    assert code == 2 and "is the snapshot itself" in reply["error"]
    code, reply = command({**env, "FORESIGHT_KMS_PROVIDER": "none"}, "merge", str(aside))
    assert code == 2 and "no KMS configured" in reply["error"]
    other = EnvelopeCipher(LocalKms.generate(tmp_path / "other-keyring.json"))
    foreign = tmp_path / "foreign.fse"
    snapshot.write({"x": snapshot.SavedTenant(None, [(b"k", b"v", 0)])}, tmp_path / "elsewhere", other)
    os.replace(tmp_path / "elsewhere" / snapshot.FILENAME, foreign)
    code, reply = command(env, "merge", str(foreign))
    assert code == 1 and reply["error"].startswith("nothing merged: ")
    assert contents(data) == before

    os.replace(data / snapshot.FILENAME, data / snapshot.RESTORING)  # a start cut short
    code, reply = command(env, "merge", str(aside))
    assert code == 2 and "a start was cut short" in reply["error"]


def test_merge_refuses_while_the_service_runs(env: dict[str, str], cipher: EnvelopeCipher, tmp_path: Path) -> None:
    data = Path(env["FORESIGHT_DATA_DIR"])
    aside = unclaimed_globex(data, cipher)
    audit = tmp_path / "audit" / "audit.log"
    with running_service(dev=True, audit_log=audit, kms_provider="local", kms_key_id=env["FORESIGHT_KMS_KEY_ID"]):
        code, reply = command({**env, "FORESIGHT_AUDIT_LOG": str(audit)}, "merge", str(aside))
    assert code == 2 and "the service is running" in reply["error"]
    assert [name for name, _ in contents(data)] == sorted([snapshot.FILENAME, aside.name])


def test_show_reports_a_file_that_does_not_open_and_exits_1(env: dict[str, str], cipher: EnvelopeCipher) -> None:
    data = Path(env["FORESIGHT_DATA_DIR"])
    snapshot.write({"acme": snapshot.SavedTenant(None, [(b"k", b"v", 0)])}, data, cipher)
    damaged = data / "snapshot.fse.unrestored-20260101T000000Z"
    damaged.write_bytes((data / snapshot.FILENAME).read_bytes()[:-5])
    code, shown = command(env, "show")
    assert code == 1
    by_name = {Path(f["path"]).name: f for f in shown["files"]}
    assert by_name[snapshot.FILENAME]["tenants"] == [{"name": "acme", "incarnation": None, "entries": 1, "bytes": 2}]
    assert "error" in by_name[damaged.name]
