"""A tenant's own figures under /v1/stats: the sections RESP INFO prints, as JSON (`service/stats.py`)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.http.deps import Reader, State
from service.stats import Section, clients_section, memory_section, prefetch_section, stats_section

router = APIRouter(prefix="/v1", tags=["stats"])


class TenantStats(BaseModel):
    tenant: str = Field(description="The tenant the API key belongs to.")
    clients: Section = Field(description="The tenant's RESP connections now and since the start, and the commands "
                             "they ran.")
    memory: Section = Field(description="Bytes held, the tenant's budget and its eviction policy.")
    stats: Section = Field(description="Reads answered from memory and not, evictions, expiries, origin fetches.")
    prefetch: Section = Field(description="The tenant's prefetcher, what it issued and how each prefetch settled, "
                              "and what the store saw of prefetched entries.")


@router.get("/stats")
async def tenant_stats(tenant: Reader, state: State) -> TenantStats:
    """The caller's tenant's connections, memory, reads and prefetching: the names RESP `INFO` uses."""
    return TenantStats(tenant=tenant.name, clients=clients_section(state, tenant), memory=memory_section(tenant),
                       stats=stats_section(tenant), prefetch=prefetch_section(state, tenant))
