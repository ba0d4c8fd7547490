"""The FastAPI application: routers mounted once, state attached, and a 405 that names every method allowed."""

from __future__ import annotations

from collections import Counter

from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service import __version__
from service.config import ConfigError
from service.http.routes import admin, health, keys, stats
from service.http.scrape_token import ScrapeToken, VaultSource
from service.http.validators import EntityTags
from service.security.vault_source import VaultKeySource
from service.state import ServiceState

_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def create_app(state: ServiceState) -> FastAPI:
    app = FastAPI(
        title="Foresight",
        version=__version__,
        description="Multi-tenant cache with a learned prefetcher. Authenticate with `Authorization: Bearer <key>`.",
        dependencies=[Depends(_one_value_per_query_parameter)],
    )
    app.state.service = state
    app.state.scrape_token = scrape_token(state)
    app.state.entity_tags = EntityTags()
    app.include_router(health.router)
    app.include_router(keys.router)
    app.include_router(stats.router)
    app.include_router(admin.router)
    app.add_exception_handler(StarletteHTTPException, _allow_every_method)
    return app


def _one_value_per_query_parameter(request: Request) -> None:
    """No route takes a list in its query, and FastAPI keeps the last of repeated values: `?ttl=60&ttl=0` would
    write with whichever a proxy or client library happened to put last."""
    repeated = [name for name, n in Counter(name for name, _ in request.query_params.multi_items()).items() if n > 1]
    if repeated:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"query parameter {repeated[0]!r} given more than once")


async def _allow_every_method(request: Request, exc: Exception) -> Response:
    """FastAPI's answer, with a 405's Allow naming every method the path takes: one route per method answers for
    /v1/keys/{key}, and Starlette names the first route's alone (`POST /v1/keys/a` said `allow: GET`)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        routes = request.app.router.routes  # asked as the router asks them: included routers answer for theirs
        methods = [method for method in _METHODS
                   if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
    return await http_exception_handler(request, exc)


def scrape_token(state: ServiceState) -> ScrapeToken:
    """The metrics token's source: the file if one is set, else the Vault secret beside the keys, else none."""
    settings = state.settings
    if settings.metrics_token_file is not None:
        return ScrapeToken.from_file(settings.metrics_token_file)
    if settings.vault_metrics_path is None:
        return ScrapeToken(None)
    keys = state.authenticator.source if state.authenticator is not None else None
    if not isinstance(keys, VaultKeySource):
        raise ConfigError("vault_metrics_path (FORESIGHT_VAULT_METRICS_PATH) needs keys from Vault: set "
                          "vault_addr, outside dev mode")
    return ScrapeToken(VaultSource(keys.client, keys.mount, settings.vault_metrics_path,
                                   settings.vault_metrics_refresh_s))
