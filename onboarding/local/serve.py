"""The service as a background process of the local deployment: `foresight serve` with TLS, Vault as its
key source and KMS, the admin API behind the admin token, and the demo origin."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from onboarding.admin_client import AdminClient
from onboarding.errors import InvalidInput, LocalFailure
from onboarding.local.openbao import TRANSIT_KEY
from onboarding.local.processes import ManagedProcess
from onboarding.state import Deployment, StatePaths, read_secret
from service.security.apikeys import hash_key
from stacks.shutdown import SERVICE_DEFAULT_GRACE_S, service_stop_s

READY_TIMEOUT_S = 90.0
# Environment the service must not inherit from the shell that runs `local up`: its settings come from here.
_FOREIGN = ("FORESIGHT_", "VAULT_", "BAO_")
# Settings `local up` decides; `--set` may not change them.
MANAGED = frozenset({
    "dev", "bind", "resp_port", "http_port", "tls_cert_file", "tls_key_file", "tenants_file", "origin",
    "origin_latency_ms", "data_dir", "audit_log", "admin_token_hash", "kms_provider", "kms_key_id",
}) | {"vault_" + name for name in ("addr", "auth_method", "token_file", "ca_file", "kv_mount")}


def check_settings(settings: dict[str, str]) -> None:
    """InvalidInput unless every name is a service setting that `local up` leaves to the operator, with a value the
    service accepts."""
    from service.config import Settings

    for name in settings:
        if name in MANAGED:
            raise InvalidInput(f"--set {name}", "is managed by `foresight local up`; use its own option if any")
        if name not in Settings.model_fields:
            raise InvalidInput(f"--set {name}", "is not a service setting (see `foresight serve --help` and "
                               "service/config.py)")
        value = settings[name]
        if value != "":  # "" removes a kept setting
            _parse(name, value)


def _parse(name: str, value: str) -> Any:
    """A setting's value read as the service reads FORESIGHT_* variables: a plain string, or JSON for lists and
    mappings; bounds included. InvalidInput naming `--set NAME` if the service would refuse it."""
    from typing import Annotated

    from pydantic import TypeAdapter, ValidationError

    from service.config import Settings

    field = Settings.model_fields[name]
    adapter: TypeAdapter[Any] = TypeAdapter(
        Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation  # type: ignore[arg-type]
    )
    try:
        return adapter.validate_strings(value)
    except ValidationError as as_string:
        try:
            return adapter.validate_json(value)
        except ValidationError:
            raise InvalidInput(f"--set {name}", as_string.errors()[0]["msg"]) from None


def _check_together(env: dict[str, str], chosen: set[str]) -> None:
    """The service's checks across settings (tls_require_client_cert needs tls_client_ca_file, ...) on exactly
    what it will be started with, so that a refused combination stops `up` before anything is stopped or saved.
    The environment of the shell running `up` is left out, as the service never sees it."""
    from pydantic import ValidationError

    from service.config import Settings

    class Given(Settings):
        @classmethod
        def settings_customise_sources(
            cls, settings_cls: Any, init_settings: Any, env_settings: Any, dotenv_settings: Any,
            file_secret_settings: Any,
        ) -> tuple[Any, ...]:
            return (init_settings,)

    values = {name: _parse(name, value) for name, value in
              ((key.removeprefix("FORESIGHT_").lower(), value) for key, value in env.items())}
    try:
        Given(**values)
    except ValidationError as err:
        problem = err.errors()[0]
        name = ".".join(str(part) for part in problem["loc"])
        what = f"--set {name}" if name in chosen else f"--set {', '.join(sorted(chosen))}" if chosen else "settings"
        raise InvalidInput(what, f"the service refuses it: {problem['msg'].removeprefix('Value error, ')}") from None


def service_stop_timeout(deployment: Deployment | None) -> float:
    """How long a stop waits for the service before SIGKILL: all of its stop (both drains, the encrypted snapshot,
    the audit log's close: stacks/shutdown.py), as the VM's unit and the pod get, so that a local deployment
    stopped under load still writes its snapshot."""
    settings = deployment.service_settings if deployment is not None else {}
    return service_stop_s(math.ceil(float(settings.get("shutdown_grace_s", SERVICE_DEFAULT_GRACE_S))))


@dataclass
class LocalService:
    paths: StatePaths
    deployment: Deployment

    @property
    def process(self) -> ManagedProcess:
        return self.paths.process("service")

    def admin(self) -> AdminClient:
        return AdminClient(self.deployment.http_url, read_secret(self.paths.admin_token), ca_cert=self.paths.ca_cert)

    def settings_env(self) -> dict[str, str]:
        """The service's FORESIGHT_* settings: the operator's `--set`s, then what `local up` manages."""
        return self._env(hash_key(read_secret(self.paths.admin_token)))

    def process_env(self) -> dict[str, str]:
        """The environment of a `foresight` process acting as this service (`serve`, `kms rewrap`): this one's without
        any FORESIGHT_*, VAULT_* or BAO_* of the shell, then the service's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
        return env | self.settings_env()

    def check_settings(self) -> None:
        """InvalidInput if the service would refuse to start with these settings taken together."""
        _check_together(self._env(hash_key("placeholder")), set(self.deployment.service_settings))

    def _env(self, admin_token_hash: str) -> dict[str, str]:
        d, p = self.deployment, self.paths
        extra = {f"FORESIGHT_{name.upper()}": value for name, value in d.service_settings.items()}
        return extra | {
            "FORESIGHT_BIND": d.resp_host,
            "FORESIGHT_RESP_PORT": str(d.resp_port),
            "FORESIGHT_HTTP_PORT": str(d.http_port),
            "FORESIGHT_TLS_CERT_FILE": str(p.server_cert),
            "FORESIGHT_TLS_KEY_FILE": str(p.server_key),
            "FORESIGHT_ORIGIN": str(p.origin),
            "FORESIGHT_ORIGIN_LATENCY_MS": f"{d.origin_latency_ms:g}",
            "FORESIGHT_DATA_DIR": str(p.data),
            "FORESIGHT_VAULT_ADDR": d.vault_addr,
            "FORESIGHT_VAULT_AUTH_METHOD": "token",
            "FORESIGHT_VAULT_TOKEN_FILE": str(p.service_token),
            "FORESIGHT_VAULT_CA_FILE": str(p.ca_cert),
            "FORESIGHT_VAULT_KV_MOUNT": d.vault_kv_mount,
            "FORESIGHT_KMS_PROVIDER": "vault-transit",
            "FORESIGHT_KMS_KEY_ID": TRANSIT_KEY,
            "FORESIGHT_AUDIT_LOG": str(d.service_audit_log),
            "FORESIGHT_ADMIN_TOKEN_HASH": admin_token_hash,
        }

    def start(self) -> bool:
        """Start unless running; True if started. Returns once /readyz says ready."""
        if self.process.pid() is not None:
            return False
        argv = [sys.executable, "-c", "from service.cli import main; main()", "serve"]
        self.process.start(argv, self.process_env(), cwd=self.paths.root, fingerprint=self.fingerprint())
        try:
            self.wait_ready()
        except BaseException:
            self.process.stop()  # started here and never reported as started: nobody else would stop it
            raise
        return True

    def fingerprint(self) -> str:
        """A digest of the settings, to tell whether the running service has the current ones."""
        return hashlib.sha256(json.dumps(self.settings_env(), sort_keys=True).encode()).hexdigest()

    def outdated(self) -> bool:
        """True if the service runs with other settings than the deployment's now."""
        running = self.process.fingerprint()
        return running is not None and running != self.fingerprint()

    def restart(self) -> None:
        self.process.stop(service_stop_timeout(self.deployment))
        self.start()

    def wait_ready(self) -> None:
        admin = self.admin()
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.process.pid() is None:
                    raise LocalFailure("start the service", f"it exited; its log says:\n{self.process.log_tail()}")
                if admin.ready():
                    return
                time.sleep(0.1)
        finally:
            admin.close()
        raise LocalFailure(
            "start the service", f"not ready within {READY_TIMEOUT_S:.0f}s (see {self.process.log_file})"
        )
