"""API-key logins for both front ends, with a short cache and revocation pushed to live sessions.

The key source may block (Vault over HTTP), so it is only ever called from a worker thread. A verified key
is trusted for `ttl` seconds; a background loop re-checks every key that a live connection still uses,
and marks its session revoked, so a revoked key stops working on every listener within about one `ttl`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from service.security.apikeys import hash_key
from service.tenancy import KeySource, Principal

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Session:
    """A verified key as held by connections; `revoked` flips when the key stops being valid."""

    principal: Principal
    _api_key: str = field(repr=False)
    verified_at: float = 0.0
    users: int = 0
    revoked: bool = False


class Authenticator:
    def __init__(self, source: KeySource, ttl: float = 1.0) -> None:
        self.source = source
        self.ttl = ttl
        self._sessions: dict[str, Session] = {}  # key hash -> session; never the key itself as a dict key

    async def login(self, api_key: str) -> Session | None:
        """A session for a valid key, or None. Cached for `ttl`; unknown keys are never cached."""
        digest = hash_key(api_key)
        session = self._sessions.get(digest)
        if session is not None and not session.revoked and time.monotonic() - session.verified_at < self.ttl:
            return session
        principal = await asyncio.to_thread(self.source.authenticate, api_key)
        if principal is None:
            if session is not None:
                session.revoked = True
                del self._sessions[digest]
            return None
        if session is None or session.revoked or session.principal != principal:
            session = Session(principal, api_key)
            self._sessions[digest] = session
        session.verified_at = time.monotonic()
        return session

    def attach(self, session: Session) -> None:
        session.users += 1

    def detach(self, session: Session) -> None:
        session.users -= 1

    async def recheck(self) -> int:
        """Re-verify keys in use (and forget idle ones); returns how many sessions were revoked."""
        revoked = 0
        for digest, session in list(self._sessions.items()):
            if session.users <= 0 and time.monotonic() - session.verified_at >= self.ttl:
                del self._sessions[digest]
                continue
            if time.monotonic() - session.verified_at < self.ttl / 2:
                continue
            try:
                principal = await asyncio.to_thread(self.source.authenticate, session._api_key)
            except Exception as err:  # a source outage must not log out everyone; the source bounds staleness
                log.warning("key re-check failed for key id %s: %s", session.principal.key_id, type(err).__name__)
                continue
            if principal != session.principal:
                session.revoked = True
                self._sessions.pop(digest, None)
                revoked += 1
            else:
                session.verified_at = time.monotonic()
        return revoked

    async def run(self) -> None:
        """Re-check forever, twice per ttl."""
        while True:
            await asyncio.sleep(max(self.ttl / 2, 0.05))
            await self.recheck()
