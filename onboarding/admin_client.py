"""The service's admin API over HTTPS, with the admin bearer token (never a tenant key).

Uses `requests` (already loaded for hvac) so a `tenants` command pays for one HTTP stack, not two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from onboarding.errors import NotFound, ServiceFailure


class AdminClient:
    def __init__(self, url: str, token: str, *, ca_cert: Path | None = None, timeout: float = 30.0) -> None:
        """`timeout` bounds each call; a refresh may start prefetch engines (the first loads torch: seconds)."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = requests.Session()
        self._http.trust_env = False  # else REQUESTS_CA_BUNDLE would override the CA given here, and proxies apply
        self._http.headers["Authorization"] = f"Bearer {token}"
        self._http.verify = str(ca_cert) if ca_cert is not None else True

    def ready(self) -> bool:
        """True when /readyz answers 200; False for anything else, including no answer."""
        try:
            return self._http.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def refresh_tenant(self, tenant: str) -> bool:
        """Make the service re-read one tenant (and its keys) from Vault now; True if it serves it."""
        reply = self._call("POST", f"/admin/v1/tenants/{tenant}/refresh", f"refresh tenant {tenant!r} in the service")
        return bool(reply.get("served"))

    def list_tenants(self) -> list[dict[str, Any]]:
        """Every tenant the service holds, with its usage (name, keys, used_bytes, hits, misses, ...)."""
        reply = self._call("GET", "/admin/v1/tenants", "list the service's tenants")
        return list(reply.get("tenants", [])) if isinstance(reply, dict) else list(reply)

    def drop_data(self, tenant: str) -> None:
        self._call("DELETE", f"/admin/v1/tenants/{tenant}/data", f"drop the cached data of tenant {tenant!r}",
                   missing_ok=True)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, what: str, *, missing_ok: bool = False) -> Any:
        try:
            reply = self._http.request(method, f"{self.url}{path}", timeout=self.timeout)
        except requests.RequestException as err:
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


def _detail(reply: requests.Response) -> str:
    try:
        body = reply.json()
    except ValueError:
        return reply.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)[:200]
