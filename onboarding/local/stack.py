"""`foresight local up|status|down`: the whole product on this machine, owned by one state directory.

`up` is idempotent: it starts what is not running (OpenBao, then the service), unseals, re-applies the
Vault set-up, reuses the demo tenant and its stored key, and reports. Every option is checked before anything
starts. If a later step of one `up` fails (or it is interrupted), what that same `up` started is stopped
again, a service it restarted with new settings runs again with the old ones, and the new settings are not
kept. `down` stops the service, then OpenBao (SIGTERM, then SIGKILL); `--purge` also deletes the state
directory. Neither touches a directory that is not a Foresight state directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import math
import os
import shutil
import socket
import statistics
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import hvac

from onboarding.auditing import OnboardingAudit
from onboarding.context import Endpoints
from onboarding.errors import InvalidInput, LocalFailure
from onboarding.journal import Journal
from onboarding.local import demo, pki
from onboarding.local.openbao import OpenBao
from onboarding.local.processes import STOP_TIMEOUT_S
from onboarding.local.serve import LocalService, check_settings, service_stop_timeout
from onboarding.plans import PLANS
from onboarding.state import (
    Deployment,
    StatePaths,
    load_deployment,
    read_secret,
    save_deployment,
    state_dir_option,
    write_secret,
)
from onboarding.tenants import Onboarder
from service.config import Settings
from service.net import free_port
from service.security.admin_token import new_admin_token
from service.security.apikeys import MalformedKey, key_id_of
from service.security.vault_keys import DEFAULT_MOUNT, VaultKeyAdmin, VaultKeyStoreError
from service.tenancy import TenantQuota

DEFAULT_RESP_PORT = 6380
DEFAULT_HTTP_PORT = 8443
DEFAULT_VAULT_PORT = 8200
DEFAULT_ORIGIN_LATENCY_MS = 5.0  # the demo origin stands in for an object store a few milliseconds away
DEMO_TENANT = "demo"
# The same workload as a tenant whose prefetcher is off: the demo's "without prefetch" row.
BASELINE_TENANT = "demo-noprefetch"
HOST = "127.0.0.1"
PROCESSES = ("openbao", "service")  # start order; stopped in reverse


@dataclass(frozen=True)
class UpOptions:
    """Ports: None keeps the deployment's (or the default), 0 picks a free one."""

    resp_port: int | None = None
    http_port: int | None = None
    vault_port: int | None = None
    origin_latency_ms: float | None = None
    demo: bool = True
    service_settings: dict[str, str] = field(default_factory=dict)  # merged into the kept ones; "" removes

    def check(self) -> None:
        """InvalidInput naming the option, for a value that would fail later (after something had started)."""
        for flag, port in (("--resp-port", self.resp_port), ("--http-port", self.http_port),
                           ("--vault-port", self.vault_port)):
            if port is not None and not 0 <= port <= 65535:
                raise InvalidInput(f"{flag} {port}", "must be 0-65535 (0 picks a free one)")
        latency = self.origin_latency_ms
        if latency is not None and not (math.isfinite(latency) and latency >= 0):
            raise InvalidInput(f"--origin-latency-ms {latency:g}", "must be a number of milliseconds, 0 or more")
        check_settings(self.service_settings)


@dataclass
class UpResult:
    deployment: Deployment
    tenant: str
    api_key: str
    key_id: str
    started: list[str] = field(default_factory=list)
    demo: list[demo.PhaseResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Undo:
    """What a failing `up` puts back."""

    started: list[str] = field(default_factory=list)  # stopped again
    replaced: Deployment | None = None  # the deployment whose running service `up` stopped to apply new settings
    kept: Deployment | None = None  # the record saved before anything started: saved again


@dataclass
class ProcessStatus:
    name: str
    pid: int | None
    health: str


class LocalStack:
    def __init__(self, state_dir: Path) -> None:
        self.paths = StatePaths(state_dir)

    # -- up --------------------------------------------------------------------------------------------------

    def up(self, options: UpOptions, step: Callable[[str], None] = lambda _: None) -> UpResult:
        options.check()
        fresh = not self.paths.root.exists()
        self.paths.create()
        with self.lock():
            undo = _Undo()
            try:
                return self._up(options, step, undo)
            except BaseException:
                self._undo(undo)
                if fresh and undo.kept is None:  # refused before anything was saved: leave no directory behind
                    shutil.rmtree(self.paths.root, ignore_errors=True)
                raise

    def _undo(self, undo: _Undo) -> None:
        self._stop(reversed(undo.started))
        if undo.kept is not None:
            save_deployment(self.paths, undo.kept)
        if undo.replaced is not None and self.paths.process("service").pid() is None:
            # best effort: the error being raised says what failed, and the next `up` starts the service anyway
            with contextlib.suppress(Exception):
                LocalService(self.paths, undo.replaced).start()

    def _up(self, options: UpOptions, step: Callable[[str], None], undo: _Undo) -> UpResult:
        paths = self.paths
        started = undo.started
        previous = load_deployment(paths)
        deployment = self._plan(options, previous)
        service = LocalService(paths, deployment)
        service.check_settings()
        # Until the service has run with them, the new settings are not kept: a value it refuses must not stay
        # saved for every later `up`.
        undo.kept = deployment.model_copy(update={
            "origin_latency_ms": previous.origin_latency_ms if previous else DEFAULT_ORIGIN_LATENCY_MS,
            "service_settings": previous.service_settings if previous else {},
        })
        save_deployment(paths, undo.kept)
        bao = OpenBao(paths, deployment.vault_port, deployment.vault_cluster_port)

        step("certificates")
        if pki.ensure_tls(paths):
            bao.reload_tls()
        if not paths.admin_token.exists():
            write_secret(paths.admin_token, new_admin_token())

        step("OpenBao")
        bao.discard_interrupted_init()
        if bao.start():
            started.append("openbao")
        bao.unseal()
        bao.configure(deployment.vault_kv_mount)

        step("service")
        demo_keys = demo.seed_origin(paths.origin, deployment.demo_tenant)
        demo.seed_origin(paths.origin, BASELINE_TENANT)
        if service.outdated():
            undo.replaced = previous
            service.restart()  # `--set` changed its settings
            started.append("service")
        elif service.start():
            started.append("service")
        save_deployment(paths, deployment)

        step("demo tenant")
        onboard = self._onboarder(deployment)
        try:
            onboard.recover()
            api_key, warnings = self._demo_key(onboard, deployment.demo_tenant, PLANS["pro"])
            baseline_quota = PLANS["pro"].model_copy(update={"prefetcher": "none"})
            baseline_key, baseline_warnings = self._demo_key(onboard, BASELINE_TENANT, baseline_quota)
            warnings += baseline_warnings
        finally:
            onboard.close()
        result = UpResult(deployment, deployment.demo_tenant, api_key, key_id_of(api_key), started, [], warnings)

        if options.demo:
            step("demo workload")
            try:
                target = demo.Target(deployment.resp_host, deployment.resp_port, deployment.http_url, paths.ca_cert)
                settings = deployment.service_settings
                default = Settings.model_fields["prefetcher"].default
                prefetched = settings.get("prefetcher", default) != "none" or "prefetch_ab_arms" in settings
                phases = [demo.Phase(BASELINE_TENANT, baseline_key),
                          demo.Phase(deployment.demo_tenant, api_key, prefetched=prefetched)]
                result.demo = demo.run_demo(target, phases, demo_keys)
            except (OSError, RuntimeError, statistics.StatisticsError) as err:
                result.warnings.append(f"demo workload failed: {type(err).__name__}: {err}")
        return result

    def _plan(self, options: UpOptions, previous: Deployment | None) -> Deployment:
        """The deployment's ports and paths: kept from the last `up`, changed only when nothing runs."""
        paths = self.paths
        running = {name for name, pid in self._pids().items() if pid is not None}

        def port(asked: int | None, kept: int | None, default: int, owner: str, flag: str) -> int:
            if kept is not None and owner in running:
                if asked not in (None, 0, kept):
                    raise LocalFailure(f"{flag} {asked}", f"the running deployment uses {kept}; run `foresight "
                                       f"local down{state_dir_option(paths.root)}` first")
                return kept
            chosen = asked if asked is not None else (kept if kept is not None else default)
            if chosen == 0:
                return free_port(HOST)
            if not _port_free(chosen):
                raise LocalFailure(f"port {chosen}", f"in use by another program; pass {flag} (0 picks a free one)")
            return chosen

        resp_port = port(options.resp_port, previous.resp_port if previous else None, DEFAULT_RESP_PORT, "service",
                         "--resp-port")
        http_port = port(options.http_port, previous.http_port if previous else None, DEFAULT_HTTP_PORT, "service",
                         "--http-port")
        vault_port = port(options.vault_port, previous.vault_port if previous else None, DEFAULT_VAULT_PORT, "openbao",
                          "--vault-port")
        # raft remembers its cluster address: keep it once OpenBao has been initialised
        cluster_port = previous.vault_cluster_port if previous and paths.openbao_init.exists() else 0
        if cluster_port == 0 or ("openbao" not in running and not _port_free(cluster_port)):
            cluster_port = free_port(HOST)
        latency = options.origin_latency_ms
        if latency is None:
            latency = previous.origin_latency_ms if previous else DEFAULT_ORIGIN_LATENCY_MS
        settings = {**(previous.service_settings if previous else {}), **options.service_settings}
        settings = {name: value for name, value in settings.items() if value != ""}
        return Deployment(
            state_dir=paths.root,
            resp_host=HOST,
            resp_port=resp_port,
            http_port=http_port,
            http_url=f"https://{HOST}:{http_port}",
            ca_cert=paths.ca_cert,
            vault_addr=f"https://{HOST}:{vault_port}",
            vault_port=vault_port,
            vault_cluster_port=cluster_port,
            vault_kv_mount=DEFAULT_MOUNT,
            vault_token_file=paths.operator_token,
            admin_token_file=paths.admin_token,
            audit_log=paths.onboarding_audit,
            service_audit_log=paths.service_audit,
            origin=paths.origin,
            demo_tenant=DEMO_TENANT,
            origin_latency_ms=latency,
            service_settings=settings,
        )

    def _onboarder(self, deployment: Deployment) -> Onboarder:
        client = hvac.Client(url=deployment.vault_addr, token=read_secret(self.paths.operator_token),
                             verify=str(self.paths.ca_cert), timeout=5)
        service = LocalService(self.paths, deployment)
        endpoints = Endpoints(deployment.resp_host, deployment.resp_port, deployment.http_url, deployment.ca_cert)
        return Onboarder(
            VaultKeyAdmin(client, deployment.vault_kv_mount),
            service.admin(),
            OnboardingAudit(deployment.audit_log),
            Journal(self.paths.pending, deployment.vault_addr),
            endpoints,
        )

    def _demo_key(self, onboard: Onboarder, tenant: str, quota: TenantQuota) -> tuple[str, list[str]]:
        """A demo tenant's key: the stored one while it is usable, else a new one (the tenant made if needed)."""
        key_admin = onboard.key_admin
        key_file = self.paths.demo_key(tenant)
        try:
            if key_admin.get_tenant(tenant) is None:
                created = onboard.create_tenant(tenant, quota)
                write_secret(key_file, created.key.secret)
                return created.key.secret, created.warnings
            stored = read_secret(key_file) if key_file.exists() else None
            if stored is not None:
                info = key_admin.get_key(key_id_of(stored), tenant=tenant)
                if info.usable_at(dt.datetime.now(dt.UTC)):
                    return stored, []
        except (VaultKeyStoreError, MalformedKey):
            pass  # a stored key Vault no longer knows: issue another below
        new = onboard.issue_key(tenant, ["read", "write"])
        write_secret(key_file, new.key.secret)
        return new.key.secret, new.warnings

    # -- status and down -------------------------------------------------------------------------------------

    def deployment(self) -> Deployment | None:
        return load_deployment(self.paths)

    def status(self) -> list[ProcessStatus]:
        deployment = self.deployment()
        pids = self._pids()
        rows = []
        bao_health = "stopped"
        if deployment is not None and pids["openbao"] is not None:
            code = OpenBao(self.paths, deployment.vault_port, deployment.vault_cluster_port).health()
            bao_health = {200: "active", 429: "standby", 501: "not initialised", 503: "sealed"}.get(
                code or 0, "not answering"
            )
        rows.append(ProcessStatus("openbao", pids["openbao"], bao_health))
        service_health = "stopped"
        if deployment is not None and pids["service"] is not None:
            admin = LocalService(self.paths, deployment).admin()
            try:
                service_health = "ready" if admin.ready() else "not ready"
            finally:
                admin.close()
        rows.append(ProcessStatus("service", pids["service"], service_health))
        return rows

    def down(self, purge: bool = False) -> list[str]:
        """Stop everything (service first); with `purge` delete the state directory. Returns what stopped.

        A directory `up` did not make (missing, empty or someone else's) has nothing to stop and is left exactly
        as it is; purging one that holds anything is refused (InvalidInput)."""
        if not self.paths.is_ours():
            if purge and self.paths.root.is_dir() and any(self.paths.root.iterdir()):
                raise InvalidInput(f"purge {self.paths.root}", "not a Foresight state directory (no "
                                   f"{self.paths.marker.name}); not deleting it")
            return []
        with self.lock():
            stopped = self._stop(reversed(PROCESSES))
        if purge:
            shutil.rmtree(self.paths.root)
        return stopped

    def _stop(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if self.paths.process(name).stop(self._stop_timeout(name))]

    def _stop_timeout(self, name: str) -> float:
        """The service gets its whole stop (a damaged record: the default's), OpenBao the usual 10 s."""
        if name != "service":
            return STOP_TIMEOUT_S
        try:
            deployment = load_deployment(self.paths)
        except LocalFailure:
            deployment = None
        return service_stop_timeout(deployment)

    def _pids(self) -> dict[str, int | None]:
        return {name: self.paths.process(name).pid() for name in PROCESSES}

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One `up`, `down` or `rewrap` at a time per state directory (ours only: it leaves a `.lock` file)."""
        fd = os.open(self.paths.root / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no owner
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True
