"""The service process: RESP and HTTP listeners on one event loop over one set of tenant stores.

Start-up restores the snapshot, binds both listeners and reports ready; the prefetch engines start after, in
the background (a learned prefetcher's child imports torch, seconds per start, and one that hangs is waited on for
minutes). Shutdown stops accepting, marks /readyz draining, gives in-flight requests `shutdown_grace_s`, then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from service import snapshot
from service.auth import Authenticator
from service.bootstrap import build_security
from service.config import ConfigError, Settings
from service.http.app import create_app
from service.prefetching import PrefetchManager
from service.resp.connection import RespConnection
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
    """uvicorn without its own signal handling: this process owns shutdown."""

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


class Service:
    """Owns the listeners and background loops of one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.security = build_security(settings)
        self.key_source = self.security.key_source
        self.tls = self.security.tls
        authenticator = (
            Authenticator(self.key_source, settings.auth_cache_ttl_s, self.security.audit,
                          failure_burst=settings.auth_failure_burst, failure_rate=settings.auth_failure_rate,
                          max_lookups=settings.auth_max_concurrent_lookups)
            if self.key_source else None
        )
        prefetch = PrefetchManager(settings, self.security.cipher)
        self.state = ServiceState(settings, authenticator, self.security.audit, prefetch)
        self._tasks: list[asyncio.Task[None]] = []
        self._resp: asyncio.Server | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_sock: socket.socket | None = None
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
        settings = self.settings
        specs = await asyncio.to_thread(self._tenant_specs)
        self.state.tenants.sync(specs)
        if self._snapshots_on:
            assert settings.data_dir is not None and self.security.cipher is not None
            restored = await asyncio.to_thread(snapshot.restore, self.state.tenants, settings.data_dir,
                                               self.security.cipher)
            log.info("restored %d entries from the encrypted snapshot", restored)
        if self.shared_tier is not None:
            await self.shared_tier.start()
            self.state.tenants.share(self.shared_tier)
        loop = asyncio.get_running_loop()
        resp_sock = _listen(settings.bind, settings.resp_port)
        tls_context = self.tls.context if self.tls else None
        self._resp = await loop.create_server(lambda: RespConnection(self.state), sock=resp_sock, ssl=tls_context)
        self._http_sock = _listen(settings.bind, settings.http_port)
        config = uvicorn.Config(
            create_app(self.state),
            log_config=None,
            access_log=False,
            lifespan="off",
            # uvicorn serves the same context as RESP, so a certificate reload reaches both listeners.
            ssl_context_factory=self.tls.uvicorn_context_factory() if self.tls else None,
            timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
            # Given explicitly, or uvicorn would believe X-Forwarded-For from 127.0.0.1 (or FORWARDED_ALLOW_IPS).
            proxy_headers=bool(settings.forwarded_allow_ips),
            forwarded_allow_ips=[str(network) for network in settings.forwarded_allow_ips],
        )
        self._http = _EmbeddedUvicorn(config)
        self._tasks.append(asyncio.create_task(self._http.serve(sockets=[self._http_sock])))
        while not self._http.started:
            if self._tasks[0].done():
                self._tasks[0].result()
                raise ConfigError("HTTP listener stopped during start-up")
            await asyncio.sleep(0.01)
        self._tasks.append(asyncio.create_task(self._expire_loop()))
        if self.tls is not None:
            self._tasks.append(asyncio.create_task(self.tls.watch(settings.tls_reload_interval_s)))
        if self.security.pki is not None:
            self._tasks.append(asyncio.create_task(self.security.pki.keep_fresh()))
        if self.state.authenticator is not None:
            self._tasks.append(asyncio.create_task(self.state.authenticator.run()))
            self._tasks.append(asyncio.create_task(self._tenant_refresh_loop()))
        resp_port = resp_sock.getsockname()[1]
        http_port = self._http_sock.getsockname()[1]
        scheme = "https" if self.tls else "http"
        host = settings.bind if ":" not in settings.bind else f"[{settings.bind}]"
        self.endpoints = Endpoints(settings.bind, resp_port, f"{scheme}://{host}:{http_port}")
        self.state.ready = True
        log.info("serving RESP on %s:%d and HTTP on %s (tls=%s, dev=%s)", settings.bind, resp_port,
                 self.endpoints.http_url, bool(self.tls), settings.dev)
        # The engines start once the data is back, and after the ports open: reads never wait for a prefetcher.
        await self.state.sync_prefetch(wait=False)
        return self.endpoints

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
        if self._resp is not None:
            self._resp.close()
        if self._http is not None:
            self._http.should_exit = True
        grace = self.settings.shutdown_grace_s
        await self._drain_resp(grace)
        for task in self._tasks[1:]:
            task.cancel()
        if self._tasks:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(grace + 1):
                    await self._tasks[0]
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.state.prefetch is not None:
            await self.state.prefetch.stop()
        if self.shared_tier is not None:
            await self.shared_tier.close()
        if self._snapshots_on:
            assert self.settings.data_dir is not None and self.security.cipher is not None
            try:
                path = await asyncio.to_thread(snapshot.save, self.state.tenants, self.settings.data_dir,
                                               self.security.cipher)
                log.info("wrote encrypted snapshot %s", path)
            except Exception as err:  # losing a warm start must not turn a clean stop into a crash
                log.error("snapshot not written: %s", err)
        self.state.tenants.close()
        if self.state.authenticator is not None:  # the last interval's refused logins, before the audit log closes
            await self.state.authenticator.write_summary()
        await asyncio.to_thread(self.security.close)
        self._stopped.set()
        log.info("stopped")

    async def _drain_resp(self, grace: float) -> None:
        """Close idle RESP clients now, busy ones once their pipeline is answered or the grace period ends."""
        deadline = asyncio.get_running_loop().time() + grace
        while True:
            for client in list(self.state.resp_clients):
                if not client.busy:
                    client.close()
            if not self.state.resp_clients or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for client in list(self.state.resp_clients):
            client.close()

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("signal received: draining")
        await self.stop()


def run(settings: Settings) -> None:
    """Run the service in this process until SIGINT/SIGTERM."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(Service(settings).run_until_signalled())
    else:
        uvloop.run(Service(settings).run_until_signalled())
