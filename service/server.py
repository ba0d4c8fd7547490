"""The service process: RESP and HTTP listeners on one event loop over one set of tenant stores.

Start-up binds both listeners before reporting ready; shutdown stops accepting, marks /readyz draining,
gives in-flight requests `shutdown_grace_s`, then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from service.auth import Authenticator
from service.config import ConfigError, Settings
from service.http.app import create_app
from service.resp.connection import RespConnection
from service.state import DEV_TENANT, ServiceState
from service.tenancy import FileKeySource, KeySource, TenantQuota, TenantsFileError, TenantSpec

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


def build_key_source(settings: Settings) -> KeySource | None:
    if settings.dev:
        return None
    problems = settings.production_problems()
    if problems:
        raise ConfigError("refusing to start outside dev mode:\n  " + "\n  ".join(problems))
    assert settings.tenants_file is not None
    try:
        return FileKeySource(settings.tenants_file)
    except TenantsFileError as err:
        raise ConfigError(str(err)) from None


def build_tls(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
        if settings.tls_client_ca_file:
            context.load_verify_locations(str(settings.tls_client_ca_file))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"TLS material cannot be loaded (FORESIGHT_TLS_*): {err}") from None
    return context


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
        self.key_source = build_key_source(settings)
        self.tls = build_tls(settings)
        authenticator = Authenticator(self.key_source, settings.auth_cache_ttl_s) if self.key_source else None
        self.state = ServiceState(settings, authenticator)
        self._tasks: list[asyncio.Task[None]] = []
        self._resp: asyncio.Server | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_sock: socket.socket | None = None
        self._stopped = asyncio.Event()
        self.endpoints: Endpoints | None = None

    def _tenant_specs(self) -> list[TenantSpec]:
        if self.key_source is None:
            quota = TenantQuota(memory_bytes=self.settings.default_tenant_memory_bytes, origin=self.settings.origin)
            return [TenantSpec(name=DEV_TENANT, quota=quota)]
        return self.key_source.tenants()

    async def start(self) -> Endpoints:
        settings = self.settings
        self.state.tenants.sync(await asyncio.to_thread(self._tenant_specs))
        loop = asyncio.get_running_loop()
        resp_sock = _listen(settings.bind, settings.resp_port)
        self._resp = await loop.create_server(lambda: RespConnection(self.state), sock=resp_sock, ssl=self.tls)
        self._http_sock = _listen(settings.bind, settings.http_port)
        config = uvicorn.Config(
            create_app(self.state),
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
            ssl_ca_certs=str(settings.tls_client_ca_file) if settings.tls_client_ca_file else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca_file else ssl.CERT_NONE,
            timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        )
        self._http = _EmbeddedUvicorn(config)
        self._tasks.append(asyncio.create_task(self._http.serve(sockets=[self._http_sock])))
        while not self._http.started:
            if self._tasks[0].done():
                self._tasks[0].result()
                raise ConfigError("HTTP listener stopped during start-up")
            await asyncio.sleep(0.01)
        self._tasks.append(asyncio.create_task(self._expire_loop()))
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
                self.state.tenants.sync(await asyncio.to_thread(self._tenant_specs))
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
