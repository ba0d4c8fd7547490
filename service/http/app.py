"""The FastAPI application: routers mounted once, state attached, nothing else."""

from __future__ import annotations

from fastapi import FastAPI

from service import __version__
from service.http.routes import admin, health, keys, stats
from service.http.scrape_token import ScrapeToken
from service.http.validators import EntityTags
from service.state import ServiceState


def create_app(state: ServiceState) -> FastAPI:
    app = FastAPI(
        title="Foresight",
        version=__version__,
        description="Multi-tenant cache with a learned prefetcher. Authenticate with `Authorization: Bearer <key>`.",
    )
    app.state.service = state
    app.state.scrape_token = ScrapeToken(state.settings.metrics_token_file)
    app.state.entity_tags = EntityTags()
    app.include_router(health.router)
    app.include_router(keys.router)
    app.include_router(stats.router)
    app.include_router(admin.router)
    return app
