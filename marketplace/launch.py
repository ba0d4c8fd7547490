"""What every cloud's launch template shares: the first-boot cloud-config a marketplace node runs, and the
input patterns the consoles check before a deployment starts.

The node's first boot is the same everywhere: mount the encrypted data disk, then `first_boot.sh` (beside this
module) runs the cloud's first_boot module, which mints TLS and the first key and hands the key to the buyer
through the cloud's secret store, moves the staged service settings into place and starts the service. Only
the options differ, so each template passes `@@Name@@` placeholders that it turns into its own template
language's expressions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from stacks.cloudinit import BOOT_DIR, DATA_DIR, ENV_FILE, INSTALL_DIR, SERVICE_GID, render_env_file

STAGED_ENV_FILE = f"{ENV_FILE}.first-boot"
# The service image's user and group (uid = gid = 10001, the stacks' SERVICE_GID) own the data and conf dirs.
SERVICE_IDS = f"{SERVICE_GID}:{SERVICE_GID}"
PLACEHOLDER = re.compile(r"@@(\w+)@@")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
CIDR_PATTERN = rf"^({_OCTET}\.){{3}}{_OCTET}/(3[0-2]|[12]?[0-9])$"
GUID_PATTERN = r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"
SSH_OFF = "systemctl disable --now ssh.socket ssh.service || true"
FIRST_BOOT = Path(__file__).with_name("first_boot.sh")


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
            # The image's unit does not know about the data disk; without it the service must not start.
            _file("/etc/systemd/system/foresight.service.d/10-data-volume.conf",
                  f"[Unit]\nRequiresMountsFor={DATA_DIR}\n", "0644"),
        ],
        "runcmd": [
            "@@SshOff@@",
            [f"{INSTALL_DIR}/mount_data_volume.sh", data_disk, SERVICE_IDS],
            [f"{INSTALL_DIR}/first_boot.sh", cloud, SERVICE_IDS,
             *(part for option, name in options.items() for part in (option, f"@@{name}@@"))],
        ],
    }
    return "#cloud-config\n" + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=1000)


def _file(path: str, content: str, permissions: str) -> dict[str, str]:
    return {"path": path, "owner": "root:root", "permissions": permissions, "content": content}


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the scripts in the user data stay readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_LiteralDumper.add_representer(str, _represent_str)
