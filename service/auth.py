"""API-key logins for both front ends, with a short cache and revocation pushed to live sessions.

The key source may block (Vault over HTTP), so it is only ever called from a worker thread. A verified key
is trusted for `ttl` seconds; a background loop re-checks every key that a live connection still uses,
and marks its session revoked, so a revoked key stops working on every listener within about one `ttl`.
Sessions no connection uses (every HTTP one) are never re-checked: they are forgotten once `ttl` old, and
the next login with the key asks the source again. If the source keeps failing, a session in use is revoked
once it has not been verified for the source's `stale_grace` (when it has one): a backstop, since the source
itself answers from its cache only that long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.security.apikeys import MalformedKey, hash_key, key_id_of
from service.tenancy import KeySource, Principal

if TYPE_CHECKING:
    from service.security.audit import AuditLog

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
    def __init__(self, source: KeySource, ttl: float = 1.0, audit: AuditLog | None = None) -> None:
        self.source = source
        self.ttl = ttl
        self.audit = audit
        self._sessions: dict[str, Session] = {}  # key hash -> session; never the key itself as a dict key
        self._rechecking = asyncio.Lock()  # one pass at a time: the run loop's and an admin refresh's
        stale_grace = getattr(source, "stale_grace", None)  # how long the source serves answers while it fails
        self.stale_bound: float | None = float(stale_grace) if stale_grace is not None else None

    async def login(self, api_key: str, *, peer: str, listener: str, audit_cached: bool = True) -> Session | None:
        """A session for a valid key, or None. Cached for `ttl`; unknown keys are never cached.

        Every attempt is audited (a cached success only with `audit_cached`: HTTP sends the key on every
        request, so it audits new sessions and failures, not each request).
        """
        digest = hash_key(api_key)
        session = self._sessions.get(digest)
        audited = False
        if session is not None and not session.revoked and time.monotonic() - session.verified_at < self.ttl:
            if not audit_cached:
                return session
            await self._audit(session.principal, api_key, peer, listener)
            if self._sessions.get(digest) is session and not session.revoked:
                return session
            audited = True  # a re-check forgot it meanwhile: verify again, or no re-check would ever reach it
        principal = await asyncio.to_thread(self.source.authenticate, api_key)
        if not audited or principal is None:
            await self._audit(principal, api_key, peer, listener)
        if principal is None:
            if session is not None:
                session.revoked = True
                if self._sessions.get(digest) is session:  # another login or the re-check may have gone first
                    del self._sessions[digest]
            return None
        session = self._sessions.get(digest)  # as it is now: an overlapping login may have made one meanwhile
        if session is None or session.revoked or session.principal != principal:
            session = Session(principal, api_key)
            self._sessions[digest] = session
        session.verified_at = time.monotonic()
        return session

    async def _audit(self, principal: Principal | None, api_key: str, peer: str, listener: str) -> None:
        audit = self.audit
        if audit is None:
            return
        if principal is not None:
            await asyncio.to_thread(audit.auth_success, tenant=principal.tenant, key_id=principal.key_id,
                                    source=peer, listener=listener)
            return
        try:
            key_id: str | None = key_id_of(api_key)
            reason = "unknown, revoked or expired key"
        except MalformedKey:
            key_id, reason = None, "malformed key"
        await asyncio.to_thread(audit.auth_failure, key_id=key_id, source=peer, listener=listener, reason=reason)

    def attach(self, session: Session) -> None:
        session.users += 1

    def detach(self, session: Session) -> None:
        session.users -= 1

    async def recheck(self, force: bool = False) -> int:
        """Re-verify keys in use (and forget idle ones once stale); returns how many sessions were revoked.

        `force` re-verifies every session in use now (after an admin refresh), whatever its age, and forgets
        every idle one. Passes run one at a time, and a session that a login replaced or removed while a pass
        waited on the source is left to that login.
        """
        async with self._rechecking:
            revoked = 0
            for digest, session in list(self._sessions.items()):
                if self._sessions.get(digest) is not session:
                    continue
                age = time.monotonic() - session.verified_at
                if session.users <= 0:
                    if force or age >= self.ttl:  # its next login asks the source again
                        del self._sessions[digest]
                    continue
                if not force and age < self.ttl / 2:
                    continue
                try:
                    principal = await asyncio.to_thread(self.source.authenticate, session._api_key)
                except Exception as err:  # a source outage must not log out everyone; the source bounds staleness
                    log.warning("key re-check failed for key id %s: %s", session.principal.key_id,
                                type(err).__name__)
                    bound = self.stale_bound
                    if bound is None or time.monotonic() - session.verified_at <= bound:
                        continue
                    principal = None  # unverified for longer than the source would serve it stale: revoke
                if principal != session.principal:
                    session.revoked = True
                    if self._sessions.get(digest) is session:
                        del self._sessions[digest]
                    revoked += 1
                else:
                    session.verified_at = time.monotonic()
            return revoked

    async def run(self) -> None:
        """Re-check forever, twice per ttl; a failing pass is logged, and the next one runs as usual."""
        while True:
            await asyncio.sleep(max(self.ttl / 2, 0.05))
            try:
                await self.recheck()
            except Exception:
                log.exception("key re-check pass failed")
