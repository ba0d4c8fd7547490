"""The node's cloud-init user data: issue TLS from Vault with the machine identity, run the image on the GPU.

What the rendered `#cloud-config` does on first boot:
- installs `fetch_tls.py` (Vault login with the cloud identity, a certificate issued by the stack's PKI role to
  /run/foresight/tls) and
  `mount_data_volume.sh` (formats and mounts the encrypted data volume at /var/lib/foresight);
- writes /etc/foresight/foresight.env (settings only: addresses, names, key ids; never a secret);
- installs `foresight.service`: before each start it checks the data mount and fetches TLS; it then runs the
  image with `--gpus all` (NVIDIA container toolkit), and systemd restarts it whenever it exits;
- installs `foresight-tls-refresh.timer`: hourly, while the service runs, it issues a fresh certificate (with a
  fresh key) once the node's is a day old or the stack's CA rotated, which is how the node's certificate is renewed
  (fetch_tls.py replaces each file atomically, and the service reloads a changed pair within a second without a
  restart);
- on a base image without Docker and the NVIDIA container toolkit (Google Cloud's: Deep Learning VM images cannot
  boot G2), installs both first with the marketplace image's own script (images/packer/provision), which keeps
  what a base already has;
- turns SSH off entirely unless an SSH key was configured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stacks.shutdown import SERVICE_DEFAULT_GRACE_S, UNIT_STOP_MARGIN_S, service_stop_s
from stacks.spec import SERVICE_PORTS, StackSpec
from stacks.vault import VaultLayout

BOOT_DIR = Path(__file__).parent / "boot"
# The marketplace images' installer of Docker and the NVIDIA container toolkit, run at first boot where the base
# image lacks them; NVIDIA_CTK_VERSION is the toolkit floor the Packer templates pass it (kept in step by a test).
RUNTIME_SCRIPT = Path(__file__).parents[1] / "images" / "packer" / "provision" / "10-container-runtime.sh"
NVIDIA_CTK_VERSION = "1.17.8-1"
INSTALL_DIR = "/usr/local/lib/foresight"
ENV_FILE = "/etc/foresight/foresight.env"
UNIT_FILE = "/etc/systemd/system/foresight.service"
REFRESH_UNIT = "foresight-tls-refresh"
REFRESH_SERVICE_FILE = f"/etc/systemd/system/{REFRESH_UNIT}.service"
REFRESH_TIMER_FILE = f"/etc/systemd/system/{REFRESH_UNIT}.timer"
HOST_TLS_DIR = "/run/foresight/tls"
# The hourly refresh issues a new certificate once the node's is this old: a day, less the timer's hour of slack.
RENEW_AFTER_S = 23 * 3600
CONTAINER_TLS_DIR = "/etc/foresight/tls"
DATA_DIR = "/var/lib/foresight"
# The group that may read the TLS files and write the data directory; the container joins it (--group-add),
# so it works whatever non-root user the image runs as.
SERVICE_GID = 10001
CONTAINER_NAME = "foresight"
VM_STOP_S = service_stop_s(SERVICE_DEFAULT_GRACE_S)  # docker stop's wait before SIGKILL (the VM runs the default grace)

# The endpoint's name, which fetch_tls.py asks Vault's PKI role to issue the certificate for.
TLS_COMMON_NAME_SETTING = "FORESIGHT_TLS_COMMON_NAME"

_ENV_VALUE_RE = re.compile(r"[A-Za-z0-9_.:/@+=,-]*")


@dataclass(frozen=True)
class NodeBoot:
    """Everything the boot sequence needs, as plain strings (render it inside an `Output.apply`)."""

    image: str
    environment: Mapping[str, str]
    data_disk: str  # the disk mount_data_volume.sh formats: its model (AWS) or stable /dev path (GCP, Azure)
    ssh_enabled: bool
    install_container_runtime: bool = False  # the base image may lack Docker or the NVIDIA container toolkit


def service_environment(
    spec: StackSpec,
    layout: VaultLayout,
    vault_login: Mapping[str, str],
    kms_provider: str,
    kms_key_id: str,
    tls_host: str,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The container's FORESIGHT_* settings plus what fetch_tls.py reads. `vault_login` names the cloud's Vault
    login (FORESIGHT_VAULT_AUTH_METHOD and its options), which both the service and fetch_tls.py read;
    `tls_host` is the endpoint's name, which the node's certificate is issued for; `extra` adds cloud SDK
    settings. The keys come from Vault, so the /metrics scrape token does too: the secret `foresight
    metrics-token rotate --stack <stack>` writes and the node policy reads."""
    return {
        "FORESIGHT_TLS_CERT_FILE": f"{CONTAINER_TLS_DIR}/tls.crt",
        "FORESIGHT_TLS_KEY_FILE": f"{CONTAINER_TLS_DIR}/tls.key",
        "FORESIGHT_VAULT_ADDR": spec.vault_address,
        **vault_login,
        "FORESIGHT_VAULT_AUTH_MOUNT": layout.auth_mount,
        "FORESIGHT_VAULT_ROLE": layout.role,
        "FORESIGHT_VAULT_KV_MOUNT": layout.kv_mount,
        **tls_issue_settings(layout, tls_host),
        "FORESIGHT_VAULT_METRICS_PATH": layout.metrics_path,
        "FORESIGHT_KMS_PROVIDER": kms_provider,
        "FORESIGHT_KMS_KEY_ID": kms_key_id,
        "FORESIGHT_DATA_DIR": DATA_DIR,
        **spec.audit_environment(),
        **extra,
    }


def tls_issue_settings(layout: VaultLayout, tls_host: str) -> dict[str, str]:
    """What fetch_tls.py issues the certificate with: the PKI mount, the role and the endpoint's name. The role is
    FORESIGHT_TLS_NODE_PKI_ROLE, not the service's FORESIGHT_TLS_VAULT_PKI_ROLE, which would make the service issue
    a certificate of its own instead of serving the files; the mount and name keep the service's setting names,
    which mean the same there and do nothing without that role."""
    return {
        "FORESIGHT_TLS_VAULT_PKI_MOUNT": layout.pki_mount,
        "FORESIGHT_TLS_NODE_PKI_ROLE": layout.pki_role,
        TLS_COMMON_NAME_SETTING: tls_host,
    }


def render_env_file(environment: Mapping[str, str]) -> str:
    """KEY=value lines that both systemd's EnvironmentFile= and `docker run --env-file` read the same way."""
    for key, value in environment.items():
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", key) or not _ENV_VALUE_RE.fullmatch(value):
            raise ValueError(f"environment entry {key}={value!r} is not safe for an env file")
    return "".join(f"{key}={value}\n" for key, value in environment.items())


def _fetch_tls_command(*options: str) -> str:
    command = f"/usr/bin/python3 {INSTALL_DIR}/fetch_tls.py --out {HOST_TLS_DIR} --group {SERVICE_GID}"
    return " ".join([command, *options])


def render_refresh_unit() -> str:
    """The timer's job: issue a fresh certificate while the service runs (stopped, its next start issues one)."""
    return f"""[Unit]
Description=Renew the Foresight service's TLS certificate from Vault PKI
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
EnvironmentFile={ENV_FILE}
ExecCondition=/usr/bin/systemctl is-active --quiet foresight.service
ExecStart={_fetch_tls_command("--renew-after", str(RENEW_AFTER_S))}
"""


def render_refresh_timer() -> str:
    """Hourly, each node at its own minute, and caught up after the node was off. A run issues a new certificate
    once the one it has is RENEW_AFTER_S old (about daily) or when the stack's CA rotated (within the hour), and
    otherwise only asks Vault which CA issues; a certificate lives 30 days (stacks.tls.CERTIFICATE_TTL_SECONDS), so
    a month of failed runs passes before it expires."""
    return f"""[Unit]
Description=Hourly check and daily renewal of the Foresight service's TLS certificate

[Timer]
OnCalendar=hourly
RandomizedDelaySec=50min
FixedRandomDelay=true
Persistent=true
Unit={REFRESH_UNIT}.service

[Install]
WantedBy=timers.target
"""


def render_unit(image: str) -> str:
    ports = " ".join(f"--publish {port}:{port}" for port in SERVICE_PORTS)
    docker_run = (
        f"/usr/bin/docker run --rm --name {CONTAINER_NAME} --gpus all --group-add {SERVICE_GID} "
        f"--env-file {ENV_FILE} {ports} "
        f"--volume {HOST_TLS_DIR}:{CONTAINER_TLS_DIR}:ro --volume {DATA_DIR}:{DATA_DIR} "
        f"--cap-drop ALL --security-opt no-new-privileges --log-driver journald {image}"
    )
    return f"""[Unit]
Description=Foresight cache service ({image})
Wants=network-online.target
After=network-online.target docker.service
Requires=docker.service
StartLimitIntervalSec=0

[Service]
Type=simple
EnvironmentFile={ENV_FILE}
RuntimeDirectory=foresight
RuntimeDirectoryMode=0750
ExecStartPre=/usr/bin/mountpoint -q {DATA_DIR}
ExecStartPre={_fetch_tls_command()}
ExecStartPre=-/usr/bin/docker rm --force {CONTAINER_NAME}
ExecStart={docker_run}
ExecStop=/usr/bin/docker stop --time {VM_STOP_S} {CONTAINER_NAME}
Restart=always
RestartSec=10
TimeoutStartSec=1200
TimeoutStopSec={VM_STOP_S + UNIT_STOP_MARGIN_S}

[Install]
WantedBy=multi-user.target
"""


def render_user_data(boot: NodeBoot) -> str:
    """The `#cloud-config` document; it passes `cloud-init schema` and holds no secret."""
    runcmd: list[Any] = [
        [f"{INSTALL_DIR}/mount_data_volume.sh", boot.data_disk, f"{SERVICE_GID}:{SERVICE_GID}"],
        # The GPU AMIs ship the NVIDIA container toolkit; make sure Docker's runtime config knows it.
        ["sh", "-c", "if command -v nvidia-ctk; then nvidia-ctk runtime configure --runtime=docker; fi"],
        ["systemctl", "restart", "docker.service"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "foresight.service"],
        ["systemctl", "enable", "--now", f"{REFRESH_UNIT}.timer"],
    ]
    files = []
    if boot.install_container_runtime:  # after the data mount, before Docker is configured and restarted
        installer = f"{INSTALL_DIR}/{RUNTIME_SCRIPT.name}"
        files.append(_file(installer, RUNTIME_SCRIPT.read_text(), "0755"))
        runcmd.insert(1, ["env", f"NVIDIA_CTK_VERSION={NVIDIA_CTK_VERSION}", installer])
    if not boot.ssh_enabled:
        runcmd.insert(0, ["sh", "-c", "systemctl disable --now ssh.socket ssh.service || true"])
    document = {
        "ssh_pwauth": False,
        "disable_root": True,
        "write_files": [
            *files,
            _file(f"{INSTALL_DIR}/fetch_tls.py", (BOOT_DIR / "fetch_tls.py").read_text(), "0755"),
            _file(f"{INSTALL_DIR}/mount_data_volume.sh", (BOOT_DIR / "mount_data_volume.sh").read_text(), "0755"),
            _file(ENV_FILE, render_env_file(boot.environment), "0644"),
            _file(UNIT_FILE, render_unit(boot.image), "0644"),
            _file(REFRESH_SERVICE_FILE, render_refresh_unit(), "0644"),
            _file(REFRESH_TIMER_FILE, render_refresh_timer(), "0644"),
        ],
        "runcmd": runcmd,
    }
    return "#cloud-config\n" + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=1000)


def _file(path: str, content: str, permissions: str) -> dict[str, str]:
    return {"path": path, "owner": "root:root", "permissions": permissions, "content": content}


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so scripts in the user data stay readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)
