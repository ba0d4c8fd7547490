"""Liveness and readiness (open to all: no tenant data), and metrics (every tenant's: a scrape credential)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from service import metrics
from service.http.deps import Scraper, State

router = APIRouter(tags=["operations"])


@router.get("/healthz")
@router.head("/healthz", include_in_schema=False)  # load balancers' and probes' checks use either
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
@router.head("/readyz", include_in_schema=False)
async def readyz(state: State, response: Response) -> dict[str, str]:
    """Ready for traffic: listeners up, tenants loaded, not draining."""
    if state.ready and not state.draining:
        return {"status": "ready"}
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "draining" if state.draining else "starting"}


@router.get("/metrics", response_class=Response)
async def prometheus(state: State, _: Scraper) -> Response:
    """Prometheus text exposition: `Authorization: Bearer` with the scrape token (FORESIGHT_METRICS_TOKEN_FILE, or
    the Vault secret `foresight metrics-token rotate` writes) or the admin token; without a scrape token in force,
    loopback clients need none."""
    return Response(metrics.render(state), media_type="text/plain; version=0.0.4; charset=utf-8")
