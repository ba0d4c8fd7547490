"""The local state directory: where `foresight local up` keeps everything, and `deployment.json`, which is
how the `tenants` and `keys` commands find the local deployment without flags.

Layout (directory mode 0700; every secret 0600)::

    deployment.json          endpoints, CA path, Vault address, where the secrets are (no secret in it)
    tls/                     ca.crt, ca.key, server.crt, server.key
    openbao/                 config.hcl, data/ (raft storage), init.json (unseal key + root token),
                             init.pending (only while the first `up` initialises it)
    secrets/                 operator.token, service.token, admin.token, demo.key
    run/                     <process>.pid
    logs/                    openbao.log, service.log
    audit/                   onboarding.jsonl (these commands), service.jsonl (the service)
    origin/<tenant>/         the demo origin (a directory of objects)
    data/                    the service's data dir (snapshots)
    pending.json             tenant creations in flight (rolled back if their process died)
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from onboarding.errors import InvalidInput, LocalFailure
from onboarding.local.processes import ManagedProcess
from service.security.local_ca import write_private
from service.validation import first_problem

STATE_DIR_ENV = "FORESIGHT_STATE_DIR"
DEPLOYMENT_VERSION = 1


def default_state_dir() -> Path:
    """`$FORESIGHT_STATE_DIR`, else `$XDG_STATE_HOME/foresight`, else `~/.local/state/foresight`."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]).expanduser()
    return xdg_state_dir()


def state_dir_option(state_dir: Path) -> str:
    """` --state-dir DIR` for a command printed as a next step, unless DIR is where commands look with no option
    (a FORESIGHT_STATE_DIR given to one command is gone by the next)."""
    if state_dir.expanduser().absolute() == xdg_state_dir().absolute():
        return ""
    return f" --state-dir {shlex.quote(str(state_dir))}"


def xdg_state_dir() -> Path:
    """`$XDG_STATE_HOME/foresight`, else `~/.local/state/foresight`: the state directory with no option at all."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "foresight"


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def deployment(self) -> Path:
        return self.root / "deployment.json"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.tls / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.tls / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.tls / "server.key"

    @property
    def openbao(self) -> Path:
        return self.root / "openbao"

    @property
    def openbao_config(self) -> Path:
        return self.openbao / "config.hcl"

    @property
    def openbao_data(self) -> Path:
        return self.openbao / "data"

    @property
    def openbao_init(self) -> Path:
        return self.openbao / "init.json"

    @property
    def openbao_initialising(self) -> Path:
        """Present from just before OpenBao's `init` until init.json is saved: an `up` stopped in between."""
        return self.openbao / "init.pending"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def operator_token(self) -> Path:
        return self.secrets / "operator.token"

    @property
    def service_token(self) -> Path:
        return self.secrets / "service.token"

    @property
    def admin_token(self) -> Path:
        return self.secrets / "admin.token"

    def demo_key(self, tenant: str) -> Path:
        """The stored key of a demo tenant (so a second `up` can print and use it again)."""
        return self.secrets / f"{tenant}.key"

    def process(self, name: str) -> ManagedProcess:
        """One of the deployment's background processes ("openbao", "service")."""
        return ManagedProcess(name, self.pid_file(name), self.log_file(name))

    def pid_file(self, name: str) -> Path:
        return self.root / "run" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    @property
    def onboarding_audit(self) -> Path:
        return self.root / "audit" / "onboarding.jsonl"

    @property
    def service_audit(self) -> Path:
        return self.root / "audit" / "service.jsonl"

    @property
    def origin(self) -> Path:
        return self.root / "origin"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pending(self) -> Path:
        return self.root / "pending.json"

    @property
    def marker(self) -> Path:
        """Proves a directory is a Foresight state directory before `down --purge` deletes it."""
        return self.root / ".foresight-state"

    def check_directory(self) -> None:
        """InvalidInput if the root exists and is not a directory (a `--state-dir` naming a file)."""
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInput(f"state directory {self.root}", "is not a directory")

    def is_ours(self) -> bool:
        """True if `up` made (or adopted) this directory: only such a directory is locked, stopped or purged."""
        self.check_directory()
        return self.marker.exists()

    def _only_onboarding_files(self) -> bool:
        """Whether the directory holds nothing, or only what `tenants`/`keys` write here when they act on a remote
        Vault with no local deployment (the journal and the onboarding audit log): `up` adopts those."""
        for entry in self.root.iterdir():
            if entry.name.startswith(self.pending.name) and entry.is_file():
                continue
            if entry == self.onboarding_audit.parent and entry.is_dir() and all(
                    f.name.startswith(self.onboarding_audit.name) and f.is_file() for f in entry.iterdir()):
                continue
            return False
        return True

    def create(self) -> None:
        """Make the directory tree, private to this user. A directory that exists, holds anything and is not one
        of ours is refused untouched: `down --purge` deletes what carries the marker, so it must never be a
        user's directory named by a typo."""
        if not self.is_ours() and self.root.is_dir() and not self._only_onboarding_files():
            raise InvalidInput(f"state directory {self.root}", "exists and is not a Foresight state directory (no "
                               f"{self.marker.name}); choose a new or empty one")
        for path in (self.root, self.tls, self.openbao, self.secrets, self.root / "run", self.root / "logs",
                     self.root / "audit", self.data, self.origin):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o700)
        self.marker.touch()


class Deployment(BaseModel):
    """What `local up` started and where; read by every other command. Holds paths to secrets, never secrets."""

    version: int = DEPLOYMENT_VERSION
    state_dir: Path
    resp_host: str
    resp_port: int
    http_port: int
    http_url: str
    ca_cert: Path = Field(description="CA bundle for the service's and OpenBao's TLS certificates.")
    vault_addr: str
    vault_port: int
    vault_cluster_port: int
    vault_kv_mount: str = "foresight"
    vault_token_file: Path = Field(description="The operator token (onboarding policy).")
    admin_token_file: Path
    audit_log: Path = Field(description="Audit log of onboarding actions.")
    service_audit_log: Path
    origin: Path
    demo_tenant: str
    origin_latency_ms: float = 0.0
    service_settings: dict[str, str] = Field(
        default_factory=dict, description="More service settings (`local up --set NAME=VALUE`), FORESIGHT_<NAME>."
    )


def read_secret(path: Path) -> str:
    return path.read_text().strip()


def write_secret(path: Path, value: str) -> None:
    write_private(path, value.encode() + b"\n")


def load_deployment(paths: StatePaths) -> Deployment | None:
    """The deployment recorded in the state directory; None if there is none. A damaged or unreadable record is
    a LocalFailure naming the file and what to do."""
    paths.check_directory()
    try:
        text = paths.deployment.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise LocalFailure(f"deployment {paths.deployment}", f"cannot read it ({why})") from None
    try:
        return Deployment.model_validate_json(text)
    except ValidationError as err:
        what = first_problem(err, "the record")
        again = state_dir_option(paths.root)  # a hint followed as printed must purge this directory, no other
        raise LocalFailure(f"deployment {paths.deployment}", f"damaged ({what}); fix it, or run `foresight local "
                           f"down --purge{again}` and `foresight local up{again}` to start over") from None


def save_deployment(paths: StatePaths, deployment: Deployment) -> None:
    write_private(paths.deployment, (deployment.model_dump_json(indent=2) + "\n").encode(), mode=0o644)
