"""The node's user data, checked by the real tools: cloud-init's schema, systemd's unit verifier, sh's parser."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from stacks.cloudinit import NVIDIA_CTK_VERSION, RUNTIME_SCRIPT, NodeBoot, render_env_file, render_user_data
from stacks.policies.rules import SECRET_PATTERNS
from tests.images.tools import require_tool
from tests.stacks.conftest import RunStack
from tests.stacks.mockrun import MockRun, user_data
from tests.stacks.test_azure_stack import azure_user_data
from tests.stacks.test_gcp_stack import gcp_user_data

# Each cloud's baseline document (a key of `documents`), the fixture of its stack run, and its stack name.
CLOUD_RUNS = {"baseline": ("baseline", "aws-test"), "gcp": ("gcp_baseline", "gcp-test"),
              "azure": ("azure_baseline", "azure-test")}
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHrYwJmqmn0Dbj1o4Qh0XGnQKiqLQ9Nn3mTBRJm8Ifj8 ops@example"


def _files(document: str) -> dict[str, str]:
    return {entry["path"]: entry["content"] for entry in yaml.safe_load(document)["write_files"]}


@pytest.fixture(scope="module")
def documents(
    baseline: MockRun,
    run_stack: RunStack,
    gcp_baseline: MockRun,
    run_gcp_stack: RunStack,
    azure_baseline: MockRun,
    run_azure_stack: RunStack,
) -> dict[str, str]:
    ssh_spot = {"foresight:sshPublicKey": SSH_KEY, "foresight:spot": "true"}
    return {
        "baseline": user_data(baseline),
        "ssh+spot": user_data(run_stack(ssh_spot)),
        "gcp": gcp_user_data(gcp_baseline),
        "gcp ssh+spot": gcp_user_data(run_gcp_stack(ssh_spot)),
        "azure": azure_user_data(azure_baseline),
        "azure ssh+spot": azure_user_data(run_azure_stack(ssh_spot)),
    }


@pytest.mark.parametrize("variant", ["baseline", "ssh+spot", "gcp", "gcp ssh+spot", "azure", "azure ssh+spot"])
def test_user_data_passes_cloud_init_schema(documents: dict[str, str], variant: str, tmp_path: Path) -> None:
    path = tmp_path / "user-data.yaml"
    path.write_text(documents[variant])
    result = subprocess.run(
        [require_tool("cloud-init"), "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_service_unit_passes_systemd_verify(documents: dict[str, str], tmp_path: Path) -> None:
    unit = _files(documents["baseline"])["/etc/systemd/system/foresight.service"]
    # This machine has no Docker: point the unit at a stub so verify checks the unit, not the host.
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\n")
    docker.chmod(0o755)
    (tmp_path / "foresight.service").write_text(unit.replace("/usr/bin/docker", str(docker)))
    (tmp_path / "docker.service").write_text("[Service]\nExecStart=/bin/true\n")
    result = subprocess.run(
        [require_tool("systemd-analyze"), "verify", "--man=no", str(tmp_path / "foresight.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_service_unit_restarts_the_gpu_container_after_fetching_tls(documents: dict[str, str]) -> None:
    unit = _files(documents["baseline"])["/etc/systemd/system/foresight.service"]
    lines = unit.splitlines()
    starts = [line for line in lines if line.startswith("ExecStartPre=")]
    assert starts[0] == "ExecStartPre=/usr/bin/mountpoint -q /var/lib/foresight"
    assert starts[1].startswith(
        "ExecStartPre=/usr/bin/python3 /usr/local/lib/foresight/fetch_tls.py --out /run/foresight/tls"
    )
    run = next(line for line in lines if line.startswith("ExecStart="))
    for flag in (
        "--gpus all",
        "--publish 6380:6380",
        "--publish 8443:8443",
        "/run/foresight/tls:/etc/foresight/tls:ro",
    ):
        assert flag in run
    assert "Restart=always" in lines
    assert "WantedBy=multi-user.target" in lines


@pytest.mark.parametrize("variant", ["baseline", "ssh+spot", "gcp", "gcp ssh+spot", "azure", "azure ssh+spot"])
def test_an_hourly_timer_renews_tls_daily_and_on_a_new_ca_while_the_service_runs(
    documents: dict[str, str], variant: str
) -> None:
    """The node's certificate is renewed about daily, and a rotated CA reaches it within the hour."""
    files = _files(documents[variant])
    timer = files["/etc/systemd/system/foresight-tls-refresh.timer"].splitlines()
    assert {"OnCalendar=hourly", "Persistent=true", "Unit=foresight-tls-refresh.service"} <= set(timer)
    assert "WantedBy=timers.target" in timer
    job = files["/etc/systemd/system/foresight-tls-refresh.service"].splitlines()
    unit = files["/etc/systemd/system/foresight.service"].splitlines()
    fetch = next(line for line in unit if "fetch_tls.py" in line).removeprefix("ExecStartPre=")
    assert "--renew-after" not in fetch  # a service start always issues
    # the same files, group and settings as at start; a new certificate once the held one is 23 hours old
    assert f"ExecStart={fetch} --renew-after {23 * 3600}" in job
    assert "EnvironmentFile=/etc/foresight/foresight.env" in job and "Type=oneshot" in job
    assert "ExecCondition=/usr/bin/systemctl is-active --quiet foresight.service" in job
    runcmd = yaml.safe_load(documents[variant])["runcmd"]
    assert runcmd.index(["systemctl", "enable", "--now", "foresight-tls-refresh.timer"]) > runcmd.index(
        ["systemctl", "enable", "--now", "foresight.service"]
    )


def test_refresh_timer_and_its_job_pass_systemd_verify(documents: dict[str, str], tmp_path: Path) -> None:
    files = _files(documents["baseline"])
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    for name in ("foresight-tls-refresh.service", "foresight-tls-refresh.timer"):
        text = files[f"/etc/systemd/system/{name}"].replace("/usr/bin/python3", str(python))
        (tmp_path / name).write_text(text)
    (tmp_path / "foresight.service").write_text("[Service]\nExecStart=/bin/true\n")
    result = subprocess.run(
        [require_tool("systemd-analyze"), "verify", "--man=no", *(str(tmp_path / name) for name in (
            "foresight-tls-refresh.timer", "foresight-tls-refresh.service"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_only_google_clouds_node_installs_the_container_runtime(documents: dict[str, str]) -> None:
    """AWS's and Azure's GPU images ship Docker and the toolkit; Google Cloud's Ubuntu accelerator image does not."""
    for variant, document in documents.items():
        installs = any(RUNTIME_SCRIPT.name in " ".join(command) for command in yaml.safe_load(document)["runcmd"])
        assert installs == variant.startswith("gcp"), variant


def test_the_runtime_installer_gets_the_toolkit_floor_the_packer_templates_pass() -> None:
    for template in sorted((RUNTIME_SCRIPT.parents[1]).glob("*/foresight.pkr.hcl")):
        floor = re.search(r'variable "nvidia_container_toolkit_version" \{[^}]*default\s*=\s*"([^"]*)"',
                          template.read_text())
        assert floor is not None and floor[1] == NVIDIA_CTK_VERSION, template


def test_data_volume_script_parses_in_sh() -> None:
    script = Path(__file__).resolve().parents[2] / "stacks/boot/mount_data_volume.sh"
    for shell in ("sh", "bash"):
        result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


def test_installed_fetch_script_is_byte_for_byte_the_tested_one(documents: dict[str, str]) -> None:
    installed = _files(documents["baseline"])["/usr/local/lib/foresight/fetch_tls.py"]
    source = Path(__file__).resolve().parents[2] / "stacks/boot/fetch_tls.py"
    assert installed == source.read_text()


def test_user_data_matches_no_secret_pattern(documents: dict[str, str]) -> None:
    for document in documents.values():
        assert [what for what, pattern in SECRET_PATTERNS.items() if pattern.search(document)] == []


def test_env_file_refuses_values_that_would_break_out() -> None:
    assert render_env_file({"FORESIGHT_A": "https://vault:8200"}) == "FORESIGHT_A=https://vault:8200\n"
    for value in ("a b", "a\nEVIL=1", 'a"b', "$(id)"):
        with pytest.raises(ValueError, match="not safe"):
            render_env_file({"FORESIGHT_A": value})


def test_ssh_is_switched_off_without_a_key() -> None:
    def runcmd(ssh: bool) -> list[list[str]]:
        boot = NodeBoot(image="ghcr.io/foresight/foresight:0.1.0", environment={}, data_disk="x", ssh_enabled=ssh)
        return list(yaml.safe_load(render_user_data(boot))["runcmd"])

    assert ["sh", "-c", "systemctl disable --now ssh.socket ssh.service || true"] in runcmd(False)
    assert not any("ssh" in " ".join(command) for command in runcmd(True))


def test_service_settings_accept_the_node_environment(
    documents: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env file the node writes, read by the service's own settings loader (what `foresight serve` does)."""
    from service.config import load_settings

    text = _files(documents["baseline"])["/etc/foresight/foresight.env"]
    environment = dict(line.split("=", 1) for line in text.splitlines())
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.vault_addr == "https://vault.example.test:8200"
    assert (settings.vault_auth_method, settings.vault_auth_mount) == ("aws", "foresight-aws-test-aws")
    assert (settings.vault_role, settings.vault_kv_mount) == ("foresight-aws-test-node", "foresight-aws-test")
    assert settings.kms_provider == "aws" and settings.kms_key_id.startswith("arn:aws:kms:us-east-1:")
    assert settings.tls_cert_file == Path("/etc/foresight/tls/tls.crt")
    assert settings.tls_key_file == Path("/etc/foresight/tls/tls.key")
    assert settings.data_dir == Path("/var/lib/foresight")
    assert settings.vault_metrics_path == "deployments/aws-test/metrics"


@pytest.mark.parametrize("variant", sorted(CLOUD_RUNS))
def test_node_reads_the_scrape_token_that_rotate_writes_and_its_policy_allows(
    documents: dict[str, str], variant: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`foresight metrics-token rotate --stack S` writes deployments/S/metrics; the node must be told to read it."""
    from onboarding.metrics_token_cli import vault_path
    from service.config import load_settings

    fixture, stack = CLOUD_RUNS[variant]
    text = _files(documents[variant])["/etc/foresight/foresight.env"]
    environment = dict(line.split("=", 1) for line in text.splitlines())
    assert environment.get("FORESIGHT_VAULT_METRICS_PATH") == vault_path(stack)
    policy = request.getfixturevalue(fixture).one("vault:index/policy:Policy").props["policy"]
    readable = dict(re.findall(r'path "([^"]+)" \{\s*capabilities = \[([^\]]*)\]', policy))
    assert readable[f"{environment['FORESIGHT_VAULT_KV_MOUNT']}/data/{vault_path(stack)}"] == '"read"'
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert load_settings().vault_metrics_path == vault_path(stack)
