"""No secret ever reaches a log line, an exception message or an audit line: every issued key, Vault token
and AppRole secret used in a full key lifecycle is searched for in everything that was logged (DEBUG and up,
including hvac, requests and urllib3) and in every error raised on the way; and the AWS signatures the service
makes (the Vault aws login, the ElastiCache IAM password) never reach the service's own DEBUG log."""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
from base64 import b64decode
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import hvac
import pytest
from botocore.credentials import Credentials
from pydantic import SecretStr

from service.logs import CREDENTIAL_LOGGERS, setup_logging
from service.security.audit import AuditLog, AuditSecretError
from service.security.vault_auth import VaultAuthError, VaultAuthSettings, VaultSession, aws_iam_login_payload, login
from service.security.vault_keys import KeyNotActive, VaultKeyAdmin, VaultKeyStoreError
from service.security.vault_source import VaultKeySource
from service.shared_tier_auth import ElastiCacheIam
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
    wrong = secret_id[:-4] + ("1111" if secret_id.endswith("0000") else "0000")
    with pytest.raises(VaultAuthError) as info:
        login(settings.model_copy(update={"secret_id": SecretStr(wrong)}))
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


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """What `setup_logging("debug")`, the service's own set-up, writes; the test process's logging is put back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in CREDENTIAL_LOGGERS}
    setup_logging("debug")
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in levels.items():
            logging.getLogger(name).setLevel(was)


def test_debug_logging_shows_no_aws_signature_or_session_token(service_log: io.StringIO) -> None:
    """botocore logs the canonical request and the signature at DEBUG: with the service at log_level=debug, a log
    reader could rebuild the ElastiCache IAM password (a presigned URL) and replay the Vault aws login."""
    session_token = "IQoJb3JpZ2luX2VjEFAKESESSIONTOKEN" + "x" * 24
    credentials = Credentials("AKIAFAKEACCESSKEY123", "fake/secret/access/key/0123456789abcdef", session_token)
    payload = aws_iam_login_payload(role="foresight", credentials=credentials, header_value="vault.example")
    password, _ = ElastiCacheIam("foresight-node", "fs-tier", "eu-west-1", credentials).fetch()
    logging.getLogger("service").debug("the service's own debug lines still show")

    login_signature = re.search(r"Signature=([0-9a-f]{64})", b64decode(payload["iam_request_headers"]).decode())
    tier_signature = parse_qs(urlsplit("https://" + password).query)["X-Amz-Signature"][0]
    assert login_signature is not None
    text = service_log.getvalue()
    assert "the service's own debug lines still show" in text
    for secret in (session_token, credentials.secret_key, login_signature.group(1), tier_signature):
        assert secret not in text, "an AWS credential reached the service's debug log"
    assert "botocore" not in text


def test_scrub_recognises_real_openbao_tokens(bao_root: hvac.Client, tmp_path: Path) -> None:
    token = bao_root.auth.token.create(policies=["default"], ttl="1m")["auth"]["client_token"]
    with AuditLog(tmp_path / "audit.jsonl") as audit, pytest.raises(AuditSecretError):
        audit.record("admin.login", actor="admin:ops", note=f"used {token}")
