"""The service's admin API over HTTPS, with the admin bearer token (never a tenant key)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from onboarding.errors import NotFound, ServiceFailure


class AdminClient:
    def __init__(self, url: str, token: str, *, ca_cert: Path | None = None, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        verify: Any = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert is not None else True
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=timeout,
        )

    def ready(self) -> bool:
        """True when /readyz answers 200; False for anything else, including no answer."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def refresh(self) -> list[str]:
        """Make the service re-read tenants and keys from Vault now; the tenants it then serves."""
        reply = self._call("POST", "/admin/v1/tenants/refresh", "refresh the service's tenants")
        return list(reply.get("tenants", []))

    def list_tenants(self) -> list[dict[str, Any]]:
        reply = self._call("GET", "/admin/v1/tenants", "list the service's tenants")
        tenants = reply.get("tenants", reply) if isinstance(reply, dict) else reply
        return list(tenants)

    def drop_data(self, tenant: str) -> None:
        self._call("DELETE", f"/admin/v1/tenants/{tenant}/data", f"drop tenant {tenant!r}'s cached data",
                   missing_ok=True)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, what: str, *, missing_ok: bool = False) -> Any:
        try:
            reply = self._http.request(method, path)
        except httpx.HTTPError as err:
            raise ServiceFailure(what, f"service at {self.url} unreachable ({type(err).__name__})") from None
        if reply.status_code == 404 and missing_ok:
            return {}
        if reply.status_code in (401, 403):
            raise ServiceFailure(what, f"the service refused the admin token (HTTP {reply.status_code})")
        if reply.status_code == 404:
            raise NotFound(what, f"the service answered 404 for {path}")
        if reply.status_code >= 400:
            raise ServiceFailure(what, f"the service answered HTTP {reply.status_code}: {_detail(reply)}")
        return reply.json() if reply.content else {}


def _detail(reply: httpx.Response) -> str:
    try:
        body = reply.json()
    except ValueError:
        return reply.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)[:200]
