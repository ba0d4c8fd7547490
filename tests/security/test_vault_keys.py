"""The Vault key store's writer and its policies, against a real OpenBao."""

from __future__ import annotations

import datetime as dt
import logging

import hvac
import hvac.exceptions
import pytest

from service.security.apikeys import hash_key
from service.security.vault_keys import (
    DamagedRecord,
    KeyInfo,
    KeyNotActive,
    KeyNotFound,
    TenantExists,
    TenantMeta,
    TenantNotFound,
    VaultKeyAdmin,
    VaultKeyStoreError,
    VaultUnavailable,
    tenant_policy,
    tenant_policy_name,
)
from service.tenancy import TenantQuota, TenantSpec
from tests.security.helpers import token_client, unique
from tests.servers import OpenBao


def kv_read(client: hvac.Client, path: str) -> dict:
    return client.secrets.kv.v2.read_secret_version(path, mount_point="foresight", raise_on_deleted_version=True)


@pytest.fixture
def tenant(key_admin: VaultKeyAdmin) -> str:
    name = unique("t")
    key_admin.create_tenant(TenantSpec(name=name))
    return name


def test_create_tenant_writes_meta_and_confined_policy(key_admin: VaultKeyAdmin, bao_root: hvac.Client) -> None:
    spec = TenantSpec(name=unique("acme"), quota=TenantQuota(memory_bytes=1 << 20, requests_per_second=50))
    key_admin.create_tenant(spec)
    assert key_admin.get_tenant(spec.name) == spec
    assert spec in key_admin.list_tenants()
    policy = bao_root.sys.read_policy(tenant_policy_name(spec.name))["data"]["rules"]
    assert f'"foresight/data/tenants/{spec.name}/*"' in policy
    assert "create" not in policy and "update" not in policy


def test_tenants_of_two_mounts_in_one_vault_keep_their_own_policies(
        key_admin: VaultKeyAdmin, bao_root: hvac.Client) -> None:
    """Two deployments sharing one Vault (mounts foresight and another) each with a tenant `acme`: one's create
    replaced the other's policy, and one's delete deleted it, while that tenant still existed."""
    mount = unique("shared")
    bao_root.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    other = VaultKeyAdmin(bao_root, mount)
    name = unique("acme")
    key_admin.create_tenant(TenantSpec(name=name))
    other.create_tenant(TenantSpec(name=name))
    assert tenant_policy_name(name, mount) == f"foresight-tenant-{mount}.{name}"
    rules = {m: bao_root.sys.read_policy(tenant_policy_name(name, m))["data"]["rules"] for m in ("foresight", mount)}
    assert f'"foresight/data/tenants/{name}/*"' in rules["foresight"]
    assert f'"{mount}/data/tenants/{name}/*"' in rules[mount]
    other.delete_tenant(name)
    assert bao_root.sys.read_policy(tenant_policy_name(name))["data"]["rules"] == rules["foresight"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao_root.sys.read_policy(tenant_policy_name(name, mount))
    # A tenant of the other mount from before the names held the mount: its policy goes with it, no other.
    bao_root.sys.create_or_update_policy(tenant_policy_name("legacy"), tenant_policy("legacy", mount))
    other.create_tenant(TenantSpec(name="legacy"))
    other.delete_tenant("legacy")
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao_root.sys.read_policy(tenant_policy_name("legacy"))


def test_create_tenant_is_idempotent_but_refuses_a_different_spec(key_admin: VaultKeyAdmin) -> None:
    spec = TenantSpec(name=unique("idem"))
    key_admin.create_tenant(spec)
    assert key_admin.create_tenant(spec) == spec
    with pytest.raises(TenantExists):
        key_admin.create_tenant(TenantSpec(name=spec.name, suspended=True))
    with pytest.raises(TenantExists, match="already exists"):  # onboarding's create must know the tenant is its own
        key_admin.create_tenant(spec, exclusive=True)


def test_issue_stores_only_the_hash(key_admin: VaultKeyAdmin, bao_root: hvac.Client, tenant: str) -> None:
    key = key_admin.issue_key(tenant, ["read"], ttl=dt.timedelta(days=30))
    record = kv_read(bao_root, f"tenants/{tenant}/keys/{key.key_id}")["data"]["data"]
    assert record["hash"] == hash_key(key.secret)
    assert key.secret not in str(record)
    assert record["scopes"] == ["read"] and record["state"] == "active" and record["expires"]
    assert kv_read(bao_root, f"keyids/{key.key_id}")["data"]["data"] == {"tenant": tenant}


def test_issue_refuses_unknown_tenant_and_bad_scopes(key_admin: VaultKeyAdmin, tenant: str) -> None:
    with pytest.raises(TenantNotFound):
        key_admin.issue_key(unique("ghost"))
    with pytest.raises(VaultKeyStoreError, match="scopes"):
        key_admin.issue_key(tenant, ["superuser"])
    with pytest.raises(VaultKeyStoreError, match="scopes"):
        key_admin.issue_key(tenant, [])


def test_rotate_gives_the_old_key_an_overlap_window(key_admin: VaultKeyAdmin, tenant: str) -> None:
    old = key_admin.issue_key(tenant, ["read", "write"])
    new = key_admin.rotate_key(old.key_id, overlap=dt.timedelta(minutes=10), tenant=tenant)
    old_info, new_info = key_admin.get_key(old.key_id), key_admin.get_key(new.key_id)
    assert old_info.rotated_to == new.key_id and old_info.state == "active"
    assert old_info.expires is not None
    assert dt.timedelta(minutes=9) < old_info.expires - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=10)
    assert new_info.scopes == ["read", "write"] and new_info.expires is None


def test_rotate_refuses_revoked_keys_and_other_tenants(key_admin: VaultKeyAdmin, tenant: str) -> None:
    key = key_admin.issue_key(tenant)
    with pytest.raises(KeyNotFound):
        key_admin.rotate_key(key.key_id, overlap=dt.timedelta(minutes=1), tenant=unique("other"))
    key_admin.revoke_key(key.key_id)
    with pytest.raises(KeyNotActive):
        key_admin.rotate_key(key.key_id, overlap=dt.timedelta(minutes=1))


@pytest.mark.parametrize("ttl", [None, dt.timedelta(days=30)])
def test_a_rotated_key_cannot_be_rotated_again(key_admin: VaultKeyAdmin, tenant: str, ttl: dt.timedelta | None) -> None:
    # A retried `keys rotate` must not issue a successor that lives only for the overlap (its lifetime was taken
    # from the old key's expiry, which the first rotation cut to the overlap).
    old = key_admin.issue_key(tenant, ttl=ttl)
    successor = key_admin.rotate_key(old.key_id, overlap=dt.timedelta(hours=1))
    with pytest.raises(KeyNotActive, match=f"already rotated to {successor.key_id}"):
        key_admin.rotate_key(old.key_id, overlap=dt.timedelta(hours=1))
    assert key_admin.get_key(old.key_id).rotated_to == successor.key_id
    assert [k.key_id for k in key_admin.list_keys(tenant)].count(successor.key_id) == 1
    assert len(key_admin.list_keys(tenant)) == 2  # the refused rotation issued nothing
    info = key_admin.get_key(successor.key_id)
    assert info.expires is None if ttl is None else info.expires - info.created == ttl
    assert key_admin.rotate_key(successor.key_id, overlap=dt.timedelta(hours=1))  # the successor rotates as usual


def test_a_key_rotated_with_no_overlap_still_names_its_successor(key_admin: VaultKeyAdmin, tenant: str) -> None:
    """Rotated with --overlap 0s the old key expires at once; rotating it again said only "expired"."""
    old = key_admin.issue_key(tenant)
    successor = key_admin.rotate_key(old.key_id, overlap=dt.timedelta(0))
    with pytest.raises(KeyNotActive, match=f"already rotated to {successor.key_id}; rotate {successor.key_id}"):
        key_admin.rotate_key(old.key_id, overlap=dt.timedelta(hours=1))
    key_admin.revoke_key(successor.key_id)
    with pytest.raises(KeyNotActive, match=f"key {successor.key_id} is revoked"):
        key_admin.rotate_key(successor.key_id, overlap=dt.timedelta(hours=1))


def test_each_tenant_of_a_name_is_another_incarnation_and_its_keys_name_it(
        key_admin: VaultKeyAdmin, bao_root: hvac.Client) -> None:
    name = unique("again")
    key_admin.create_tenant(TenantSpec(name=name))
    first = TenantMeta.model_validate(kv_read(bao_root, f"tenants/{name}/meta")["data"]["data"])
    key = key_admin.issue_key(name)
    assert first.uid and key_admin.get_key(key.key_id).incarnation == first.incarnation == first.uid
    key_admin.delete_tenant(name)
    key_admin.create_tenant(TenantSpec(name=name))
    second = TenantMeta.model_validate(kv_read(bao_root, f"tenants/{name}/meta")["data"]["data"])
    assert second.incarnation != first.incarnation
    assert second.issued(key_admin.get_key(key_admin.issue_key(name).key_id))
    assert not second.issued(KeyInfo(key_id="x", tenant=name, hash="h", scopes=["read"], created=second.created,
                                     incarnation=first.incarnation))
    key_admin.delete_tenant(name)


def test_a_tenant_from_before_incarnations_has_a_stable_one_and_keeps_its_old_keys() -> None:
    created = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    legacy = TenantMeta.model_validate({"spec": {"name": "acme"}, "created": created.isoformat()})
    assert legacy.uid is None and legacy.incarnation == TenantMeta(spec=legacy.spec, created=created).incarnation
    recreated = TenantMeta(spec=legacy.spec, created=created + dt.timedelta(microseconds=1))  # by an older release
    assert recreated.incarnation != legacy.incarnation
    old_key = KeyInfo(key_id="x", tenant="acme", hash="h", scopes=["read"], created=created)  # no incarnation
    assert legacy.issued(old_key)  # keys issued before the upgrade keep working
    assert not TenantMeta(spec=legacy.spec, created=created, uid="0123abcd").issued(old_key)
    assert legacy.service_spec().incarnation == legacy.incarnation
    assert "incarnation" not in legacy.service_spec().model_dump()  # never written back into a record


def test_revoke_is_idempotent(key_admin: VaultKeyAdmin, tenant: str) -> None:
    key = key_admin.issue_key(tenant)
    first = key_admin.revoke_key(key.key_id, tenant=tenant)
    again = key_admin.revoke_key(key.key_id, tenant=tenant)
    assert first.state == again.state == "revoked"
    assert first.revoked_at == again.revoked_at


def test_delete_tenant_removes_keys_policy_and_meta(
    key_admin: VaultKeyAdmin, bao_root: hvac.Client, tenant: str
) -> None:
    keys = [key_admin.issue_key(tenant) for _ in range(2)]
    key_admin.delete_tenant(tenant)
    key_admin.delete_tenant(tenant)  # idempotent
    assert key_admin.get_tenant(tenant) is None
    for key in keys:
        with pytest.raises(KeyNotFound):
            key_admin.get_key(key.key_id)
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao_root.sys.read_policy(tenant_policy_name(tenant))


def test_a_damaged_tenant_record_is_named_never_shown_and_can_be_deleted(
    key_admin: VaultKeyAdmin, bao_root: hvac.Client, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    other = unique("t")
    key_admin.create_tenant(TenantSpec(name=other))
    bao_root.secrets.kv.v2.create_or_update_secret(f"tenants/{tenant}/meta", {"token": "cd" * 32},
                                                   mount_point="foresight")
    with pytest.raises(DamagedRecord, match=f"foresight/tenants/{tenant}/meta is not a tenant record") as err:
        key_admin.get_tenant(tenant)
    assert "cdcd" not in str(err.value) and "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING, logger="service.security.vault_keys"):
        names = {spec.name for spec in key_admin.list_tenants()}
    assert other in names and tenant not in names  # one damaged record does not hide the rest
    assert f"tenant {tenant} left out: " in caplog.text and "cdcd" not in caplog.text
    key_admin.delete_tenant(tenant)
    assert key_admin.get_tenant(tenant) is None
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao_root.sys.read_policy(tenant_policy_name(tenant))


def test_tenant_policy_cannot_read_another_tenant(
    openbao: OpenBao, bao_root: hvac.Client, key_admin: VaultKeyAdmin
) -> None:
    # "ab" and "ab-x": a prefix-named neighbour must not fall inside the other's glob.
    a, b = unique("ab"), None
    b = a + "-x"
    for name in (a, b):
        key_admin.create_tenant(TenantSpec(name=name))
    key_a, key_b = key_admin.issue_key(a), key_admin.issue_key(b)
    as_a = token_client(openbao.addr, bao_root, tenant_policy_name(a))
    assert kv_read(as_a, f"tenants/{a}/keys/{key_a.key_id}")["data"]["data"]["tenant"] == a
    for path in (f"tenants/{b}/keys/{key_b.key_id}", f"tenants/{b}/meta", f"keyids/{key_b.key_id}"):
        with pytest.raises(hvac.exceptions.Forbidden):
            kv_read(as_a, path)
    with pytest.raises(hvac.exceptions.Forbidden):
        as_a.secrets.kv.v2.create_or_update_secret(f"tenants/{a}/keys/forged", {"hash": "x"}, mount_point="foresight")


def test_service_policy_reads_hashes_but_cannot_write(
    service_client: hvac.Client, key_admin: VaultKeyAdmin, tenant: str
) -> None:
    key = key_admin.issue_key(tenant)
    assert kv_read(service_client, f"tenants/{tenant}/keys/{key.key_id}")["data"]["data"]["key_id"] == key.key_id
    service_writer = VaultKeyAdmin(service_client)
    with pytest.raises(VaultKeyStoreError, match="lacks permission"):
        service_writer.revoke_key(key.key_id)
    with pytest.raises(VaultKeyStoreError, match="lacks permission"):
        service_writer.issue_key(tenant)
    with pytest.raises(hvac.exceptions.Forbidden):
        service_client.sys.create_or_update_policy("foresight-tenant-evil", 'path "*" { capabilities = ["sudo"] }')


def test_failed_key_write_rolls_back_the_key_id_index(openbao: OpenBao, bao_root: hvac.Client, tenant: str) -> None:
    # A token that may write the index but not key records: the second step fails, the first is undone.
    bao_root.sys.create_or_update_policy(
        "test-half-writer",
        'path "foresight/data/keyids/*" { capabilities = ["create", "update", "read"] }\n'
        'path "foresight/metadata/keyids/*" { capabilities = ["delete"] }\n'
        'path "foresight/data/tenants/*" { capabilities = ["read"] }\n',
    )
    half = VaultKeyAdmin(token_client(openbao.addr, bao_root, "test-half-writer"))
    before = set(bao_root.secrets.kv.v2.list_secrets("keyids/", mount_point="foresight")["data"]["keys"])
    with pytest.raises(VaultKeyStoreError, match="lacks permission"):
        half.issue_key(tenant)
    after = set(bao_root.secrets.kv.v2.list_secrets("keyids/", mount_point="foresight")["data"]["keys"])
    assert after == before


def test_failed_tenant_meta_write_rolls_back_the_policy(openbao: OpenBao, bao_root: hvac.Client) -> None:
    bao_root.sys.create_or_update_policy(
        "test-policy-only",
        'path "sys/policy/foresight-tenant-*" { capabilities = ["create", "update", "delete"] }\n'
        'path "foresight/data/tenants/*" { capabilities = ["read"] }\n',
    )
    name = unique("half")
    with pytest.raises(VaultKeyStoreError, match="lacks permission"):
        VaultKeyAdmin(token_client(openbao.addr, bao_root, "test-policy-only")).create_tenant(TenantSpec(name=name))
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao_root.sys.read_policy(tenant_policy_name(name))


def test_unreachable_vault_is_reported_as_unavailable() -> None:
    admin = VaultKeyAdmin(hvac.Client(url="http://127.0.0.1:9", timeout=1))
    with pytest.raises(VaultUnavailable):
        admin.get_tenant("acme")


def test_invalid_tenant_names_never_reach_vault_paths(key_admin: VaultKeyAdmin) -> None:
    for bad in ("../etc", "a/*", "A", ""):
        with pytest.raises(VaultKeyStoreError, match="invalid tenant name"):
            key_admin.delete_tenant(bad)
