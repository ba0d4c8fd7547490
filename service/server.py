"""The service process: RESP and HTTP listeners on one event loop over one set of tenant stores.

Start-up restores the snapshot, binds both listeners and reports ready; the prefetch engines start after, in
the background (a learned prefetcher's child imports torch, seconds per start, and one that hangs is waited on for
minutes). The snapshot file is deleted only once the service serves: a start that fails after the restore puts it
back. SIGINT/SIGTERM during start-up cancel the start and clean up what it had started.

Shutdown stops accepting, marks /readyz draining, gives in-flight requests `shutdown_grace_s`, then cuts off the
rest, and writes the snapshot. Its entries are copied on the event loop in one step: it holds every write a client
was told succeeded. What lands after the copy is not in it: values the origin still holds (read-throughs and
prefetches finishing late), and commands of connections cut off at the grace deadline, which never get a reply.

Every background task is supervised: one that ends while serving is logged as an error naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from service import snapshot
from service.auth import Authenticator
from service.bootstrap import build_security
from service.config import ConfigError, Settings
from service.http.app import create_app
from service.http.connections import http_protocol
from service.listener import Listener, Slots
from service.net import raise_nofile_limit
from service.prefetching import PrefetchManager
from service.resp import reader
from service.resp.connection import RespConnection
from service.security.audit import AuditLogError
from service.security.kms.base import KmsError
from service.shared_tier import SharedTier
from service.state import DEV_TENANT, ServiceState
from service.tenancy import TenantQuota, TenantSpec

log = logging.getLogger(__name__)

TENANT_REFRESH_S = 5.0


@dataclass(frozen=True)
class Endpoints:
    resp_host: str
    resp_port: int
    http_url: str


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling (this process owns shutdown), nor listener: it serves the connections
    the HTTP Listener accepts (service/listener.py), which asyncio's server under uvicorn cannot cap."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _start_problem(settings: Settings, err: KmsError | AuditLogError | OSError) -> ConfigError:
    """A start-up failure as one line naming the setting to fix."""
    if isinstance(err, KmsError):
        return ConfigError(f"KMS (FORESIGHT_KMS_*): {err}")
    if isinstance(err, AuditLogError):
        return ConfigError(f"audit log (FORESIGHT_AUDIT_LOG, default in FORESIGHT_DATA_DIR): {err}")
    if err.filename is None:
        return ConfigError(f"cannot start: {err}")
    where = f"{err.filename}: {err.strerror or err}"
    setting = _setting_holding(settings, str(err.filename))
    return ConfigError(f"{where} ({setting})" if setting else f"cannot start: {where}")


def _setting_holding(settings: Settings, filename: str) -> str | None:
    """The variable of the path setting `filename` lies in (the most specific one), if any."""
    best: tuple[int, str] | None = None
    filename = os.path.abspath(filename)
    for name, value in settings:
        if isinstance(value, Path) or (name == "kms_key_id" and settings.kms_provider == "local"):
            path = os.path.abspath(value)
            inside = filename.startswith((path + os.sep, path + "."))  # in its directory, or its file's temp copy
            if (filename == path or inside) and (best is None or len(path) > best[0]):
                best = (len(path), f"FORESIGHT_{name.upper()}")
    return best[1] if best else None


class Service:
    """Owns the listeners and background loops of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            self.security = build_security(settings)
        except (KmsError, AuditLogError, OSError) as err:
            raise _start_problem(settings, err) from None
        self.key_source = self.security.key_source
        self.tls = self.security.tls
        authenticator = (
            Authenticator(self.key_source, settings.auth_cache_ttl_s, self.security.audit,
                          failure_burst=settings.auth_failure_burst, failure_rate=settings.auth_failure_rate,
                          max_lookups=settings.auth_max_concurrent_lookups)
            if self.key_source else None
        )
        prefetch = PrefetchManager(settings, self.security.cipher)
        self.state = ServiceState(settings, authenticator, self.security.audit, prefetch, self.tls)
        self._tasks: list[asyncio.Task[None]] = []
        self._resp: asyncio.Server | Listener | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_listener: Listener | None = None
        self._stopped = asyncio.Event()
        # Warm restarts need somewhere to write and a KMS to encrypt with: nothing reaches disk in clear. With a
        # shared tier the tier is the warm state: a node's snapshot would bring back values other nodes replaced.
        self._snapshots_on = (settings.data_dir is not None and self.security.cipher is not None
                              and settings.shared_tier_url is None)
        self.shared_tier = SharedTier(settings, self.state.tenants) if settings.shared_tier_url else None
        self.endpoints: Endpoints | None = None

    def _tenant_specs(self) -> list[TenantSpec]:
        if self.key_source is None:
            quota = TenantQuota(memory_bytes=self.settings.default_tenant_memory_bytes, origin=self.settings.origin)
            return [TenantSpec(name=DEV_TENANT, quota=quota)]
        return self.key_source.tenants()

    async def start(self) -> Endpoints:
        """Restore, listen, report ready. A failure (or cancellation) leaves the snapshot file for the next start."""
        try:
            endpoints = await self._start()
        except BaseException:
            if self._snapshots_on:
                assert self.settings.data_dir is not None
                snapshot.put_back(self.settings.data_dir)
            raise
        if self._snapshots_on:
            assert self.settings.data_dir is not None
            snapshot.forget_restored(self.settings.data_dir)
        self.state.ready = True
        log.info("serving RESP on %s:%d and HTTP on %s (tls=%s, dev=%s)", self.settings.bind, endpoints.resp_port,
                 endpoints.http_url, bool(self.tls), self.settings.dev)
        # The engines start once the data is back, and after the ports open: reads never wait for a prefetcher.
        await self.state.sync_prefetch(wait=False)
        return endpoints

    async def _start(self) -> Endpoints:
        settings = self.settings
        try:
            specs = await asyncio.to_thread(self._tenant_specs)
        except OSError as err:  # ConnectionError: Vault unreachable or refusing, and no tenant list to fall back on
            source = ("FORESIGHT_TENANTS_FILE" if settings.tenants_file is not None
                      else "FORESIGHT_VAULT_ADDR, FORESIGHT_VAULT_KV_MOUNT")
            raise ConfigError(f"cannot read the tenants ({source}): {err}") from None
        self.state.tenants.sync(specs)
        if self._snapshots_on:
            assert settings.data_dir is not None and self.security.cipher is not None
            restored = await asyncio.to_thread(snapshot.restore, self.state.tenants, settings.data_dir,
                                               self.security.cipher)
            log.info("restored %d entries from the encrypted snapshot", restored)
        if self.shared_tier is not None:
            await self.shared_tier.start()
            self.state.tenants.share(self.shared_tier)
        if not reader.limited():
            log.warning("this hiredis's reader layout is not the one expected: max_request_args is not enforced, and "
                        "a request header announcing billions of arguments can hold the event loop for seconds")
        tls_context = self.tls.context if self.tls else None  # one context: a certificate reload reaches both
        handshake_s = settings.tls_handshake_timeout_s
        resp_sock = _listen(settings.bind, settings.resp_port)
        if tls_context is None:  # no handshake to bound or count before RespConnection's own admission
            self._resp = await asyncio.get_running_loop().create_server(lambda: RespConnection(self.state),
                                                                        sock=resp_sock)
        else:
            # A connection in its TLS handshake counts against its address here (past it, in RESP's admission until it
            # logs in), and towards resp_max_clients with those past it: one over is dropped, as Redis drops it.
            resp_slots = Slots("RESP", settings, "resp_max_unauthenticated_per_source", "resp_max_clients",
                               counted_elsewhere=lambda: len(self.state.resp_clients))
            self._resp = Listener(resp_sock, lambda _slot: RespConnection(self.state), resp_slots, tls=tls_context,
                                  tls_timeout_s=handshake_s, held=False)
            self.state.connection_caps["resp"] = resp_slots
            self._resp.start()
        self._http = _EmbeddedUvicorn(self._uvicorn_config())
        http_slots = Slots("HTTP", settings, "http_max_connections_per_source", "http_max_connections",
                           uncapped=settings.forwarded_allow_ips)
        self.state.connection_caps["http"] = http_slots
        self._http_listener = http_listener = Listener(
            _listen(settings.bind, settings.http_port), http_protocol(self._http, settings.http_request_head_timeout_s),
            http_slots, tls=tls_context, tls_timeout_s=handshake_s, held=True)
        self._http_task = self._supervised("HTTP listener", self._http.serve(sockets=[]))
        self._http_task.add_done_callback(lambda _: http_listener.close())  # no connections for a server that ended
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise ConfigError("HTTP listener stopped during start-up")
            await asyncio.sleep(0.01)
        http_listener.start()
        self._tasks.append(self._supervised("active expiry", self._expire_loop()))
        if self.tls is not None:
            self._tasks.append(self._supervised("TLS certificate reload",
                                                self.tls.watch(settings.tls_reload_interval_s)))
        if self.security.pki is not None:
            self._tasks.append(self._supervised("Vault PKI certificate renewal", self.security.pki.keep_fresh()))
        if self.state.authenticator is not None:
            self._tasks.append(self._supervised("API key re-check", self.state.authenticator.run()))
            self._tasks.append(self._supervised("tenant refresh", self._tenant_refresh_loop()))
        resp_port, http_port = resp_sock.getsockname()[1], http_listener.port
        scheme = "https" if self.tls else "http"
        host = settings.bind if ":" not in settings.bind else f"[{settings.bind}]"
        self.endpoints = Endpoints(settings.bind, resp_port, f"{scheme}://{host}:{http_port}")
        return self.endpoints

    def _uvicorn_config(self) -> uvicorn.Config:
        settings = self.settings
        return uvicorn.Config(
            create_app(self.state),
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",  # no WebSocket routes; an upgrade would hand the connection to a protocol that keeps no slot
            timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
            # Given explicitly, or uvicorn would believe X-Forwarded-For from 127.0.0.1 (or FORWARDED_ALLOW_IPS).
            proxy_headers=bool(settings.forwarded_allow_ips),
            forwarded_allow_ips=[str(network) for network in settings.forwarded_allow_ips],
        )

    def _supervised(self, name: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task whose end while serving is logged: every one of them should run until stop()."""
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or not self.state.ready or self.state.draining:
            return  # stop() ends them; start() reports its own failures
        err = task.exception()
        if err is None:
            log.error("background task %r ended while serving; what it does has stopped until a restart",
                      task.get_name())
        else:
            log.error("background task %r failed while serving; what it does has stopped until a restart: %s: %s",
                      task.get_name(), type(err).__name__, err, exc_info=err)

    async def _expire_loop(self) -> None:
        interval = self.settings.active_expire_interval_s
        while True:
            await asyncio.sleep(interval)
            for tenant in self.state.tenants:
                tenant.store.active_expire()

    async def _tenant_refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(TENANT_REFRESH_S)
            try:
                await self.state.reload_tenants(self._tenant_specs)
            except Exception as err:  # keep serving the tenants we know; the source may be briefly down
                log.warning("tenant refresh failed: %s", err)

    async def stop(self) -> None:
        """Drain: stop accepting, let in-flight work finish within the grace period, close everything."""
        if self._stopped.is_set():
            return
        self.state.draining = True
        for listener in (self._resp, self._http_listener):
            if listener is not None:
                listener.close()
        if self._http is not None:
            self._http.should_exit = True
        grace = self.settings.shutdown_grace_s
        await self._drain_resp(grace)
        for task in self._tasks:
            task.cancel()
        if self._http_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(grace + 1):
                    await self._http_task
            assert self._http is not None
            for request in list(self._http.server_state.tasks):  # past the grace: cut off, not answered after the copy
                request.cancel()
        await asyncio.gather(*self._tasks, *filter(None, [self._http_task]), return_exceptions=True)
        if self.state.prefetch is not None:
            await self.state.prefetch.stop()
        if self.shared_tier is not None:
            await self.shared_tier.close()
        # Only a service that served writes a snapshot (one kept unrestored is moved aside first, never replaced):
        # before that, the file (kept or put back) is the newest state, and the stores hold none of it or a copy.
        if self._snapshots_on and self.state.ready:
            await self._write_snapshot()
        self.state.tenants.close()
        if self.state.authenticator is not None:  # the last interval's refused logins, before the audit log closes
            await self.state.authenticator.write_summary()
        await asyncio.to_thread(self.security.close)
        self._stopped.set()
        log.info("stopped")

    async def _write_snapshot(self) -> None:
        """List the entries on the loop (nothing writes meanwhile); encode, encrypt and write them in a thread."""
        assert self.settings.data_dir is not None and self.security.cipher is not None
        try:
            sections = snapshot.capture(self.state.tenants)
            path = await asyncio.to_thread(snapshot.write, sections, self.settings.data_dir, self.security.cipher)
            log.info("wrote encrypted snapshot %s", path)
        except Exception as err:  # losing a warm start must not turn a clean stop into a crash
            log.error("snapshot not written: %s: %s", type(err).__name__, err)

    async def _drain_resp(self, grace: float) -> None:
        """Close idle RESP clients now, busy ones once their pipeline is answered; cut off the rest when the grace
        period ends (their commands stop, and none is answered after the snapshot's copy)."""
        deadline = asyncio.get_running_loop().time() + grace
        while True:
            for client in list(self.state.resp_clients):
                if not client.busy:
                    client.close()
            if not self.state.resp_clients or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for client in list(self.state.resp_clients):
            client.kill()

    async def run_until_signalled(self) -> None:
        """Serve until SIGINT/SIGTERM. A signal during start-up cancels the start (a slow Vault's tenant listing
        must not hold a stop for minutes); a failed start is cleaned up too, then its error goes on."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.create_task(self.start())
        signalled = asyncio.create_task(stop.wait())
        await asyncio.wait([starting, signalled], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("signal received during start-up: stopping")
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await self.stop()
            return
        if starting.exception() is not None:
            signalled.cancel()
            with contextlib.suppress(Exception):  # the start's error is the one to report
                await self.stop()
            starting.result()
        await signalled
        log.info("signal received: draining")
        await self.stop()


def run(settings: Settings) -> None:
    """Run the service in this process until SIGINT/SIGTERM."""
    service = Service(settings)
    open_files = raise_nofile_limit()  # every client holds a descriptor: the usual soft limit (1024) is far too low
    if settings.resp_max_clients + settings.http_max_connections > open_files:
        log.warning("resp_max_clients (%d) and http_max_connections (%d) together exceed the open-files limit (%d): "
                    "clients can take every descriptor, and then origin reads and certificate reloads fail too; lower "
                    "FORESIGHT_RESP_MAX_CLIENTS or FORESIGHT_HTTP_MAX_CONNECTIONS, or raise the limit",
                    settings.resp_max_clients, settings.http_max_connections, open_files)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(service.run_until_signalled())
    else:
        uvloop.run(service.run_until_signalled())
