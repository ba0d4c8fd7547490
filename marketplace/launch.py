"""What every cloud's launch template shares: the first-boot cloud-config a marketplace node runs, and the
input patterns the consoles check before a deployment starts.

The node's first boot is the same everywhere: mount the encrypted data disk, then `first_boot.sh` (beside this
module) runs the cloud's first_boot module, which mints TLS and the first key and hands the key to the buyer
through the cloud's secret store, moves the staged service settings into place and starts the service. Only
the options differ, so each template passes `@@Name@@` placeholders that it turns into its own template
language's expressions.

The VM image's `foresight-first-boot.service` (images/packer/files/) runs both scripts, with the arguments
this cloud-config writes to FIRST_BOOT_ENV, on every boot until first boot has succeeded: cloud-init's
`runcmd` would run them once per instance, so a failure or a reboot half-way would leave the node dead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from stacks.cloudinit import BOOT_DIR, DATA_DIR, ENV_FILE, INSTALL_DIR, SERVICE_GID, render_env_file

STAGED_ENV_FILE = f"{ENV_FILE}.first-boot"
# What the image's foresight-first-boot.service reads (EnvironmentFile=); the unit runs only while it exists.
FIRST_BOOT_ENV = "/etc/foresight/first-boot.env"
# The service image's user and group (uid = gid = 10001, the stacks' SERVICE_GID) own the data and conf dirs.
SERVICE_IDS = f"{SERVICE_GID}:{SERVICE_GID}"
PLACEHOLDER = re.compile(r"@@(\w+)@@")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
CIDR_PATTERN = rf"^({_OCTET}\.){{3}}{_OCTET}/(3[0-2]|[12]?[0-9])$"
GUID_PATTERN = r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"
SSH_OFF = "systemctl disable --now ssh.socket ssh.service || true"
FIRST_BOOT = Path(__file__).with_name("first_boot.sh")
# The image's unit does not know about the data disk, and the service must never start without it.
# RequiresMountsFor= binds only once mount_data_volume.sh has written the fstab entry (before, there is no mount
# unit to require); the mountpoint check holds from the start.
DATA_VOLUME_DROP_IN = "/etc/systemd/system/foresight.service.d/10-data-volume.conf"
DATA_VOLUME_REQUIREMENT = (
    f"[Unit]\nRequiresMountsFor={DATA_DIR}\n\n[Service]\nExecStartPre=/usr/bin/mountpoint -q {DATA_DIR}\n"
)


def cloud_config(cloud: str, environment: Mapping[str, str], data_disk: str, options: Mapping[str, str]) -> str:
    """The `#cloud-config` document. `options` are the cloud's first_boot module options (`--tenant`: a
    placeholder name); `@@SshOff@@` is the template's choice between SSH_OFF and `true`."""
    document = {
        "ssh_pwauth": False,
        "disable_root": True,
        "write_files": [
            _file(f"{INSTALL_DIR}/mount_data_volume.sh", (BOOT_DIR / "mount_data_volume.sh").read_text(), "0755"),
            _file(f"{INSTALL_DIR}/first_boot.sh", FIRST_BOOT.read_text(), "0755"),
            _file(STAGED_ENV_FILE, render_env_file(dict(environment)), "0640"),
            _file(DATA_VOLUME_DROP_IN, DATA_VOLUME_REQUIREMENT, "0644"),
            # Last: foresight-first-boot.service starts only once this exists, so the scripts are in place.
            _file(FIRST_BOOT_ENV, first_boot_env(cloud, data_disk, options), "0640"),
        ],
        "runcmd": ["@@SshOff@@"],
    }
    return "#cloud-config\n" + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=1000)


def first_boot_env(cloud: str, data_disk: str, options: Mapping[str, str]) -> str:
    """FIRST_BOOT_ENV: the unit passes `${X}` as one argument each and splits `$FORESIGHT_FIRST_BOOT_OPTIONS`
    on whitespace, which none of the options' values (names, ids, addresses, URIs) contains."""
    settings = {
        "FORESIGHT_CLOUD": cloud,
        "FORESIGHT_SERVICE_IDS": SERVICE_IDS,
        "FORESIGHT_DATA_DISK": data_disk,  # a disk model has spaces: systemd keeps a quoted value whole
        "FORESIGHT_FIRST_BOOT_OPTIONS": " ".join(
            part for option, name in options.items() for part in (option, f"@@{name}@@")
        ),
    }
    return "".join(f'{key}="{value}"\n' for key, value in settings.items())


def _file(path: str, content: str, permissions: str) -> dict[str, str]:
    return {"path": path, "owner": "root:root", "permissions": permissions, "content": content}


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the scripts in the user data stay readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_LiteralDumper.add_representer(str, _represent_str)
