"""`metrics-token rotate` writes to the stack's own KV mount unless told otherwise, says which, and with `--output`
replaces Prometheus's token file only once Vault holds the new token."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import hvac
import pytest
import yaml

from onboarding import metrics_token_cli
from onboarding.errors import EXIT_USAGE, EXIT_VAULT
from tests.onboarding.test_cli import one_line_error
from tests.onboarding.test_metrics_token_cli import rotate
from tests.security.helpers import unique
from tests.servers import OpenBao, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack_mount(vault_env: Path, bao: OpenBao, monkeypatch: pytest.MonkeyPatch) -> str:
    """A stack whose KV mount (foresight-<stack>) exists, and a token that may write it (root, as a stack's
    operator's would for its own mount); FORESIGHT_VAULT_KV_MOUNT unset."""
    stack = unique("mounted")
    bao.client().sys.enable_secrets_engine("kv", path=f"foresight-{stack}", options={"version": "2"})
    monkeypatch.setenv("VAULT_TOKEN", bao.token)
    return stack


def _stored(bao: OpenBao, mount: str, stack: str) -> tuple[str, int]:
    reply = bao.client().secrets.kv.v2.read_secret_version(f"deployments/{stack}/metrics", mount_point=mount,
                                                           raise_on_deleted_version=True)
    return reply["data"]["data"]["token"], reply["data"]["metadata"]["version"]


def test_a_stacks_token_goes_to_the_stacks_own_mount(stack_mount: str, bao: OpenBao) -> None:
    result = rotate("--stack", stack_mount)
    assert result.exit_code == 0, result.output
    mount = f"foresight-{stack_mount}"
    assert _stored(bao, mount, stack_mount) == (result.stdout.strip(), 1)
    assert f"written to {mount}/deployments/{stack_mount}/metrics (KV mount {mount}: the stack's" in result.stderr
    with pytest.raises(hvac.exceptions.InvalidPath):  # nothing in the service's default mount
        bao.client().secrets.kv.v2.read_secret_version(f"deployments/{stack_mount}/metrics", mount_point="foresight",
                                                       raise_on_deleted_version=True)


def test_the_stacks_mount_is_named_after_the_pulumi_project() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["name"]
    assert project == metrics_token_cli.STACKS_PROJECT


def test_a_path_with_no_mount_named_is_exit_2(vault_env: Path) -> None:
    result = rotate("--path", "eks/metrics")
    assert result.exit_code == EXIT_USAGE, result.output
    assert one_line_error(result.stderr) == ("error: FORESIGHT_VAULT_KV_MOUNT: not set: with --path, set it to the "
                                             "workload's KV mount (its vaultKvMount)")


def test_output_writes_a_private_token_file_and_prints_no_token(stack_mount: str, bao: OpenBao,
                                                                tmp_path: Path) -> None:
    (tmp_path / "prometheus").mkdir()
    token_file = tmp_path / "prometheus" / "foresight-metrics-token"
    result = rotate("--stack", stack_mount, "--output", str(token_file))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    token, _ = _stored(bao, f"foresight-{stack_mount}", stack_mount)
    assert token_file.read_text() == f"{token}\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600  # a new file: private
    assert sorted(p.name for p in token_file.parent.iterdir()) == ["foresight-metrics-token"]
    token_file.chmod(0o640)  # as an operator lets Prometheus's group read it
    as_json = rotate("--stack", stack_mount, "--output", str(token_file), "--json")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o640  # a replaced file keeps its mode (and owner)
    assert json.loads(as_json.stdout) == {"output": str(token_file), "version": 2,
                                          "vault_path": f"foresight-{stack_mount}/deployments/{stack_mount}/metrics"}
    assert token_file.read_text() == f"{_stored(bao, f'foresight-{stack_mount}', stack_mount)[0]}\n"


def test_a_failed_rotation_leaves_the_token_file_as_it_was(vault_env: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "prometheus").mkdir()
    token_file = tmp_path / "prometheus" / "foresight-metrics-token"
    token_file.write_text("the token Prometheus uses\n")
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    result = rotate("--stack", "prod", "--output", str(token_file))
    assert result.exit_code == EXIT_VAULT, result.output
    assert token_file.read_text() == "the token Prometheus uses\n"
    assert sorted(p.name for p in token_file.parent.iterdir()) == ["foresight-metrics-token"]


def test_an_output_directory_that_cannot_take_the_file_stops_before_vault(stack_mount: str, bao: OpenBao,
                                                                          tmp_path: Path) -> None:
    result = rotate("--stack", stack_mount, "--output", str(tmp_path / "missing" / "token"))
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"--output {tmp_path / 'missing' / 'token'}: cannot write there" in one_line_error(result.stderr)
    with pytest.raises(hvac.exceptions.InvalidPath):
        _stored(bao, f"foresight-{stack_mount}", stack_mount)
