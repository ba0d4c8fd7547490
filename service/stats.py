"""What a tenant may see of its own cache: memory, reads and what prefetching did for it.

One set of names for both front ends: RESP `INFO memory|stats|prefetch` prints these sections as Redis does
(`name:value` lines), and HTTP `GET /v1/stats` returns them as JSON. Only the tenant's own figures: operators
have every tenant's on /metrics, and a tenant's API key shows it nothing of the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.cache import TenantCache
    from service.state import ServiceState

Section = dict[str, int | float | str]


def clients_section(state: ServiceState, tenant: TenantCache) -> Section:
    """The tenant's RESP connections and commands, its own only: no tenant learns how busy another is."""
    open_commands = sum(c.commands_processed - c.commands_at_bind for c in state.resp_clients if c.tenant is tenant)
    return {"connected_clients": state.connections.per_tenant.get(tenant.name, 0),
            "total_connections_received": tenant.connections_received,
            "total_commands_processed": tenant.commands_of_closed + open_commands}


def memory_section(tenant: TenantCache) -> Section:
    store, scripts = tenant.store, tenant.scripts
    return {"used_memory": store.used, "maxmemory": store.budget, "maxmemory_policy": store.policy.name,
            "used_memory_lua": scripts.memory_used if scripts is not None else 0,
            "number_of_cached_scripts": len(scripts) if scripts is not None else 0}


def stats_section(tenant: TenantCache) -> Section:
    stats = tenant.store.stats
    return {
        "keyspace_hits": stats.hits,
        "keyspace_misses": stats.misses,
        "expired_keys": stats.expired,
        "evicted_keys": stats.evictions,
        "origin_fetches": tenant.origin_fetches,
        "origin_errors": tenant.origin_errors,
        "rate_limited_commands": tenant.rate_limited,
    }


def prefetch_section(state: ServiceState, tenant: TenantCache) -> Section:
    """The tenant's prefetcher and its books. `prefetch_*` counts what the engine issued and how each settled
    within the 64 reads after it (used: read as a hit; late: read as a miss first, still being fetched or
    already evicted; wasted: not read); `prefetched_*` what the store saw of prefetched entries."""
    running = state.prefetch.running.get(tenant.name) if state.prefetch is not None else None
    stats = tenant.store.stats
    section: Section = {"prefetcher": running.arm if running is not None else "none"}
    if running is not None:
        engine = running.engine
        books = engine.coordinator.stats
        section.update({
            "prefetch_serving_arm": engine.prefetcher.serving_arm or running.arm,
            "prefetch_issued": books.issued,
            "prefetch_used": books.used,
            "prefetch_late": books.late,
            "prefetch_wasted": books.wasted,
            "prefetch_reads_predicted": engine.predicted,
            "prefetch_mean_lag_reads": round(engine.issue_lag_reads / engine.predicted, 2) if engine.predicted else 0,
        })
        if (lead := engine.stride_lead) is not None:
            section["prefetch_stride_lead"] = lead
    section.update({
        "prefetched_inserted": stats.prefetch_inserted,
        "prefetched_hits": stats.prefetch_used,
        "prefetched_evicted_unused": stats.prefetch_evicted_unused,
    })
    return section
