"""Input rules: tenant names, plans, durations, key ids, and the connection snippet."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from onboarding.context import Endpoints, resolve
from onboarding.errors import EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_VAULT, InvalidInput, from_key_store
from onboarding.plans import MIB, PLANS, plan_of, plans_help, quota_for
from onboarding.snippet import connection_snippet
from onboarding.tenants import parse_duration, parse_key_id, parse_scopes, validate_name
from service.security.apikeys import new_key
from service.security.vault_keys import TenantExists, TenantNotFound, VaultUnavailable
from tests.onboarding.conftest import invoke


@pytest.mark.parametrize("name", ["acme", "a", "team-7", "0x", "a" * 63])
def test_dns_labels_are_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "is empty"),
        ("a" * 64, "64 characters long"),
        ("Acme", "uppercase"),
        ("-acme", "starts or ends with '-'"),
        ("acme-", "starts or ends with '-'"),
        ("ac_me", "contains '_'"),
        ("ac.me", "contains '.'"),
        ("acmé", "contains 'é'"),
        ("a/b*", "contains '*', '/'"),
    ],
)
def test_invalid_names_say_why(name: str, why: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_name(name)
    assert why in str(err.value)
    assert "\n" not in str(err.value)


def test_plans_map_to_quotas_and_back() -> None:
    for name, quota in PLANS.items():
        assert quota_for(name) == quota
        assert plan_of(quota) == name
    assert PLANS["starter"].memory_bytes < PLANS["pro"].memory_bytes < PLANS["enterprise"].memory_bytes


def test_flags_override_a_plan_and_make_it_custom() -> None:
    quota = quota_for("pro", memory_mib=2048)
    assert quota.memory_bytes == 2048 * MIB and quota.requests_per_second == PLANS["pro"].requests_per_second
    assert plan_of(quota) == "custom"
    assert quota_for("custom", memory_mib=10, rps=0).requests_per_second == 0


def test_a_tenants_prefetch_bound_rides_on_its_plan() -> None:
    quota = quota_for("pro", prefetch_max_keys=65536)
    assert quota.prefetch_max_keys == 65536 and plan_of(quota) == "pro"  # memory and rate are the plan's
    assert quota_for("pro").prefetch_max_keys is None  # unset: the service's bound


@pytest.mark.parametrize(
    ("plan", "kwargs", "message"),
    [
        ("gold", {}, "unknown plan; choose one of starter, pro, enterprise, custom"),
        ("custom", {"memory_mib": 10}, "needs both --memory"),
        ("starter", {"memory_mib": 0}, "positive"),
        # 95 EiB was taken, and came back from Vault's JSON as 104857599999998950000 bytes
        ("starter", {"memory_mib": 99999999999999}, "at most 8,589,934,592 (8 PiB)"),
        ("starter", {"rps": -1}, "0 (unlimited) or more"),
        ("starter", {"rps": float("inf")}, "must be a finite number"),
        ("starter", {"rps": float("nan")}, "must be a finite number"),
        ("starter", {"prefetch_max_keys": 1000}, "must be at least 1024"),
    ],
)
def test_bad_plans_are_refused(plan: str, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        quota_for(plan, **kwargs)


def test_durations() -> None:
    assert parse_duration("90s", "--ttl") == dt.timedelta(seconds=90)
    assert parse_duration("30d", "--ttl") == dt.timedelta(days=30)
    with pytest.raises(InvalidInput, match="not a duration"):
        parse_duration("1 week", "--ttl")
    with pytest.raises(InvalidInput, match="'0d' is zero"):
        parse_duration("0d", "--ttl")  # a key that expires as it is issued
    assert parse_duration("0s", "--overlap", allow_zero=True) == dt.timedelta(0)
    assert parse_duration("36500d", "--ttl") == dt.timedelta(days=36500)
    with pytest.raises(InvalidInput, match="longer than 36500 days"):
        parse_duration("99999999999d", "--ttl")  # was an OverflowError from the expiry date


def test_a_pasted_key_becomes_its_id_and_is_never_echoed() -> None:
    key = new_key()
    assert parse_key_id(key.secret) == key.key_id
    with pytest.raises(InvalidInput) as err:
        parse_key_id(key.secret[:-3])
    assert key.secret[:-3] not in str(err.value)
    with pytest.raises(InvalidInput, match="not a key id"):
        parse_key_id("NOPE")
    # What a paste brings along: spaces, a newline, the Authorization header's scheme.
    for pasted in (f" {key.secret}", f"{key.secret}\n", f"Bearer {key.secret}", f"bearer  {key.secret} "):
        assert parse_key_id(pasted) == key.key_id
    for wrapped in (f"token={key.secret}", f"'{key.secret}'"):
        with pytest.raises(InvalidInput, match="shaped like a key") as err:
            parse_key_id(wrapped)
        assert key.secret not in str(err.value) and key.secret[4:20] not in str(err.value)


def test_a_key_pasted_as_a_tenant_name_is_never_echoed() -> None:
    key = new_key()
    with pytest.raises(InvalidInput, match="that is an API key, not a tenant's name") as err:
        validate_name(key.secret)
    assert key.key_id not in str(err.value)


def test_key_store_errors_map_to_exit_codes() -> None:
    assert from_key_store("x", TenantNotFound("no tenant")).exit_code == EXIT_NOT_FOUND
    assert from_key_store("x", TenantExists("exists")).exit_code == EXIT_CONFLICT
    assert from_key_store("x", VaultUnavailable("down")).exit_code == EXIT_VAULT
    assert from_key_store("x", TenantExists("exists")).exit_code != EXIT_USAGE


def test_snippet_connects_over_tls_with_the_ca_and_keeps_the_key_off_argv() -> None:
    key = new_key().secret
    snippet = connection_snippet(Endpoints("127.0.0.1", 6390, "https://127.0.0.1:8443", Path("/s/ca.crt")), key)
    assert snippet["env"] == f"export FORESIGHT_API_KEY={key}"
    assert snippet["redis-cli"].startswith('REDISCLI_AUTH="$FORESIGHT_API_KEY" redis-cli --tls --cacert /s/ca.crt')
    assert "-p 6390" in snippet["redis-cli"] and " -a " not in snippet["redis-cli"]
    assert "ssl=True" in snippet["redis-py"] and "ssl_ca_certs='/s/ca.crt'" in snippet["redis-py"]
    assert snippet["curl"].endswith("https://127.0.0.1:8443/v1/keys/greeting")
    assert "Bearer %s" in snippet["curl"] and "-H @-" in snippet["curl"]
    assert "r.set(" in snippet["redis-py"]
    read_only = connection_snippet(Endpoints("127.0.0.1", 6390, "https://x", None), key, can_write=False)
    assert "r.set(" not in read_only["redis-py"] and "r.get('greeting')" in read_only["redis-py"]


def test_the_kv_mount_comes_from_the_services_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORESIGHT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    monkeypatch.setenv("VAULT_TOKEN", "t")
    monkeypatch.delenv("FORESIGHT_VAULT_KV_MOUNT", raising=False)
    assert resolve().kv_mount == "foresight"
    monkeypatch.setenv("FORESIGHT_VAULT_KV_MOUNT", "tenants-prod")
    assert resolve().kv_mount == "tenants-prod"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"prefetcher": "bogus"}, "--set prefetcher: Input should be 'none', 'stride', 'markov' or 'learned'"),
        ({"origin_max_concurrency": "0"}, "--set origin_max_concurrency: Input should be greater than 0"),
        ({"origin_max_concurrency": "many"}, "--set origin_max_concurrency: Input should be a valid integer"),
    ],
)
def test_local_up_refuses_a_setting_value_the_service_would_refuse(setting: dict[str, str], message: str) -> None:
    """Checked before `local up` stops the running service or saves anything: a bad value must not take a healthy
    deployment down and stay saved for every later `up`."""
    from onboarding.local.serve import check_settings

    with pytest.raises(InvalidInput, match=re.escape(message)):
        check_settings(setting)
    check_settings({"origin_max_concurrency": "8", "kms_previous_key_ids": '["old"]', "prefetcher": ""})


def test_a_state_directory_that_holds_something_else_is_never_adopted(tmp_path: Path) -> None:
    """`down --purge` deletes a directory that carries the marker: `up` must not mark a user's directory."""
    from onboarding.state import StatePaths

    mine = tmp_path / "notes"
    mine.mkdir(mode=0o755)
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(InvalidInput, match="is not a Foresight state directory"):
        StatePaths(mine).create()
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and mine.stat().st_mode & 0o777 == 0o755
    fresh, empty = StatePaths(tmp_path / "new"), StatePaths(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    for paths in (fresh, empty, fresh):  # new, empty, or ours already
        paths.create()
        assert paths.marker.exists()


@pytest.mark.parametrize("origin", ["/srv/data", "file:///srv/data", "s3://bucket/prefix", "gs://bucket",
                                    "az://container/dir"])
def test_origins_the_service_can_open_are_accepted(origin: str) -> None:
    assert quota_for("starter", origin=origin).origin == origin


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("notaproto://x", "protocol 'notaproto' is not an origin Foresight reads"),
        ("nosuch::s3://bucket", "a chained URL (::) is not an origin"),
        ("data/objects", "must be an absolute path"),
        ("", "must be an absolute path"),
    ],
)
def test_origins_the_service_cannot_open_are_refused(origin: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        quota_for("starter", origin=origin)


def test_scopes_must_name_known_scopes() -> None:
    assert parse_scopes(" read, write ") == ["read", "write"]
    with pytest.raises(InvalidInput, match="names no scope"):
        parse_scopes(" , ")
    with pytest.raises(InvalidInput, match="unknown scope 'READ', 'all'"):
        parse_scopes("READ,write,all")


def test_create_help_gives_each_plans_quota() -> None:
    assert plans_help() == ("starter (64 MiB, 500/s), pro (1,024 MiB, 5,000/s), enterprise (8,192 MiB, no rate "
                            "limit), or custom (needs --memory and --rps)")
    shown = invoke("tenants", "create", "--help")
    assert "no rate" in shown.stdout and "limit), or custom" in shown.stdout  # (Rich wraps the rest in its box)
