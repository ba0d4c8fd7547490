"""`VaultKeySource`: the service's view of Vault-held keys (the `KeySource` the listeners authenticate with).

Answers come from a short positive cache so that AUTH costs no Vault round trip while revocation still
reaches every listener quickly: a key record is re-read once it is older than `cache_ttl` (0.5 s by default),
so a revoked, expired or suspended key is refused within `cache_ttl` plus one Vault read. A presented key
is always compared (in constant time) with the cached *hash*; the cache never remembers "this string was
valid". Unknown key ids are remembered for at most `negative_ttl`, which keeps a flood of random keys from
becoming a flood of Vault reads. A key works only for the incarnation of its tenant it was issued to (not for a
later tenant given the name), and the specs it lists carry each tenant's incarnation.

When Vault is unreachable (or refuses the service token, or answers with any error but "no such path"), keys
that Vault confirmed within the last `stale_grace` seconds keep working, with their last known state and
expiry, and everything else is refused; after a failure, Vault is retried at most every `retry_interval`
seconds so AUTH does not wait on a dead Vault each time. Calls block on Vault (bounded by the hvac client's
timeout): the server calls `authenticate` and `tenants` from worker threads. Thread-safe.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hvac
import hvac.exceptions
import requests

from service.security.apikeys import MalformedKey, key_id_of, verify_key
from service.security.vault_auth import VaultSessionStopped
from service.security.vault_keys import DEFAULT_MOUNT, FORBIDDEN_HINT, DamagedRecord, KeyInfo, TenantMeta, tenant_meta
from service.tenancy import Principal, TenantSpec

log = logging.getLogger(__name__)

# Any Vault error but "no such path" (InvalidPath, caught before these) means no answer: serve from the cache
# within stale_grace, refuse the rest. That includes a 504 from a load balancer (UnexpectedError), a 501
# (VaultNotInitialized), and Forbidden (a wrong mount or policy: a revoked service token was already replaced
# by the session's new login, and the read retried, before the Forbidden gets here).
_UNREACHABLE = (requests.RequestException, hvac.exceptions.VaultError)
# Errors an operator must fix (the service token or the request itself): logged at ERROR, not WARNING.
_MISCONFIGURED = (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized, hvac.exceptions.InvalidRequest)


class _Damaged(enum.Enum):
    RECORD = "damaged"


_DAMAGED = _Damaged.RECORD  # a tenant record that is not one (vault_keys.tenant_meta says why)


class _Unreachable(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class _Entry:
    key: KeyInfo
    tenant: TenantMeta | None
    fetched: float  # monotonic time the reads *started*: a revocation racing the read is not hidden


class VaultKeySource:
    def __init__(
        self,
        client: hvac.Client,
        mount: str = DEFAULT_MOUNT,
        *,
        cache_ttl: float = 0.5,
        negative_ttl: float = 0.5,
        stale_grace: float = 300.0,
        retry_interval: float = 1.0,
        tenants_ttl: float = 5.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.mount = mount
        self.cache_ttl, self.negative_ttl, self.stale_grace = cache_ttl, negative_ttl, stale_grace
        self.retry_interval, self.tenants_ttl, self.max_entries = retry_interval, tenants_ttl, max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(64)]  # single-flight per key id, bounded
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._owner: OrderedDict[str, str] = OrderedDict()  # key id -> tenant never changes while the key exists
        self._down_until = 0.0
        self._reachable = True
        self._tenants: tuple[list[TenantSpec], float] | None = None
        self._damaged: set[str] = set()  # tenants whose damaged record was reported
        self._known: dict[str, TenantSpec] = {}  # each live tenant's spec as last read whole

    @property
    def vault_reachable(self) -> bool:
        """False while the last Vault read failed (answers come from the cache, bounded by stale_grace)."""
        return self._reachable

    def authenticate(self, api_key: str) -> Principal | None:
        """The principal for a valid, active key of a live tenant; None for anything else. Blocks on Vault."""
        try:
            key_id = key_id_of(api_key)
        except MalformedKey:
            return None
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key_id)
            unknown_at = self._unknown.get(key_id)
        if entry is not None and now - entry.fetched < self.cache_ttl:
            return _decide(entry, api_key)
        if entry is None and unknown_at is not None and now - unknown_at < self.negative_ttl:
            return None
        with self._stripes[hash(key_id) % len(self._stripes)]:
            with self._lock:  # another thread may have refreshed it while we waited
                entry = self._entries.get(key_id)
            if entry is not None and self._clock() - entry.fetched < self.cache_ttl:
                return _decide(entry, api_key)
            if self._clock() < self._down_until:
                return self._stale(entry, api_key)
            try:
                entry = self._fetch(key_id)
            except _Unreachable:
                return self._stale(entry, api_key)
        return _decide(entry, api_key) if entry is not None else None

    def tenants(self, fresh: bool = False) -> list[TenantSpec]:
        """Every live tenant and its quota, cached `tenants_ttl` (`fresh` reads Vault now, and once that read
        succeeded forgets cached keys: a refresh during an outage keeps the stale grace); the last known list
        while Vault is down."""
        cached = self._tenants
        if not fresh and cached is not None and self._clock() - cached[1] < self.tenants_ttl:
            return list(cached[0])
        started = self._clock()
        try:
            names = [n.rstrip("/") for n in self._list("tenants/")]
            metas = [(n, self._read_tenant(n)) for n in names]
        except _Unreachable as err:
            if cached is None:
                raise ConnectionError(f"{self._no_answer(err)} and no tenant list is cached") from None
            return list(cached[0])
        if fresh:
            self.forget()
        specs = []
        for name, meta in metas:
            if isinstance(meta, TenantMeta):
                if not meta.deleting:
                    specs.append(meta.service_spec())
            elif meta is _DAMAGED and (known := self._last_known(name)) is not None:
                specs.append(known)
        self._tenants = (specs, started)
        return list(specs)

    def _last_known(self, name: str) -> TenantSpec | None:
        """A tenant's spec as last read whole: what a damaged record keeps serving (dropping the tenant would
        flush its data over what is most likely a mistyped write)."""
        with self._lock:
            return self._known.get(name)

    def tenant(self, name: str) -> TenantSpec | None:
        """One live tenant, read from Vault now; its cached keys are forgotten so key changes show at once."""
        try:
            meta = self._read_tenant(name)
        except _Unreachable as err:
            raise ConnectionError(self._no_answer(err)) from None
        if meta is _DAMAGED:
            return self._last_known(name)
        with self._lock:
            stale = [k for k, e in self._entries.items() if e.key.tenant == name]
        for key_id in stale:
            self.forget(key_id)
        self._tenants = None  # the next full list is read again, with this tenant's change in it
        return meta.service_spec() if isinstance(meta, TenantMeta) and not meta.deleting else None

    def forget(self, key_id: str | None = None) -> None:
        """Drop cached answers (one key's, or all) so the next AUTH asks Vault: for in-process revocation."""
        with self._lock:
            if key_id is None:
                self._entries.clear()
                self._unknown.clear()
            else:
                self._entries.pop(key_id, None)
                self._unknown.pop(key_id, None)

    # -- internals -----------------------------------------------------------------------------------------

    def _fetch(self, key_id: str) -> _Entry | None:
        started = self._clock()
        with self._lock:
            tenant = self._owner.get(key_id)
        if tenant is None:
            index = self._read(f"keyids/{key_id}")
            tenant = index.get("tenant") if index else None
        record = self._read(f"tenants/{tenant}/keys/{key_id}") if tenant else None
        if tenant is None or record is None:
            with self._lock:
                self._entries.pop(key_id, None)
                self._remember(self._unknown, key_id, started)
            return None
        meta = self._read_tenant(tenant)
        entry = _Entry(KeyInfo.model_validate(record), meta if isinstance(meta, TenantMeta) else None, started)
        with self._lock:
            self._remember(self._owner, key_id, tenant)
            self._remember(self._entries, key_id, entry)
            self._unknown.pop(key_id, None)
        return entry

    def _read_tenant(self, tenant: str) -> TenantMeta | _Damaged | None:
        """The tenant's record; _DAMAGED when it is not one, said once at ERROR until it is repaired (its keys are
        refused meanwhile; the tenant list keeps its last known spec)."""
        record = self._read(f"tenants/{tenant}/meta")
        try:
            meta = tenant_meta(record, self.mount, tenant) if record else None
        except DamagedRecord as err:
            with self._lock:
                said, self._damaged = tenant in self._damaged, self._damaged | {tenant}
            if not said:
                log.error("tenant %s: %s", tenant, err)
            return _DAMAGED
        with self._lock:
            self._damaged.discard(tenant)
            if meta is None or meta.deleting:
                self._known.pop(tenant, None)
            else:
                self._known[tenant] = meta.service_spec()
        return meta

    def _read(self, path: str) -> dict[str, Any] | None:
        try:
            reply = self.client.secrets.kv.v2.read_secret_version(
                path, mount_point=self.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            self._mark_reachable()
            return None
        except VaultSessionStopped as err:  # the service is stopping: no outage to report
            raise _Unreachable(err) from None
        except _UNREACHABLE as err:
            self._mark_unreachable(err)
            raise _Unreachable(err) from None
        self._mark_reachable()
        data: dict[str, Any] = reply["data"]["data"]
        return data

    def _list(self, path: str) -> list[str]:
        try:
            return list(self.client.secrets.kv.v2.list_secrets(path, mount_point=self.mount)["data"]["keys"])
        except hvac.exceptions.InvalidPath:
            return []
        except VaultSessionStopped as err:  # the service is stopping: no outage to report
            raise _Unreachable(err) from None
        except _UNREACHABLE as err:
            self._mark_unreachable(err)
            raise _Unreachable(err) from None

    def _no_answer(self, err: _Unreachable) -> str:
        """Why Vault gave no answer: a refusal needs the operator, unlike an outage that passes."""
        if isinstance(err.cause, hvac.exceptions.Forbidden):
            return f"Vault refused to read the KV mount {self.mount!r}: forbidden ({FORBIDDEN_HINT})"
        return f"Vault is unreachable ({err})"

    def _stale(self, entry: _Entry | None, api_key: str) -> Principal | None:
        if entry is None or self._clock() - entry.fetched > self.stale_grace:
            return None  # never confirmed, or confirmed too long ago: refuse while Vault is away
        return _decide(entry, api_key)

    def _remember(self, cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.max_entries:
            cache.popitem(last=False)

    def _mark_unreachable(self, err: BaseException) -> None:
        self._down_until = self._clock() + self.retry_interval
        if self._reachable:
            level = logging.ERROR if isinstance(err, _MISCONFIGURED) else logging.WARNING
            log.log(
                level,
                "Vault unavailable (%s); serving keys confirmed in the last %.0fs, refusing others",
                f"Forbidden: {FORBIDDEN_HINT}" if isinstance(err, hvac.exceptions.Forbidden) else type(err).__name__,
                self.stale_grace,
            )
        self._reachable = False

    def _mark_reachable(self) -> None:
        if not self._reachable:
            log.info("Vault reachable again")
        self._reachable = True


def _decide(entry: _Entry, api_key: str) -> Principal | None:
    key, tenant = entry.key, entry.tenant
    if tenant is None or tenant.deleting or tenant.spec.suspended or not tenant.issued(key):
        return None  # not issued to this tenant: to an earlier one of its name, which a deletion missed
    if not key.usable_at(dt.datetime.now(dt.UTC)) or not verify_key(api_key, key.hash):
        return None
    return Principal(key.tenant, key.key_id, frozenset(key.scopes), tenant.incarnation)
