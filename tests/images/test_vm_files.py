"""The VM image's systemd units and shell scripts: systemd-analyze and shellcheck find nothing (shellcheck also on
the script every stack node is given and on scripts/, which CI runs); the provisioning steps that decide something
(which toolkit to keep, which apt sources to rewrite) decide right."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.images.tools import IMAGES, REPO, require_tool

FILES = IMAGES / "packer" / "files"
UNIT = FILES / "foresight.service"
UNITS = sorted([*FILES.glob("*.service"), *FILES.glob("*.timer")])
# The images' scripts, the data-volume script the stacks write to every node, scripts/ and CI's entry point.
SCRIPTS = sorted(
    [*IMAGES.rglob("*.sh"), *(REPO / "stacks/boot").glob("*.sh"), *(REPO / "scripts").glob("*.sh"), REPO / ".ci/run"]
)
PROVISION = IMAGES / "packer" / "provision"


def stub_root(root: Path) -> None:
    """A root with what the units refer to outside themselves: the docker binary, the first-boot scripts that the
    launch template's cloud-config writes, and the units they order after."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/local/lib/foresight").mkdir(parents=True)
    for executable in ("usr/bin/docker", "usr/local/lib/foresight/mount_data_volume.sh",
                       "usr/local/lib/foresight/first_boot.sh"):
        (root / executable).write_text("#!/bin/sh\n")
        (root / executable).chmod(0o755)
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "docker.service").write_text("[Service]\nExecStart=/usr/bin/docker\n")
    for name in (
        "network-online.target",
        "multi-user.target",
        "basic.target",
        "sysinit.target",
        "shutdown.target",
        "sockets.target",
        "timers.target",
        "paths.target",
        "slices.target",
        "local-fs.target",
        "swap.target",
        "network.target",
        "system.slice",
        "-.slice",
    ):
        host_unit = Path("/usr/lib/systemd/system", name)
        if host_unit.exists():
            shutil.copy(host_unit, units / name)
    (units / "cloud-init.service").write_text("[Service]\nType=oneshot\nExecStart=/usr/bin/docker\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    stub_root(tmp_path)
    result = subprocess.run([analyze, "verify", f"--root={tmp_path}", unit.name], capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_the_images_units_are_the_first_boot_the_service_and_the_tls_renewal() -> None:
    assert [unit.name for unit in UNITS] == [
        "foresight-first-boot.service",
        "foresight-tls-renew.service",
        "foresight-tls-renew.timer",
        "foresight.service",
    ]


def test_systemd_unit_waits_for_instance_configuration() -> None:
    text = UNIT.read_text()
    assert "ConditionPathExists=/etc/foresight/foresight.env" in text
    assert "--gpus all" in text and "--cap-drop ALL" in text and "--read-only" in text


def test_the_service_reads_the_conf_files_at_the_paths_foresight_env_names() -> None:
    """foresight.env names conf files by their host path (on a marketplace node first_boot.sh adds
    FORESIGHT_METRICS_TOKEN_FILE=/etc/foresight/conf/metrics.token once first boot has written that file), so the
    container must see the conf directory at the same path."""
    text = UNIT.read_text()
    assert "--env-file /etc/foresight/foresight.env" in text
    assert "--volume /etc/foresight/conf:/etc/foresight/conf:ro" in text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run(
        [require_tool("shellcheck"), "--severity=info", str(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- 10-container-runtime.sh: keep a base's toolkit that is new enough, install only what is missing or old ----


CONTAINER_RUNTIME = PROVISION / "10-container-runtime.sh"


def _stub(directory: Path, name: str, body: str) -> None:
    (directory / name).write_text(f"#!/bin/sh\n{body}\n")
    (directory / name).chmod(0o755)


def run_sourced(script: Path, commands: str, stubs: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    """`commands` in bash after sourcing `script`, which then only defines its functions: it runs its main part
    only when executed. Stubs come first on PATH."""
    assert 'if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then' in script.read_text()  # else sourcing would run it all
    path = f"{stubs}:{os.environ['PATH']}"
    return subprocess.run(
        ["bash", "-c", f'source "$1"\n{commands}', "test", str(script)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": path, **environment},
    )


@pytest.mark.parametrize(
    ("dpkg_status", "minimum", "plan"),
    [
        (None, "1.17.8-1", "install"),  # no toolkit on the base
        ("config-files 1.17.8-1", "1.17.8-1", "install"),  # removed, its configuration left
        ("installed 1.17.8-1", "1.17.8-1", "keep"),
        ("installed 1.18.1-1", "1.17.8-1", "keep"),  # newer: pinning it would be a refused downgrade
        ("installed 1.17.3-1", "1.17.8-1", "upgrade"),
        ("installed 1.17.3-1", "", "keep"),  # no minimum: whatever the base ships
        (None, "", "install"),
    ],
)
def test_the_container_toolkit_plan_keeps_a_toolkit_that_is_new_enough(
    dpkg_status: str | None, minimum: str, plan: str, tmp_path: Path
) -> None:
    _stub(tmp_path, "dpkg-query", f"printf '%s' '{dpkg_status}'" if dpkg_status else "exit 1")
    result = run_sourced(CONTAINER_RUNTIME, f"toolkit_plan '{minimum}'", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == plan


def test_a_toolkit_the_base_holds_is_upgraded_and_held_again(tmp_path: Path) -> None:
    """Azure's HPC image holds the toolkit: apt-get -y would refuse to change it, so the packages are released,
    upgraded to the pin and held again; packages the base does not hold are left unheld."""
    log = tmp_path / "calls"
    _stub(tmp_path, "apt-mark", f'echo "apt-mark $*" >> {log}; [ "$1" = showhold ] && '
                                "printf 'nvidia-container-toolkit\\nlibnvidia-container1\\nlinux-image-azure\\n'; true")
    _stub(tmp_path, "apt-get", f'echo "apt-get $*" >> {log}')
    commands = f"add_nvidia_repository() {{ echo repository >> {log}; }}\ninstall_toolkit 1.17.8-1"
    result = run_sourced(CONTAINER_RUNTIME, commands, tmp_path)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "apt-mark showhold",
        "repository",
        "apt-mark unhold nvidia-container-toolkit libnvidia-container1",
        "apt-get install -y --no-install-recommends nvidia-container-toolkit=1.17.8-1 "
        "nvidia-container-toolkit-base=1.17.8-1 libnvidia-container-tools=1.17.8-1 libnvidia-container1=1.17.8-1",
        "apt-mark hold nvidia-container-toolkit libnvidia-container1",
    ]


def test_a_base_with_a_newer_held_toolkit_builds_without_touching_it(tmp_path: Path) -> None:
    """The whole step on a base that holds a newer toolkit: no apt-get install, no repository, no apt-mark."""
    log = tmp_path / "calls"
    _stub(tmp_path, "dpkg-query", "printf 'installed 1.18.1-1'")
    for name in ("apt-get", "apt-mark", "nvidia-ctk", "systemctl", "curl", "gpg"):
        _stub(tmp_path, name, f'echo "{name} $*" >> {log}')
    _stub(tmp_path, "docker", f'echo "docker $*" >> {log}; echo \'{{"nvidia":{{}}}}\'')
    result = run_sourced(
        CONTAINER_RUNTIME,
        f"add_nvidia_repository() {{ echo repository >> {log}; }}\nmain",
        tmp_path,
        NVIDIA_CTK_VERSION="1.17.8-1",
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "apt-get update"
    assert not [call for call in calls if call.startswith(("apt-get install", "apt-mark", "repository"))], calls
    assert "nvidia-ctk runtime configure --runtime=docker" in calls


# --- 05-apt-https.sh: every apt source over https://, since a node may leave only to TCP/443 ----------------


APT_HTTPS = PROVISION / "05-apt-https.sh"
SOURCES_LIST = """\
## Note, this file is written by cloud-init on first boot of an instance
# See http://help.ubuntu.com/community/UpgradeNotes for how to upgrade to
deb http://us-east-1.ec2.archive.ubuntu.com/ubuntu/ jammy main restricted
# deb-src http://us-east-1.ec2.archive.ubuntu.com/ubuntu/ jammy main restricted
deb http://us-east-1.ec2.archive.ubuntu.com/ubuntu/ jammy-updates main restricted
deb http://security.ubuntu.com/ubuntu jammy-security main restricted
"""
GOOGLE_LIST = "deb [signed-by=/usr/share/keyrings/google.gpg] http://packages.cloud.google.com/apt cloud-sdk main\n"
NVIDIA_LIST = "deb [signed-by=/x.gpg] https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64 /\n"
UBUNTU_SOURCES = """\
Types: deb
URIs: http://azure.archive.ubuntu.com/ubuntu/
Suites: noble noble-updates
Components: main restricted
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg
"""


def run_apt_https(
    tmp_path: Path, update_output: str, **environment: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The script on a scratch /etc/apt holding the bases' kinds of source, with apt-get a stub that prints
    `update_output`, and a scratch cloud.cfg.d."""
    text = APT_HTTPS.read_text()
    # Never let a version of the script that ignores the scratch directories rewrite this machine's apt sources.
    assert 'apt_dir="${FORESIGHT_APT_DIR:-/etc/apt}"' in text and 'cloud_cfg_dir="${FORESIGHT_CLOUD_CFG_DIR:-' in text
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text(SOURCES_LIST)
    (apt / "sources.list.d/google-cloud.list").write_text(GOOGLE_LIST)
    (apt / "sources.list.d/cuda.list").write_text(NVIDIA_LIST)
    (apt / "sources.list.d/ubuntu.sources").write_text(UBUNTU_SOURCES)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    _stub(stubs, "apt-get", f"cat <<'EOF'\n{update_output}\nEOF")
    path = f"{stubs}:{os.environ['PATH']}"
    assert shutil.which("apt-get", path=path) == str(stubs / "apt-get")
    scratch = {"FORESIGHT_APT_DIR": str(apt), "FORESIGHT_CLOUD_CFG_DIR": str(tmp_path / "cloud.cfg.d"),
               "FORESIGHT_FILES": str(FILES)}
    result = subprocess.run(
        ["bash", str(APT_HTTPS)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": path, **scratch, **environment},
    )
    return result, apt


HITS = "Hit:1 https://us-east-1.ec2.archive.ubuntu.com/ubuntu jammy InRelease\nReading package lists..."


def test_every_apt_source_is_switched_to_https_and_cloud_init_keeps_them(tmp_path: Path) -> None:
    result, apt = run_apt_https(tmp_path, HITS)
    assert result.returncode == 0, result.stderr
    sources = (apt / "sources.list").read_text().splitlines()
    assert sources[2:] == [
        "deb https://us-east-1.ec2.archive.ubuntu.com/ubuntu/ jammy main restricted",
        "# deb-src http://us-east-1.ec2.archive.ubuntu.com/ubuntu/ jammy main restricted",  # comments stay
        "deb https://us-east-1.ec2.archive.ubuntu.com/ubuntu/ jammy-updates main restricted",
        "deb https://security.ubuntu.com/ubuntu jammy-security main restricted",
    ]
    assert sources[1] == SOURCES_LIST.splitlines()[1]
    assert (apt / "sources.list.d/google-cloud.list").read_text() == GOOGLE_LIST.replace("http://", "https://")
    assert (apt / "sources.list.d/cuda.list").read_text() == NVIDIA_LIST
    assert "URIs: https://azure.archive.ubuntu.com/ubuntu/" in (apt / "sources.list.d/ubuntu.sources").read_text()
    kept = tmp_path / "cloud.cfg.d/98-foresight-apt.cfg"
    assert kept.read_text() == (FILES / "98-foresight-apt.cfg").read_text()
    assert "preserve_sources_list: true" in kept.read_text()


def test_ubuntu_mirror_replaces_canonicals_hosts_for_archive_and_security(tmp_path: Path) -> None:
    mirror = "https://mirrors.edge.kernel.org/ubuntu/"
    result, apt = run_apt_https(tmp_path, HITS, UBUNTU_MIRROR=mirror)
    assert result.returncode == 0, result.stderr
    entries = [line for line in (apt / "sources.list").read_text().splitlines() if line.startswith("deb ")]
    assert entries == [
        f"deb {mirror} jammy main restricted",
        f"deb {mirror} jammy-updates main restricted",
        f"deb {mirror} jammy-security main restricted",
    ]
    assert f"URIs: {mirror}\n" in (apt / "sources.list.d/ubuntu.sources").read_text()
    assert (apt / "sources.list.d/google-cloud.list").read_text() == GOOGLE_LIST.replace("http://", "https://")


@pytest.mark.parametrize(
    "update_output",
    [
        "Err:1 https://us-east-1.ec2.archive.ubuntu.com/ubuntu jammy InRelease\n  Could not handshake",
        "W: Failed to fetch https://us-east-1.ec2.archive.ubuntu.com/ubuntu/dists/jammy/InRelease",
        "W: Some index files failed to download. They have been ignored, or old ones used instead.",
    ],
    ids=["err", "failed-to-fetch", "index-files"],
)
def test_the_build_fails_when_a_source_does_not_serve_https(update_output: str, tmp_path: Path) -> None:
    result, _ = run_apt_https(tmp_path, update_output)
    assert result.returncode == 1
    assert "set UBUNTU_MIRROR (packer: ubuntu_mirror)" in result.stderr
    assert not (tmp_path / "cloud.cfg.d").exists()


def test_ubuntu_mirror_must_be_https(tmp_path: Path) -> None:
    result, apt = run_apt_https(tmp_path, HITS, UBUNTU_MIRROR="http://mirror.example/ubuntu/")
    assert result.returncode == 1 and "is not an https:// URL" in result.stderr
    assert (apt / "sources.list").read_text() == SOURCES_LIST
