"""Where the `tenants` and `keys` commands act: Vault, the service's admin API, the audit log.

Precedence, per setting: the standard environment (`VAULT_ADDR`/`VAULT_TOKEN`/`VAULT_CACERT`, or the `BAO_*`
equivalents; `FORESIGHT_ADMIN_URL`/`FORESIGHT_ADMIN_TOKEN`/`FORESIGHT_ADMIN_CA`; `FORESIGHT_AUDIT_LOG`;
`FORESIGHT_VAULT_KV_MOUNT`, the same variable the service reads) wins
over the local deployment recorded by `foresight local up` in the state directory. Values from the environment
and options are checked before anything connects: a URL needs http(s) and a host, a CA bundle must exist, and
plain http:// is refused to a host that is not loopback (the Vault token or the admin token would cross the network
in clear) unless FORESIGHT_VAULT_ALLOW_INSECURE_HTTP (the service's own setting) or
FORESIGHT_ADMIN_ALLOW_INSECURE_HTTP is true: the rule the service applies to its vault_addr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import hvac
from pydantic import TypeAdapter, ValidationError

from onboarding.errors import InvalidInput, NotFound, OnboardingError, ServiceFailure, VaultFailure
from onboarding.state import (
    Deployment,
    StatePaths,
    default_state_dir,
    load_deployment,
    read_secret,
    state_dir_option,
)
from service.config import LOOPBACK_HOSTS
from service.security.vault_keys import DEFAULT_MOUNT


@dataclass(frozen=True)
class Endpoints:
    """Where tenants connect; goes into the connection snippet."""

    resp_host: str
    resp_port: int
    http_url: str
    ca_cert: Path | None


@dataclass(frozen=True)
class Target:
    vault_addr: str
    vault_token: str
    vault_ca: Path | None
    kv_mount: str
    admin_url: str | None
    admin_token: str | None
    admin_ca: Path | None
    endpoints: Endpoints | None
    audit_log: Path
    paths: StatePaths
    deployment: Deployment | None
    local_vault: bool = False  # Vault is the local deployment's OpenBao
    local_admin: bool = False  # the admin API is the local deployment's service
    kv_mount_default: bool = False  # kv_mount is the service's default: neither the environment nor a deployment's

    def __repr__(self) -> str:  # the dataclass default would print the tokens
        return f"Target(vault_addr={self.vault_addr!r}, admin_url={self.admin_url!r})"

    def vault_client(self) -> hvac.Client:
        """A client for this Vault with the operator's token; a request gives up after 5 s."""
        return hvac.Client(url=self.vault_addr, token=self.vault_token,
                           verify=str(self.vault_ca) if self.vault_ca else True, timeout=5)


def _env(*names: str) -> str | None:
    found = _env_named(*names)
    return found[1] if found else None


def _env_named(*names: str) -> tuple[str, str] | None:
    """The first of `names` set (not empty) in the environment, and its value."""
    for name in names:
        if os.environ.get(name):
            return name, os.environ[name]
    return None


VAULT_INSECURE_ENV = "FORESIGHT_VAULT_ALLOW_INSECURE_HTTP"
ADMIN_INSECURE_ENV = "FORESIGHT_ADMIN_ALLOW_INSECURE_HTTP"


def _check_url(url: str, what: str, example: str, secret: str, allow_insecure_env: str) -> str:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{what} {url!r}", f"expected a URL like {example}")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS and not _env_true(allow_insecure_env):
        raise InvalidInput(f"{what} {url!r}", f"{parts.hostname} is not loopback, so it must be reached over "
                           f"https://; over http:// {secret} would cross the network in clear "
                           f"({allow_insecure_env}=true allows it, for tests and labs only)")
    return url


def _env_true(name: str) -> bool:
    """A boolean variable read as the service's settings read one (pydantic's words); unset is false."""
    value = os.environ.get(name, "").strip()
    try:
        return bool(value) and TypeAdapter(bool).validate_python(value)
    except ValidationError:
        raise InvalidInput(name, f"{value!r} is neither true nor false") from None


def _check_ca(value: str, what: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise InvalidInput(f"{what} {value}", "no such file" if not path.exists() else "not a file (a PEM CA bundle)")
    return path


def resolve(state_dir: Path | None = None, admin_url: str | None = None) -> Target:
    """The deployment to act on; NotFound with what to do when there is none."""
    paths = StatePaths(state_dir or default_state_dir())
    deployment = load_deployment(paths)

    vault_addr_env = _env_named("VAULT_ADDR", "BAO_ADDR")
    if vault_addr_env is not None:
        _check_url(vault_addr_env[1], vault_addr_env[0], "https://vault.example.com:8200", "the Vault token",
                   VAULT_INSECURE_ENV)
    vault_addr = vault_addr_env[1] if vault_addr_env else (deployment.vault_addr if deployment else None)
    if vault_addr is None:
        raise NotFound(f"no deployment in {paths.root}", "run `foresight local up`, or set VAULT_ADDR and VAULT_TOKEN")
    local_vault = deployment is not None and vault_addr == deployment.vault_addr
    vault_token = _env("VAULT_TOKEN", "BAO_TOKEN")
    if vault_token is None:
        if deployment is None or not local_vault:  # the local operator token goes to the local OpenBao only
            raise InvalidInput("Vault token", f"VAULT_ADDR is set to {vault_addr}, not the local deployment's "
                               "Vault, but VAULT_TOKEN (or BAO_TOKEN) is not" if deployment else
                               "VAULT_ADDR is set but VAULT_TOKEN (or BAO_TOKEN) is not")
        vault_token = _read_token(deployment.vault_token_file, "Vault operator token")
    vault_ca_env = _env_named("VAULT_CACERT", "BAO_CACERT")
    vault_ca = (_check_ca(vault_ca_env[1], vault_ca_env[0]) if vault_ca_env
                else (deployment.ca_cert if deployment and local_vault else None))

    admin_url = admin_url or _env("FORESIGHT_ADMIN_URL")
    if admin_url is not None:
        _check_url(admin_url, "admin URL (--admin-url, FORESIGHT_ADMIN_URL)", "https://foresight.example.com:8443",
                   "the admin token", ADMIN_INSECURE_ENV)
    # The local service serves the local Vault's tenants only: with another Vault it would be asked to load a
    # tenant it cannot see.
    admin_url = admin_url or (deployment.http_url if deployment and local_vault else None)
    admin_token = _env("FORESIGHT_ADMIN_TOKEN")
    local_admin = deployment is not None and admin_url == deployment.http_url
    if admin_url is not None and admin_token is None:
        if deployment is None or not local_admin:
            raise InvalidInput("admin token", f"admin URL {admin_url} given but FORESIGHT_ADMIN_TOKEN is not set")
        admin_token = _read_token(deployment.admin_token_file, "admin token")
    admin_ca_env = _env("FORESIGHT_ADMIN_CA")
    admin_ca = (_check_ca(admin_ca_env, "FORESIGHT_ADMIN_CA") if admin_ca_env
                else (deployment.ca_cert if deployment and local_admin else None))

    endpoints: Endpoints | None = None
    if deployment is not None and local_admin:
        endpoints = Endpoints(deployment.resp_host, deployment.resp_port, deployment.http_url, deployment.ca_cert)
    elif admin_url is not None:
        endpoints = Endpoints(urlsplit(admin_url).hostname or "localhost", 6380, admin_url, admin_ca)

    kv_mount = _env("FORESIGHT_VAULT_KV_MOUNT") or (deployment.vault_kv_mount if deployment and local_vault else None)
    audit_env = _env("FORESIGHT_AUDIT_LOG")
    audit_log = Path(audit_env) if audit_env else (deployment.audit_log if deployment else paths.onboarding_audit)
    return Target(
        vault_addr=vault_addr,
        vault_token=vault_token,
        vault_ca=vault_ca,
        kv_mount=kv_mount or DEFAULT_MOUNT,  # the service's vault_kv_mount default
        admin_url=admin_url,
        admin_token=admin_token,
        admin_ca=admin_ca,
        endpoints=endpoints,
        audit_log=audit_log,
        paths=paths,
        deployment=deployment,
        local_vault=local_vault,
        local_admin=local_admin,
        kv_mount_default=kv_mount is None,
    )


def with_local_hint(target: Target, failure: OnboardingError) -> OnboardingError:
    """The failure, saying so when it is because a process of the local deployment is not running (the bare
    "Vault unreachable (ConnectionError)" does not tell a stopped deployment from a network problem)."""
    if isinstance(failure, VaultFailure) and target.local_vault:
        process, name = "openbao", "OpenBao"
    elif isinstance(failure, ServiceFailure) and target.local_admin:
        process, name = "service", "service"
    else:
        return failure
    up = f"`foresight local up{state_dir_option(target.paths.root)}`"
    if target.paths.process(process).pid() is not None:
        if process == "openbao" and "(VaultDown)" in failure.why:  # hvac's name for Vault's 503: sealed
            return type(failure)(failure.what, f"{failure.why}; the local OpenBao is sealed (it was restarted "
                                 f"outside {up}, which unseals it)")
        return failure
    hint = f"the local {name} is not running (see `foresight local status`); start it with {up}"
    return type(failure)(failure.what, f"{failure.why}; {hint}")


def _read_token(path: Path, what: str) -> str:
    try:
        return read_secret(path)
    except FileNotFoundError:
        raise NotFound(what, f"{path} is missing; run `foresight local up` again") from None
