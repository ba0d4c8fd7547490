"""What every launch template shares: the first-boot scripts, the image's unit that runs them until first boot
succeeds, and the options each template hands them are ones that cloud's first_boot module accepts (so a renamed
option cannot slip past the templates' own tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from marketplace import first_boot
from marketplace.aws import first_boot as aws_first_boot
from marketplace.aws import template as aws_template
from marketplace.azure import first_boot as azure_first_boot
from marketplace.azure import template as azure_template
from marketplace.gcp import first_boot as gcp_first_boot
from marketplace.gcp import template as gcp_template
from marketplace.launch import DATA_VOLUME_DROP_IN, FIRST_BOOT, FIRST_BOOT_ENV, SERVICE_IDS
from stacks.cloudinit import BOOT_DIR, DATA_DIR, ENV_FILE, INSTALL_DIR
from tests.images.tools import require_tool
from tests.marketplace.cloud_config import FIRST_BOOT_UNIT, REPO, first_boot_env, unit_commands, written_files

CLOUDS: list[tuple[Callable[[], str], ModuleType]] = [
    (aws_template.user_data_text, aws_first_boot),
    (azure_template.custom_data_text, azure_first_boot),
    (gcp_template.user_data_text, gcp_first_boot),
]
CLOUD_IDS = ["aws", "azure", "gcp"]
DATA_VOLUME_SCRIPT = BOOT_DIR / "mount_data_volume.sh"


def test_the_first_boot_script_passes_shellcheck() -> None:
    result = subprocess.run([require_tool("shellcheck"), str(FIRST_BOOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(("user_data", "module"), CLOUDS, ids=CLOUD_IDS)
def test_each_template_runs_its_clouds_first_boot_with_options_it_accepts(
    user_data: Callable[[], str], module: ModuleType, tmp_path: Path
) -> None:
    commands = unit_commands(yaml.safe_load(user_data()))
    assert commands["ExecStart"][:3] == [f"{INSTALL_DIR}/first_boot.sh", module.__name__.split(".")[1], SERVICE_IDS]
    options = commands["ExecStart"][3:]
    parsed = vars(module.arguments().parse_args([*options, "--out", str(tmp_path)]))  # exits 2 on a bad option
    pairs = zip(options[::2], options[1::2], strict=True)
    given = {option.removeprefix("--").replace("-", "_"): value for option, value in pairs}
    assert {name: parsed[name] for name in given} == given
    required = {a.dest for a in module.arguments()._actions if a.required} - {"out"}
    assert required <= set(given)  # every option the module needs is passed


@pytest.mark.parametrize("user_data", [user_data for user_data, _ in CLOUDS], ids=CLOUD_IDS)
def test_first_boot_runs_from_the_images_unit_until_it_succeeds_not_once_from_runcmd(
    user_data: Callable[[], str],
) -> None:
    """cloud-init's runcmd runs once per instance and marks itself done before it runs: a failed or interrupted
    first boot would never run again. The image's unit runs on every boot, and again after a failure, until
    foresight.env exists."""
    document = yaml.safe_load(user_data())
    assert document["runcmd"] == ["@@SshOff@@"]
    files = written_files(document)
    assert list(files)[-1] == FIRST_BOOT_ENV  # written last: the unit starts only once the scripts are there
    commands = unit_commands(document)
    assert commands["ExecStartPre"][0] == f"{INSTALL_DIR}/mount_data_volume.sh"
    assert commands["ExecStart"][0] == f"{INSTALL_DIR}/first_boot.sh"
    assert files[f"{INSTALL_DIR}/mount_data_volume.sh"] == DATA_VOLUME_SCRIPT.read_text()
    assert files[f"{INSTALL_DIR}/first_boot.sh"] == FIRST_BOOT.read_text()

    unit = FIRST_BOOT_UNIT.read_text().splitlines()
    for line in (
        "Type=oneshot",
        "Restart=on-failure",
        f"ConditionPathExists={FIRST_BOOT_ENV}",
        f"ConditionPathExists=!{ENV_FILE}",
        f"EnvironmentFile={FIRST_BOOT_ENV}",
        "StartLimitIntervalSec=0",
        "WantedBy=multi-user.target",
    ):
        assert line in unit, line
    service = (REPO / "images/packer/files/foresight.service").read_text()
    assert "foresight-first-boot.service" in next(line for line in service.splitlines() if line.startswith("After="))
    provision = (REPO / "images/packer/provision/20-service.sh").read_text()
    assert "systemctl enable foresight.service foresight-first-boot.service foresight-tls-renew.timer" in provision


def _unit_settings(text: str) -> dict[str, list[str]]:
    """Each `Key=value` of a unit file, continuation lines joined; a key given twice keeps both values."""
    settings: dict[str, list[str]] = {}
    for line in text.replace("\\\n", " ").splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("user_data", [user_data for user_data, _ in CLOUDS], ids=CLOUD_IDS)
def test_the_tls_renewal_runs_daily_on_a_first_booted_node_with_options_the_module_accepts(
    user_data: Callable[[], str],
) -> None:
    """The timer's unit runs `python -m marketplace.first_boot renew` in the service image, as the service's user,
    with the service's settings (its KMS key unwraps the CA's key) and the conf directory writable where --conf
    says; only on a marketplace node whose first boot has finished."""
    unit = _unit_settings((REPO / "images/packer/files/foresight-tls-renew.service").read_text())
    assert unit["Type"] == ["oneshot"]
    assert set(unit["ConditionPathExists"]) == {FIRST_BOOT_ENV, ENV_FILE}
    assert unit["EnvironmentFile"] == ["/etc/foresight/image.env", FIRST_BOOT_ENV]
    environment = first_boot_env(yaml.safe_load(user_data()))
    (command,) = unit["ExecStart"]
    words = [environment.get(word[2:-1], word) if word.startswith("${") else word for word in command.split()]
    assert words[:2] == ["/usr/bin/docker", "run"]
    option = {words[i]: words[i + 1] for i in range(2, words.index("-m")) if words[i].startswith("--")}
    assert option["--user"] == SERVICE_IDS and option["--env-file"] == ENV_FILE
    assert words[words.index("-m") + 1] == "marketplace.first_boot"
    parsed = first_boot.arguments().parse_args(words[words.index("-m") + 2 :])  # exits 2 on a bad option
    assert parsed.command == "renew" and not parsed.new_ca
    assert option["--volume"] == f"{parsed.conf}:{parsed.conf}" and str(parsed.conf) == first_boot.CONF_DIR
    timer = _unit_settings((REPO / "images/packer/files/foresight-tls-renew.timer").read_text())
    assert timer["OnCalendar"] == ["daily"] and timer["Persistent"] == ["true"] and timer["RandomizedDelaySec"]
    assert timer["WantedBy"] == ["timers.target"]


@pytest.mark.parametrize("user_data", [user_data for user_data, _ in CLOUDS], ids=CLOUD_IDS)
def test_the_service_never_starts_without_the_data_volume(user_data: Callable[[], str]) -> None:
    """RequiresMountsFor= alone binds nothing until fstab has the entry; the mountpoint check always holds."""
    drop_in = written_files(yaml.safe_load(user_data()))[DATA_VOLUME_DROP_IN].splitlines()
    assert f"RequiresMountsFor={DATA_DIR}" in drop_in
    assert f"ExecStartPre=/usr/bin/mountpoint -q {DATA_DIR}" in drop_in


# --- first_boot.sh refuses to run without the data volume -------------------------------------------------------


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_first_boot_refuses_to_mint_or_start_without_the_data_volume_mounted(tmp_path: Path) -> None:
    """Every command that would act is a stub that logs; `mountpoint` says the data directory is not mounted."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls"
    _stub(stubs, "mountpoint", f'echo "mountpoint $*" >> {log}; exit 1')
    for name in ("docker", "install", "systemctl", "chmod", "rm"):
        _stub(stubs, name, f'echo "{name} $*" >> {log}')
    path = f"{stubs}:{os.environ['PATH']}"
    assert all(shutil.which(name, path=path) == str(stubs / name) for name in ("docker", "install", "systemctl"))

    result = subprocess.run(
        ["sh", str(FIRST_BOOT), "aws", SERVICE_IDS, "--tenant", "acme"],
        capture_output=True, text=True, env={**os.environ, "PATH": path}, timeout=30,
    )

    assert result.returncode == 1, result.stderr
    assert f"{DATA_DIR} is not a mount point" in result.stderr
    assert log.read_text().splitlines() == [f"mountpoint -q {DATA_DIR}"]  # nothing else ran


# --- mount_data_volume.sh on real disk images: real blkid, stubbed mkfs/mount, a scratch fstab -----------------


def _disk_image(kind: str, path: Path) -> None:
    """A 64 MiB image file: blank, our ext4, another ext4, or a GPT whose partition holds the data."""
    mkfs, sfdisk = require_tool("mkfs.ext4"), require_tool("sfdisk")
    subprocess.run(["truncate", "-s", "64M", str(path)], check=True)
    if kind == "ours":
        subprocess.run([mkfs, "-q", "-F", "-L", "foresight-data", str(path)], check=True)
    elif kind == "other-ext4":
        subprocess.run([mkfs, "-q", "-F", "-L", "backups", str(path)], check=True)
    elif kind == "gpt":
        subprocess.run([sfdisk, "-q", str(path)], input="label: gpt\n,,L\n", text=True, check=True)
        subprocess.run([mkfs, "-q", "-F", "-E", "offset=1048576", "-L", "payload", str(path), "32M"], check=True)


def run_data_volume_script(disk: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """The real script on `disk` (named by a /dev path, as on Google Cloud and Azure). Only blkid, readlink and
    the text tools are real; lsblk and findmnt describe a root disk sda; everything that would format, mount or
    change ownership is a stub that logs; fstab is a scratch file."""
    text = DATA_VOLUME_SCRIPT.read_text()
    # Never let a version of the script that ignores the scratch fstab reach this machine's /etc/fstab.
    assert 'FSTAB="${FORESIGHT_FSTAB:-/etc/fstab}"' in text and '>> "$FSTAB"' in text and ">> /etc/" not in text
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log, fstab = tmp_path / "calls", tmp_path / "fstab"
    fstab.write_text("")
    _stub(stubs, "findmnt", "echo /dev/sda1")
    _stub(
        stubs,
        "lsblk",
        'case "$*" in\n'
        '  "-no PKNAME /dev/sda1") echo sda ;;\n'
        f'  "-no NAME {disk}") echo {disk.name} ;;\n'  # no partitions listed: blkid alone must see them
        '  *) echo "lsblk stub: $*" >&2; exit 1 ;;\n'
        "esac",
    )
    for name in ("mkfs.ext4", "mount", "mkdir", "chown", "chmod"):
        _stub(stubs, name, f'echo "{name} $*" >> {log}')
    _stub(stubs, "mountpoint", "exit 1")
    path = f"{stubs}:{os.environ['PATH']}"
    for name in ("mkfs.ext4", "mount", "mkdir", "chown", "chmod", "mountpoint", "lsblk", "findmnt"):
        assert shutil.which(name, path=path) == str(stubs / name), name
    link = Path("/dev/shm") / f"foresight-test-{uuid.uuid4().hex}"
    link.symlink_to(disk)
    try:
        result = subprocess.run(
            ["sh", str(DATA_VOLUME_SCRIPT), str(link), SERVICE_IDS],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PATH": path, "FORESIGHT_FSTAB": str(fstab)},
        )
    finally:
        link.unlink()
    log.touch()
    return result, log, fstab


FSTAB_LINE = f"LABEL=foresight-data {DATA_DIR} ext4 defaults,nofail,x-systemd.device-timeout=60s 0 2"


def test_data_volume_formats_a_blank_disk_and_mounts_it(tmp_path: Path) -> None:
    disk = tmp_path / "blank.img"
    _disk_image("blank", disk)
    result, log, fstab = run_data_volume_script(disk, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"mkfs.ext4 -q -L foresight-data {disk}" in log.read_text().splitlines()
    assert f"mount {DATA_DIR}" in log.read_text().splitlines()
    assert fstab.read_text().splitlines() == [FSTAB_LINE]


def test_data_volume_keeps_and_mounts_its_own_file_system(tmp_path: Path) -> None:
    disk = tmp_path / "ours.img"
    _disk_image("ours", disk)
    result, log, fstab = run_data_volume_script(disk, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not [call for call in log.read_text().splitlines() if call.startswith("mkfs")]
    assert f"mount {DATA_DIR}" in log.read_text().splitlines()
    assert fstab.read_text().splitlines() == [FSTAB_LINE]


@pytest.mark.parametrize(
    ("kind", "found"),
    [("gpt", "PTTYPE=gpt"), ("other-ext4", "LABEL=backups TYPE=ext4")],
    ids=["partitioned", "another-file-system"],
)
def test_data_volume_refuses_a_disk_that_holds_anything_else(kind: str, found: str, tmp_path: Path) -> None:
    """A GPT disk shows no file system TYPE on the whole disk, only its partition table: it must not count as
    blank. Nor may a file system that is not ours be mounted in place of the data volume."""
    disk = tmp_path / f"{kind}.img"
    _disk_image(kind, disk)
    result, log, fstab = run_data_volume_script(disk, tmp_path)
    assert result.returncode == 1
    assert found in result.stderr and "not formatting or mounting it" in result.stderr
    assert log.read_text() == "" and fstab.read_text() == ""
