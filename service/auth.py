"""API-key logins for both front ends, with a short cache and revocation pushed to live sessions.

The key source may block (Vault over HTTP), so it is only ever called from a worker thread. A verified key
is trusted for `ttl` seconds; a background loop re-checks every key that a live connection still uses,
and marks its session revoked, so a revoked key stops working on every listener within about one `ttl`.
Sessions no connection uses (every HTTP one) are never re-checked: they are forgotten once `ttl` old, and
the next login with the key asks the source again. If the source keeps failing, a session in use is revoked
once it has not been verified for the source's `stale_grace` (when it has one): a backstop, since the source
itself answers from its cache only that long.

Guessing costs the guesser, not the key source: every login the session cache cannot answer takes a token
from its source address's bucket (`FailureLimiter`: a burst, then a steady rate), which a valid key gives
back. Once the bucket is empty that address's logins are refused (`TooManyFailures`) without a source read or
an audit line each; one `auth.throttled` line per address and summary interval counts them. Lookups run a
bounded number at a time, so addresses in their thousands still cannot queue unbounded work on the source.
A login the audit log cannot record (a full disk) is refused, with one error line a summary interval.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from service.security.apikeys import MalformedKey, hash_key, key_id_of
from service.security.audit import AuditLog, AuditLogError
from service.tenancy import KeySource, Principal

log = logging.getLogger(__name__)

LOOKUP_WAIT_S = 2.0  # how long a login waits for a lookup slot before it is refused as busy
AUDIT_RETRY_S = 5.0  # what a login refused for want of an audit log is told to wait
SUMMARY_INTERVAL_S = 60.0  # refused logins are audited per source once per interval


class LoginRefused(Exception):
    """A login refused before its key was looked up; it may be tried again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def retry_after_s(self) -> int:
        """`retry_after` as whole seconds (HTTP's Retry-After), at least 1."""
        return max(1, math.ceil(self.retry_after))


class TooManyFailures(LoginRefused):
    """The client's address used up its failed logins; only keys verified before still work from it."""


class LookupsBusy(LoginRefused):
    """Every lookup slot stayed taken for LOOKUP_WAIT_S."""


class AuditUnavailable(LoginRefused):
    """The audit log cannot be written (a full disk): a login it cannot record is refused, not let in unrecorded."""


def source_of(peer: str) -> str:
    """The address a peer (`host:port`) is limited by: its IPv4 address, or its IPv6 /64 (one host's share)."""
    host = peer.rsplit(":", 1)[0] if peer.count(":") else peer
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Bucket:
    tokens: float
    at: float  # when `tokens` was last brought up to date
    refused: int = 0  # logins refused since the last summary
    listeners: set[str] = field(default_factory=set)


class FailureLimiter:
    """A token bucket per source address for logins that need a lookup: `burst` of them, then `rate` a second.

    A lookup takes a token up front (so concurrent guesses cannot overshoot) and a valid key gives it back,
    so only failures drain the bucket. Full, idle buckets are forgotten; at most `max_sources` are kept.
    """

    def __init__(self, burst: int = 20, rate: float = 2.0, *, max_sources: int = 65_536,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.rate, self.max_sources = burst, rate, max_sources
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, source: str, listener: str) -> float | None:
        """Reserve a lookup for `source`: None if it may go ahead, else the seconds until it may."""
        now = self._clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            while len(self._buckets) >= self.max_sources:  # the least recently seen go first
                self._buckets.popitem(last=False)
            bucket = self._buckets[source] = _Bucket(float(self.burst), now)
        else:
            self._buckets.move_to_end(source)
            self._refill(bucket, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        bucket.refused += 1
        bucket.listeners.add(listener)
        return (1 - bucket.tokens) / self.rate

    def give_back(self, source: str) -> None:
        """The lookup found a valid key: it does not count as a failure."""
        bucket = self._buckets.get(source)
        if bucket is not None:
            bucket.tokens = min(bucket.tokens + 1, float(self.burst))

    def drain_refused(self) -> dict[str, tuple[int, list[str]]]:
        """Per source, the logins refused (and on which listeners) since the last call; forgets idle sources."""
        refused = {source: (b.refused, sorted(b.listeners)) for source, b in self._buckets.items() if b.refused}
        for bucket in self._buckets.values():
            bucket.refused = 0
            bucket.listeners.clear()
        now = self._clock()
        for source, bucket in list(self._buckets.items()):
            self._refill(bucket, now)
            if bucket.tokens >= self.burst:  # as good as new: nothing to remember
                del self._buckets[source]
        return refused

    def _refill(self, bucket: _Bucket, now: float) -> None:
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now


@dataclass(eq=False)
class Session:
    """A verified key as held by connections; `revoked` flips when the key stops being valid."""

    principal: Principal
    _api_key: str = field(repr=False)
    verified_at: float = 0.0
    users: int = 0
    revoked: bool = False


class Authenticator:
    def __init__(self, source: KeySource, ttl: float = 1.0, audit: AuditLog | None = None, *,
                 failure_burst: int = 20, failure_rate: float = 2.0, max_lookups: int = 16,
                 summary_interval: float = SUMMARY_INTERVAL_S) -> None:
        self.source = source
        self.ttl = ttl
        self.audit = audit
        self.limiter = FailureLimiter(failure_burst, failure_rate)
        self._lookups = asyncio.Semaphore(max_lookups)
        self.summary_interval = summary_interval
        self._next_summary = time.monotonic() + summary_interval
        self._audit_refusals = 0  # logins refused since the last error line about the audit log
        self._audit_error_at = -math.inf  # when that line was written: at most one a summary interval
        self._sessions: dict[str, Session] = {}  # key hash -> session; never the key itself as a dict key
        self._rechecking = asyncio.Lock()  # one pass at a time: the run loop's and an admin refresh's
        stale_grace = getattr(source, "stale_grace", None)  # how long the source serves answers while it fails
        self.stale_bound: float | None = float(stale_grace) if stale_grace is not None else None

    async def login(self, api_key: str, *, peer: str, listener: str, audit_cached: bool = True) -> Session | None:
        """A session for a valid key, or None. Cached for `ttl`; unknown keys are never cached.

        Every attempt is audited (a cached success only with `audit_cached`: HTTP sends the key on every
        request, so it audits new sessions and failures, not each request), except those the limiter refuses:
        `TooManyFailures` when the peer's address has failed too often, `LookupsBusy` when no lookup slot opens.
        An attempt the audit log cannot record is refused (`AuditUnavailable`), whatever the key.
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
        source = source_of(peer)
        known = session is not None and not session.revoked  # verified before: no guess, not limited
        if not known and (wait := self.limiter.take(source, listener)) is not None:
            raise TooManyFailures("too many failed logins from this address", wait)
        try:
            principal = await self._lookup(api_key)
        except LookupsBusy:
            if not known:
                self.limiter.give_back(source)
            raise
        if principal is not None and not known:
            self.limiter.give_back(source)
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

    async def _lookup(self, api_key: str) -> Principal | None:
        """Ask the key source, in a worker thread, at most `max_lookups` at a time."""
        try:
            async with asyncio.timeout(LOOKUP_WAIT_S):
                await self._lookups.acquire()
        except TimeoutError:
            raise LookupsBusy("too many logins are being verified", 1.0) from None
        try:
            return await asyncio.to_thread(self.source.authenticate, api_key)
        finally:
            self._lookups.release()

    async def write_summary(self) -> None:
        """Audit, one line per source address, the logins the limiter refused since the last summary."""
        refused = self.limiter.drain_refused()
        if not refused:
            return
        busiest = max(refused, key=lambda source: refused[source][0])
        log.warning("refused %d logins from %d address(es) that failed to log in too often (most: %s, %d)",
                    sum(count for count, _ in refused.values()), len(refused), busiest, refused[busiest][0])
        audit = self.audit
        if audit is None:
            return

        def record() -> None:
            for source, (count, listeners) in refused.items():
                audit.record("auth.throttled", actor="anonymous", outcome="failure", source=source, refused=count,
                             listeners=listeners, reason="too many failed logins from this address")

        await asyncio.to_thread(record)

    async def _audit(self, principal: Principal | None, api_key: str, peer: str, listener: str) -> None:
        """Record the attempt; AuditUnavailable when the log cannot take it (the caller lets nobody in then)."""
        audit = self.audit
        if audit is None:
            return
        try:
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
        except (AuditLogError, OSError) as err:
            self._audit_failed(err)
            raise AuditUnavailable("the audit log cannot be written, so logins are refused", AUDIT_RETRY_S) from None

    def _audit_failed(self, err: Exception) -> None:
        """One error line a summary interval, not one a login (each would be a traceback on a disk already full)."""
        self._audit_refusals += 1
        now = time.monotonic()
        if now - self._audit_error_at >= self.summary_interval:
            log.error("refused %d login(s): the audit log cannot be written (%s)", self._audit_refusals, err)
            self._audit_refusals, self._audit_error_at = 0, now

    def attach(self, session: Session) -> None:
        session.users += 1

    def detach(self, session: Session) -> None:
        session.users -= 1

    async def recheck(self, force: bool = False, tenant: str | None = None) -> int:
        """Re-verify keys in use (and forget idle ones once stale); returns how many sessions were revoked.

        `force` re-verifies every session in use now (after an admin refresh), whatever its age, and forgets
        every idle one; `tenant` limits the pass to that tenant's sessions (a refresh of one tenant: a key just
        revoked must not log in again on a session verified less than a ttl ago). Passes run one at a time, and a
        session that a login replaced or removed while a pass waited on the source is left to that login.
        """
        async with self._rechecking:
            revoked = 0
            for digest, session in list(self._sessions.items()):
                if self._sessions.get(digest) is not session:
                    continue
                if tenant is not None and session.principal.tenant != tenant:
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
        """Re-check forever, twice per ttl, and write the refused logins' summary every `summary_interval`; a
        failing pass is logged, and the next one runs as usual."""
        while True:
            await asyncio.sleep(max(self.ttl / 2, 0.05))
            try:
                await self.recheck()
            except Exception:
                log.exception("key re-check pass failed")
            if time.monotonic() >= self._next_summary:
                self._next_summary = time.monotonic() + self.summary_interval
                try:
                    await self.write_summary()
                except Exception:
                    log.exception("summary of refused logins not written")
