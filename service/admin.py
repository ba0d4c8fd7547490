"""Admin operations behind the admin API (and a tenant emptying its own keyspace, which RESP and HTTP both
offer), kept apart from the protocols so they are plain, testable functions."""

from __future__ import annotations

import asyncio
from typing import Any

from service.cache import TenantCache
from service.state import ServiceState
from service.tier_usage import reads


class RefreshFailed(RuntimeError):
    """The key source could not be read; the tenants already served are unchanged."""


async def tenant_usage(state: ServiceState) -> list[dict[str, Any]]:
    connections = state.connections.per_tenant
    caches = list(state.tenants)
    billed = await _billed_reads(state, caches) or {}
    return [
        {
            "name": t.name,
            "keys": len(t.store),
            "used_bytes": t.store.used,
            "budget_bytes": t.store.budget,
            "requests_per_second": t.bucket.rate if t.bucket else 0.0,
            "hits": t.store.stats.hits,
            "misses": t.store.stats.misses,
            "connections": connections.get(t.name, 0),
            "counting_since": state.started,  # the counters above start with the process: metering spots a restart
            "usage": billed.get(t.name),
        }
        for t in caches
    ]


async def _billed_reads(state: ServiceState, caches: list[TenantCache]) -> dict[str, dict[str, Any]] | None:
    """What metering bills per tenant: on a shared tier, the reads of every node (tier_usage.py), so any node's
    admin API answers for the deployment; alone, this process's reads since its start. None: the tier could not
    say now (metering tries again next run; nothing is lost)."""
    tier = state.tenants.shared
    if tier is None:
        return {t.name: {"reads": reads(t), "since": state.started, "scope": "node"} for t in caches}
    totals = await tier.deployment_reads(caches)
    if totals is None:
        return None
    return {name: {"reads": total.reads, "since": total.since, "scope": "deployment"} for name, total in totals.items()}


async def refresh(state: ServiceState, peer: str) -> list[str]:
    authenticator = state.authenticator
    if authenticator is None:
        return [t.name for t in state.tenants]
    source = authenticator.source
    try:
        specs = await state.reload_tenants(lambda: source.tenants(fresh=True), wait=False)
    except Exception as err:
        raise RefreshFailed(f"key source unavailable: {type(err).__name__}") from None
    await authenticator.recheck(force=True)
    await _audit(state, "admin.tenants.refresh", peer, tenants=len(specs))
    return [spec.name for spec in specs]


async def refresh_tenant(state: ServiceState, name: str, peer: str) -> bool:
    """Re-read one tenant (and forget its cached keys); True if the service now serves it."""
    authenticator = state.authenticator
    if authenticator is None:
        return state.tenants.get(name) is not None
    try:
        spec = await state.reload_tenant(name, authenticator.source.tenant)
    except Exception as err:
        raise RefreshFailed(f"key source unavailable: {type(err).__name__}") from None
    await authenticator.recheck(force=True, tenant=name)  # a key revoked now is refused from its next login
    await _audit(state, "admin.tenant.refresh", peer, tenant=name, served=spec is not None)
    return spec is not None


async def purge(state: ServiceState, name: str, peer: str) -> int | None:
    tenant = state.tenants.get(name)
    if tenant is None:
        return None
    return await _empty(state, tenant, "admin.tenant.purge", peer)


async def flush(state: ServiceState, tenant: TenantCache, key_id: str | None, peer: str, via: str) -> int:
    """A tenant empties its own keyspace (FLUSHDB, FLUSHALL, DELETE /v1/keys; the key's admin scope was checked
    by the protocol). Keys read again come back from the origin."""
    return await _empty(state, tenant, "tenant.flush", peer, actor=f"key:{key_id}" if key_id else "dev",
                        key_id=key_id, via=via)


async def _empty(state: ServiceState, tenant: TenantCache, action: str, peer: str, **audit: Any) -> int:
    """Empty a tenant's store, then audit who did it and how many keys went. The store is emptied before the
    first await, so a client's next command already sees it empty."""
    removed = len(tenant.store)
    tenant.store.flush()
    await _audit(state, action, peer, tenant=tenant.name, keys_removed=removed, **audit)
    return removed


async def _audit(state: ServiceState, action: str, peer: str, tenant: str | None = None, actor: str = "admin",
                 **details: Any) -> None:
    if state.audit is not None:
        await asyncio.to_thread(state.audit.record, action, actor=actor, tenant=tenant, source=peer, **details)
