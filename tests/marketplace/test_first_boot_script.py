"""first_boot.sh gives the service the scrape token's file only where first boot wrote one: a service started
with the settings it installs accepts the token the buyer read from the secret, and a node whose service image
mints no token still gets settings the service starts with.

The real script, its /etc/foresight moved to a scratch directory; `docker run` is the real `provision` (a local
KMS, the secret store a file); mountpoint, install and systemctl are stubs."""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from marketplace.first_boot import METRICS_TOKEN_FILE
from marketplace.launch import FIRST_BOOT, SERVICE_IDS
from stacks.cloudinit import render_env_file
from tests.marketplace.ca_key import KEYRING
from tests.marketplace.metrics_token import assert_scrape_token_minted
from tests.service.harness import running_service

REPO = Path(__file__).resolve().parents[2]
HOST = "ec2-198-51-100-7.compute-1.amazonaws.com"
# What `docker run ... marketplace.<cloud>.first_boot --out /out` does, with the conf directory as /out.
PROVISION = f"""
import sys
from pathlib import Path
from marketplace.first_boot import METRICS_TOKEN_FILE, Addresses, provision
from tests.marketplace.ca_key import local_cipher

out, secret, keyring, image = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
addresses = Addresses(public_ip="198.51.100.7", public_hostname="{HOST}", private_ip="10.42.0.17")
provision(out, "acme", addresses, secret.write_text, local_cipher(keyring))
if image == "older":  # a service image from before scrape tokens writes every file but this one
    (out / METRICS_TOKEN_FILE).unlink(missing_ok=True)
"""


@dataclass(frozen=True)
class Node:
    root: Path

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def conf(self) -> Path:
        return self.etc / "conf"

    @property
    def env_file(self) -> Path:
        return self.etc / "foresight.env"

    @property
    def secret(self) -> Path:
        return self.root / "secret.json"

    def settings(self) -> dict[str, str]:
        """foresight.env as the service reads it: `FORESIGHT_X=value` is setting `x`."""
        lines = self.env_file.read_text().splitlines()
        return {key.removeprefix("FORESIGHT_").lower(): value for key, value in (line.split("=", 1) for line in lines)}


def _stub(directory: Path, name: str, body: str) -> None:
    (directory / name).write_text(f"#!/bin/sh\n{body}\n")
    (directory / name).chmod(0o755)


def boot(tmp_path: Path, image: str = "current", install_fails: bool = False) -> subprocess.CompletedProcess[str]:
    """first_boot.sh once, on the node in `tmp_path` (made on the first call)."""
    node = Node(tmp_path)
    text = FIRST_BOOT.read_text()
    assert text.count("\netc=/etc/foresight\n") == 1
    script = text.replace("\netc=/etc/foresight\n", f"\netc={node.etc}\n")
    code = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "/etc/foresight" in line], "the copy would touch this machine's /etc"
    (tmp_path / "first_boot.sh").write_text(script)
    if not node.etc.exists():
        node.etc.mkdir()
        (node.etc / "image.env").write_text("FORESIGHT_IMAGE=localhost/foresight:test\n")
        staged = {
            "FORESIGHT_TLS_CERT_FILE": str(node.conf / "tls.crt"),
            "FORESIGHT_TLS_KEY_FILE": str(node.conf / "tls.key"),
            "FORESIGHT_TENANTS_FILE": str(node.conf / "tenants.json"),
            "FORESIGHT_LOG_LEVEL": "info",
        }
        (node.etc / "foresight.env.first-boot").write_text(render_env_file(staged))
        (tmp_path / "provision.py").write_text(PROVISION)
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    _stub(stubs, "mountpoint", "exit 0")
    _stub(stubs, "systemctl", f'echo "systemctl $*" >> {tmp_path / "calls"}')
    _stub(
        stubs,
        "docker",
        'for arg; do case "$arg" in *:/out) out=${arg%:/out} ;; esac; done\n'
        f'exec {sys.executable} {tmp_path / "provision.py"} "$out" {node.secret} {tmp_path / KEYRING} {image}',
    )
    _stub(  # as root would, without changing owners
        stubs,
        "install",
        "mode=; dir=; while getopts dm:o:g: option; do case $option in d) dir=1 ;; m) mode=$OPTARG ;; esac; done\n"
        'shift $((OPTIND - 1))\n'
        + ('case "$2" in *foresight.env) exit 1 ;; esac\n' if install_fails else "")
        + 'if [ -n "$dir" ]; then mkdir -p "$@"; else cp "$1" "$2"; fi\n'
        'chmod "$mode" "$@"',
    )
    return subprocess.run(
        ["sh", str(tmp_path / "first_boot.sh"), "aws", SERVICE_IDS, "--tenant", "acme"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)},
    )


def test_the_service_first_boot_configures_accepts_the_scrape_token_the_buyer_read(tmp_path: Path) -> None:
    result = boot(tmp_path)

    assert result.returncode == 0, result.stderr
    node = Node(tmp_path)
    document = json.loads(node.secret.read_text())
    token = assert_scrape_token_minted(node.conf, document, result.stdout + result.stderr)
    settings = node.settings()
    assert settings["metrics_token_file"] == str(node.conf / METRICS_TOKEN_FILE)
    assert token not in node.env_file.read_text()
    tls = ssl.create_default_context(cafile=str(node.conf / "ca.crt"))  # the secret's ca_certificate
    with running_service(**settings) as service, httpx.Client(base_url=service.endpoints.http_url, verify=tls) as http:
        def scrape(credential: str) -> int:
            headers = {"Authorization": f"Bearer {credential}"}
            return http.get("/metrics", headers=headers, extensions={"sni_hostname": HOST}).status_code

        assert scrape(token) == 200
        assert scrape(secrets.token_hex(32)) == 401
        assert scrape(document["api_key"]) == 401


def test_a_node_whose_first_boot_wrote_no_scrape_token_gets_settings_the_service_starts_with(tmp_path: Path) -> None:
    result = boot(tmp_path, image="older")

    assert result.returncode == 0, result.stderr
    node = Node(tmp_path)
    assert not (node.conf / METRICS_TOKEN_FILE).exists()
    assert "metrics_token_file" not in node.settings()
    with running_service(**node.settings()) as service:  # raises if the service cannot start with them
        assert service.state.settings.metrics_token_file is None


def test_a_first_boot_cut_short_after_naming_the_token_file_names_it_once(tmp_path: Path) -> None:
    assert boot(tmp_path, install_fails=True).returncode != 0
    assert not Node(tmp_path).env_file.exists()
    assert (Node(tmp_path).conf / "tenants.json").exists()  # cut short at the install, after provisioning

    result = boot(tmp_path)

    assert result.returncode == 0, result.stderr
    lines = Node(tmp_path).env_file.read_text().splitlines()
    assert [line for line in lines if line.startswith("FORESIGHT_METRICS_TOKEN_FILE=")] == [
        f"FORESIGHT_METRICS_TOKEN_FILE={Node(tmp_path).conf / METRICS_TOKEN_FILE}"
    ]
