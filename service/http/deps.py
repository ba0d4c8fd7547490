"""Request dependencies: the caller's tenant, from a Bearer API key (or the dev tenant), and the admin and
metrics credentials."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from service.auth import AuditUnavailable, LookupsBusy, TooManyFailures
from service.cache import TenantCache
from service.http.scrape_token import ScrapeToken
from service.security.admin_token import verify_admin_token
from service.security.apikeys import PREFIX as API_KEY_PREFIX
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="foresight"'}


def _bearer(request: Request) -> str:
    """The token of an `Authorization: Bearer` header; empty when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _current_tenant(request: Request, state: State, scope: str) -> TenantCache:
    """Authenticate the request, check the key's scope, and charge it to the tenant's rate quota."""
    tenant = state.dev_tenant()
    if tenant is None:
        api_key = _bearer(request)
        if not api_key:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send 'Authorization: Bearer <key>'",
                                headers=_CHALLENGE)
        assert state.authenticator is not None
        client = request.client
        peer = f"{client.host}:{client.port}" if client else "?"
        try:
            session = await state.authenticator.login(api_key, peer=peer, listener="http", audit_cached=False)
        except TooManyFailures as refused:
            wait = refused.retry_after_s
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, f"{refused}: try again in {wait} s",
                                headers={"Retry-After": str(wait)}) from None
        except (LookupsBusy, AuditUnavailable) as refused:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{refused}: try again",
                                headers={"Retry-After": str(refused.retry_after_s)}) from None
        tenant = state.tenants.serving(session.principal) if session else None
        if session is None or tenant is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers=_CHALLENGE)
        if scope not in session.principal.scopes:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this API key lacks the '{scope}' scope this request needs")
        request.state.key_id = session.principal.key_id  # for the audit log of what the request changes
    if not tenant.admit():
        rate = tenant.bucket.rate if tenant.bucket else 0
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"rate limit exceeded: tenant '{tenant.name}' allows {rate:g} requests per second",
                            headers={"Retry-After": "1"})
    return tenant


def _tenant_with(scope: str) -> Callable[[Request, ServiceState], Awaitable[TenantCache]]:
    async def tenant_with_scope(request: Request, state: State) -> TenantCache:
        return await _current_tenant(request, state, scope)

    return tenant_with_scope


Reader = Annotated[TenantCache, Depends(_tenant_with("read"))]  # the caller's tenant, for a key with the read scope
Writer = Annotated[TenantCache, Depends(_tenant_with("write"))]  # ... with the write scope
KeyspaceAdmin = Annotated[TenantCache, Depends(_tenant_with("admin"))]  # ... with the admin scope


async def require_admin(request: Request, state: State) -> str:
    """The admin credential: its own token, checked in constant time; a tenant key is refused outright."""
    token = _bearer(request)
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing admin token", headers=_CHALLENGE)
    if token.startswith(f"{API_KEY_PREFIX}_"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "tenant API keys cannot use the admin API")
    stored = state.settings.admin_token_hash
    if stored is None or not verify_admin_token(token, stored):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid admin token", headers=_CHALLENGE)
    client = request.client
    return f"{client.host}:{client.port}" if client else "?"


AdminPeer = Annotated[str, Depends(require_admin)]


def _is_loopback(request: Request) -> bool:
    """The client connected from this machine (as uvicorn saw it: a proxy of forwarded_allow_ips names its own)."""
    if request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


async def require_scraper(request: Request, state: State) -> None:
    """/metrics names every tenant and its activity: the scrape token or the admin token, each checked in constant
    time; without a scrape token in force, a loopback client needs neither (`foresight local up`, dev mode)."""
    token = _bearer(request)
    scrape: ScrapeToken = request.app.state.scrape_token
    await scrape.refresh()
    if token:
        stored = state.settings.admin_token_hash
        if scrape.verify(token) or (stored is not None and verify_admin_token(token, stored)):
            return
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid metrics token", headers=_CHALLENGE)
    if not scrape.configured and _is_loopback(request):
        return
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "metrics need 'Authorization: Bearer <token>' with the scrape "
                        "token (FORESIGHT_METRICS_TOKEN_FILE, or Vault's from `foresight metrics-token rotate`) or the "
                        "admin token", headers=_CHALLENGE)


Scraper = Annotated[None, Depends(require_scraper)]
