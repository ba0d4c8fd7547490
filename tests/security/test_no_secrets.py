"""No secret ever reaches a log line, an exception message or an audit line: every issued key, Vault token
and AppRole secret used in a full key lifecycle is searched for in everything that was logged (DEBUG and up,
including hvac, requests and urllib3) and in every error raised on the way."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import hvac
import pytest
from pydantic import SecretStr

from service.security.audit import AuditLog, AuditSecretError
from service.security.vault_auth import VaultAuthError, VaultAuthSettings, VaultSession, login
from service.security.vault_keys import KeyNotActive, VaultKeyAdmin, VaultKeyStoreError
from service.security.vault_source import VaultKeySource
from service.tenancy import TenantSpec
from tests.security.helpers import unique
from tests.servers import OpenBao


def test_key_lifecycle_leaves_no_secret_in_logs_errors_or_audit(
    openbao: OpenBao,
    bao_root: hvac.Client,
    key_admin: VaultKeyAdmin,
    service_client: hvac.Client,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [str(service_client.token), str(key_admin.client.token)]
    errors: list[str] = []
    tenant = unique("nosecret")
    key_admin.create_tenant(TenantSpec(name=tenant))
    source = VaultKeySource(service_client)
    audit = AuditLog(tmp_path / "audit.jsonl")

    first = key_admin.issue_key(tenant, ["read", "write"])
    second = key_admin.rotate_key(first.key_id, overlap=dt.timedelta(seconds=30))
    secrets += [first.secret, second.secret]
    for key in (first, second):
        principal = source.authenticate(key.secret)
        assert principal is not None
        audit.auth_success(tenant=principal.tenant, key_id=principal.key_id, source="127.0.0.1:1", listener="resp")
    key_admin.revoke_key(first.key_id)
    source.forget()
    assert source.authenticate(first.secret) is None
    audit.auth_failure(key_id=first.key_id, source="127.0.0.1:2", listener="http", reason="revoked")
    for attempt in (
        lambda: key_admin.rotate_key(first.key_id, overlap=dt.timedelta(seconds=1)),
        lambda: VaultKeyAdmin(service_client).issue_key(tenant),
        lambda: audit.record("auth", actor="x", note=f"client sent {second.secret}"),
    ):
        with pytest.raises((KeyNotActive, VaultKeyStoreError, AuditSecretError)) as info:
            attempt()
        errors.append(f"{info.value!s} {info.value!r}")

    if "approle/" not in bao_root.sys.list_auth_methods()["data"]:
        bao_root.sys.enable_auth_method("approle")
    bao_root.auth.approle.create_or_update_approle("nosecret", token_policies=["foresight-service"], token_ttl="5m")
    role_id = bao_root.auth.approle.read_role_id("nosecret")["data"]["role_id"]
    secret_id = bao_root.auth.approle.generate_secret_id("nosecret")["data"]["secret_id"]
    settings = VaultAuthSettings(addr=openbao.addr, method="approle", role_id=role_id, secret_id=SecretStr(secret_id))
    session = VaultSession(settings)
    session.login()
    secrets += [secret_id, str(session.client.token)]
    errors.append(repr(settings))
    with pytest.raises(VaultAuthError) as info:
        login(settings.model_copy(update={"secret_id": SecretStr(secret_id[:-4] + "0000")}))
    errors.append(str(info.value))
    audit.close()

    haystacks = {
        "logs": caplog.text + "\n".join(str(r.args) for r in caplog.records),
        "errors": "\n".join(errors),
        "audit": (tmp_path / "audit.jsonl").read_text(),
    }
    # Logging really was captured, down to the HTTP library, and names keys by their public id.
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    assert first.key_id in caplog.text
    for secret in secrets:
        body = secret.split("_", 2)[-1]  # for API keys, the secret part alone must not leak either
        for where, text in haystacks.items():
            assert secret not in text, f"a secret leaked into {where}"
            assert body not in text, f"a key's secret part leaked into {where}"


def test_scrub_recognises_real_openbao_tokens(bao_root: hvac.Client, tmp_path: Path) -> None:
    token = bao_root.auth.token.create(policies=["default"], ttl="1m")["auth"]["client_token"]
    with AuditLog(tmp_path / "audit.jsonl") as audit, pytest.raises(AuditSecretError):
        audit.record("admin.login", actor="admin:ops", note=f"used {token}")
