"""What both front ends share in one process: settings, tenants, the authenticator and live counters."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service import __version__
from service.auth import Authenticator
from service.cache import TenantCache, TenantRegistry
from service.config import Settings

if TYPE_CHECKING:
    from service.listener import Slots
    from service.prefetching import PrefetchManager
    from service.resp.connection import RespConnection
    from service.security.audit import AuditLog
    from service.security.tls import ServerTLS
    from service.tenancy import TenantSpec

DEV_TENANT = "default"
REDIS_COMPAT_VERSION = "7.0.15"  # the Redis release whose replies we match, reported where clients look


@dataclass
class ConnectionCounters:
    current: int = 0
    commands: int = 0
    per_tenant: dict[str, int] = field(default_factory=dict)


class ServiceState:
    def __init__(self, settings: Settings, authenticator: Authenticator | None, audit: AuditLog | None = None,
                 prefetch: PrefetchManager | None = None, tls: ServerTLS | None = None) -> None:
        self.settings = settings
        self.audit = audit
        self.tls = tls
        self.prefetch = prefetch
        self.tenants = TenantRegistry(settings)
        self.authenticator = authenticator
        self.connections = ConnectionCounters()
        self.started = time.time()
        self.version = __version__
        self.resp_clients: set[RespConnection] = set()
        self.connection_caps: dict[str, Slots] = {}  # by listener, where the service accepts its connections itself
        self._client_ids: set[int] = set()  # of the open RESP connections
        self.ready = False
        self.draining = False
        self._reloading = asyncio.Lock()

    @property
    def auth_required(self) -> bool:
        return self.authenticator is not None

    async def reload_tenants(self, read: Callable[[], list[TenantSpec]], wait: bool = True) -> list[TenantSpec]:
        """Read every tenant off the event loop and serve exactly those, starting and stopping their prefetch
        engines (in the background unless `wait`: a first learned model takes seconds to load).

        Reloads run one at a time, read and apply together: a list read before a single tenant's reload and
        applied after it would stop serving a tenant just created (or serve one just deleted) until the next
        list, so a tenant's first login could be refused."""
        async with self._reloading:
            specs = await asyncio.to_thread(read)
            self.tenants.sync(specs)
        await self.sync_prefetch(wait)
        return specs

    async def reload_tenant(self, name: str, read: Callable[[str], TenantSpec | None]) -> TenantSpec | None:
        """Read one tenant off the event loop and serve it as it now is, or stop serving it (None), leaving
        the others untouched; one reload at a time, as `reload_tenants` says why."""
        async with self._reloading:
            spec = await asyncio.to_thread(read, name)
            if spec is None:
                self.tenants.remove(name)
            else:
                self.tenants.upsert(spec)
        await self.sync_prefetch(wait=False)
        return spec

    async def sync_prefetch(self, wait: bool = True) -> None:
        """One prefetch engine per served tenant (started, or stopped for a tenant no longer served)."""
        if self.prefetch is None:
            return
        if wait:
            await self.prefetch.sync(self.tenants)
        else:
            self.prefetch.sync_soon(self.tenants)

    def commands_processed(self) -> int:
        """Commands of closed connections plus those of open ones (counted per connection, off the hot path)."""
        return self.connections.commands + sum(c.commands_processed for c in self.resp_clients)

    def next_client_id(self) -> int:
        """An id no open connection holds, drawn at random (52 bits: exact in every client's numbers): with Redis's
        counter, a tenant could count the connections other tenants opened between two of its own."""
        while (client_id := secrets.randbits(52) + 1) in self._client_ids:
            pass
        self._client_ids.add(client_id)
        return client_id

    def release_client_id(self, client_id: int) -> None:
        self._client_ids.discard(client_id)

    def dev_tenant(self) -> TenantCache | None:
        """The tenant every client gets without AUTH in dev mode; None in production."""
        return None if self.auth_required else self.tenants.get(DEV_TENANT)
