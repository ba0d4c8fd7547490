"""The pod's init-container Vault login (stacks/boot/fetch_tls.py, jwt method, FORESIGHT_VAULT_JWT_SOURCE=file),
against OpenBao's real jwt auth method configured as docs/kubernetes.md says.

A test key stands in for the cluster's OIDC issuer; the token file is shaped like a projected service-account
token. The settings come from the rendered ConfigMap itself (only Vault's address and the token's path differ), and
the script runs as the init container runs it: `python -m stacks.boot.fetch_tls`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stacks.boot import fetch_tls
from stacks.kubernetes.manifests import render
from stacks.kubernetes.pod import FETCH_TLS_COMMAND
from stacks.kubernetes.spec import WorkloadSpec
from tests.security.metadata_fakes import JwtIssuer
from tests.servers import OpenBao
from tests.stacks.mockrun import REQUIRED_CONFIG
from tests.stacks.test_fetch_tls import StackVault, assert_issued_for, stack_in_vault
from tests.stacks.test_kubernetes_manifests import ROOT, spec_of

CLUSTER_ISSUER = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"


@dataclass
class Pod:
    spec: WorkloadSpec
    issuer: JwtIssuer
    token_file: Path
    env: dict[str, str]
    vault: StackVault

    def project_token(self, subject: str | None = None, audience: str | None = None) -> str:
        """Write a token as the kubelet projects it for the pod's service account."""
        now = int(time.time())
        claims = {
            "iss": CLUSTER_ISSUER,
            "aud": [audience or self.spec.vault_audience],
            "sub": subject or self.spec.bound_subject,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "kubernetes.io": {"namespace": self.spec.namespace, "serviceaccount": {"name": self.spec.name}},
        }
        token = self.issuer.sign(claims)
        self.token_file.write_text(token)
        return token

    def fetch(self, out: Path) -> subprocess.CompletedProcess[str]:
        """The init container's command (FETCH_TLS_COMMAND), with this interpreter and `out` for its paths."""
        command = [sys.executable, *FETCH_TLS_COMMAND[1:-1], str(out)]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def pod(openbao: OpenBao, monkeypatch: pytest.MonkeyPatch, issuer: JwtIssuer, tmp_path: Path) -> Iterator[Pod]:
    with stack_in_vault(openbao, monkeypatch, REQUIRED_CONFIG, "jwt") as vault:
        admin, layout = vault.admin, vault.layout
        spec = spec_of(
            vaultAuthMount=layout.auth_mount,
            vaultRole=layout.role,
            vaultKvMount=layout.kv_mount,
            vaultPkiMount=layout.pki_mount,
            vaultPkiRole=layout.pki_role,
            tlsCommonName=vault.host,
        )
        # docs/kubernetes.md: `bao auth enable jwt`, `bao write auth/<mount>/config ...`, `bao write .../role/...`
        admin.sys.enable_auth_method("jwt", path=layout.auth_mount)
        admin.auth.jwt.configure(
            jwt_validation_pubkeys=[issuer.public_pem], bound_issuer=CLUSTER_ISSUER, path=layout.auth_mount
        )
        admin.auth.jwt.create_role(
            layout.role,
            allowed_redirect_uris=[],
            role_type="jwt",
            user_claim="sub",
            bound_audiences=[spec.vault_audience],
            bound_subject=spec.bound_subject,
            token_policies=[layout.policy],
            token_ttl=3600,
            path=layout.auth_mount,
        )
        config = next(m for m in render(spec) if m["kind"] == "ConfigMap")["data"]
        token_file = tmp_path / "vault-token"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FORESIGHT_")},
            **config,
            "FORESIGHT_VAULT_ADDR": openbao.addr,
            "FORESIGHT_VAULT_JWT_FILE": str(token_file),
        }
        try:
            yield Pod(spec, issuer, token_file, env, vault)
        finally:
            admin.sys.disable_auth_method(layout.auth_mount)


def test_pod_logs_in_with_its_projected_token_and_issues_its_certificate(pod: Pod, tmp_path: Path) -> None:
    pod.project_token()
    out = tmp_path / "tls"
    result = pod.fetch(out)
    assert result.returncode == 0, result.stderr
    assert_issued_for(out, pod.vault.host, pod.vault.ca_pem)


@pytest.mark.parametrize(
    ("claim", "changes"),
    [("sub", {"subject": "system:serviceaccount:cache:intruder"}), ("aud", {"audience": "https://kubernetes.default"})],
)
def test_token_of_another_service_account_or_audience_is_refused_without_echoing_it(
    pod: Pod, tmp_path: Path, claim: str, changes: dict[str, str]
) -> None:
    token = pod.project_token(**changes)
    out = tmp_path / "tls"
    result = pod.fetch(out)
    assert result.returncode == 1
    assert result.stderr.startswith("fetch_tls: POST ") and "HTTP 400" in result.stderr
    assert token not in result.stderr and token not in result.stdout
    assert not out.exists()


def test_file_source_names_a_missing_unset_or_empty_token_file(tmp_path: Path) -> None:
    settings = {"FORESIGHT_VAULT_JWT_SOURCE": "file", "FORESIGHT_VAULT_ROLE": "r", "FORESIGHT_VAULT_AUTH_MOUNT": "jwt"}
    with pytest.raises(fetch_tls.BootstrapError, match="FORESIGHT_VAULT_JWT_FILE is unset"):
        fetch_tls.login_jwt(settings)
    absent = tmp_path / "absent"
    with pytest.raises(fetch_tls.BootstrapError, match=f"cannot read the identity token file {absent}"):
        fetch_tls.login_jwt({**settings, "FORESIGHT_VAULT_JWT_FILE": str(absent)})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(fetch_tls.BootstrapError, match=f"the identity token file {empty} is empty"):
        fetch_tls.login_jwt({**settings, "FORESIGHT_VAULT_JWT_FILE": str(empty)})


def test_main_passes_the_token_file_setting_through() -> None:
    assert "FORESIGHT_VAULT_JWT_FILE" in fetch_tls.JWT_SETTINGS
    assert fetch_tls.JWT_SOURCES["file"] is fetch_tls.file_jwt
