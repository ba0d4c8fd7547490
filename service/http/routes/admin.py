"""The admin API that onboarding drives: tenant usage, an immediate refresh from the key source, data purge."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from service import admin
from service.http.deps import AdminPeer, State

router = APIRouter(prefix="/admin/v1", tags=["admin"])


class BilledReads(BaseModel):
    reads: int = Field(description="The tenant's reads (hits and misses) counted since `since`.")
    since: float = Field(description="When this counter began (epoch s); a new value is a counter that began at 0.")
    scope: Literal["node", "deployment"] = Field(
        description="`deployment`: every node's reads, summed in the shared tier (any node answers the same); "
                    "`node`: this process's reads since its start (a deployment without a shared tier).")


class TenantUsage(BaseModel):
    name: str
    keys: int = Field(description="Keys resident in memory.")
    used_bytes: int
    budget_bytes: int
    requests_per_second: float = Field(description="Rate quota; 0 means unlimited.")
    hits: int
    misses: int
    connections: int = Field(description="Open RESP connections bound to the tenant.")
    counting_since: float = Field(description="When hits and misses began counting (the process's start, epoch s).")
    usage: BilledReads | None = Field(
        description="What marketplace metering bills; null when the shared tier could not say now (try again).")


class TenantNames(BaseModel):
    tenants: list[str]


class Purged(BaseModel):
    tenant: str
    keys_removed: int


@router.get("/tenants")
async def list_tenants(state: State, _: AdminPeer) -> list[TenantUsage]:
    """Every tenant this process serves, with its usage."""
    return [TenantUsage(**usage) for usage in await admin.tenant_usage(state)]


@router.post("/tenants/refresh")
async def refresh_tenants(state: State, peer: AdminPeer) -> TenantNames:
    """Re-read tenants and keys from the key source now, instead of at the next periodic refresh."""
    try:
        names = await admin.refresh(state, peer)
    except admin.RefreshFailed as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(err)) from None
    return TenantNames(tenants=names)


class TenantServed(BaseModel):
    tenant: str
    served: bool = Field(description="True when the tenant exists in the key source and this process serves it.")


@router.post("/tenants/{name}/refresh")
async def refresh_tenant(name: str, state: State, peer: AdminPeer) -> TenantServed:
    """Re-read one tenant and its keys now: what onboarding calls after creating or changing a tenant."""
    try:
        served = await admin.refresh_tenant(state, name, peer)
    except admin.RefreshFailed as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(err)) from None
    return TenantServed(tenant=name, served=served)


@router.delete("/tenants/{name}/data")
async def purge_tenant(name: str, state: State, peer: AdminPeer) -> Purged:
    """Drop everything cached for a tenant (onboarding calls this when it deletes the tenant)."""
    removed = await admin.purge(state, name, peer)
    if removed is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no tenant {name!r} in this process")
    return Purged(tenant=name, keys_removed=removed)
