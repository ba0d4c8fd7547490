"""What the `tenants` and `keys` commands do, without the CLI: Vault writes through `VaultKeyAdmin`, the
service told through its admin API, every action audited, and a failed `create` rolled back.

`create` runs: validate -> tenant (namespace, quotas, policy, KV path) -> first key -> service refresh. A
failure at any step deletes what the earlier steps made; if Vault itself is gone, the rollback is noted in
the journal and finished by the next command that reaches Vault.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from onboarding.admin_client import AdminClient
from onboarding.auditing import OnboardingAudit
from onboarding.context import Endpoints, Target
from onboarding.errors import Conflict, InvalidInput, NotFound, OnboardingError, ServiceFailure, from_key_store
from onboarding.journal import Journal
from onboarding.plans import quota_for
from service.security.apikeys import PREFIX as KEY_PREFIX
from service.security.apikeys import IssuedKey, MalformedKey, key_id_of
from service.security.vault_keys import SCOPES, KeyInfo, VaultKeyAdmin, VaultKeyStoreError
from service.tenancy import TENANT_NAME_PATTERN, TenantQuota, TenantSpec

DEFAULT_SCOPES = ("read", "write")
SCOPES_HELP = "read (GET, MGET, SCAN, ...), write (SET, DEL, INCR, ...), admin (FLUSHDB, FLUSHALL)"


_KEY_MARK = f"{KEY_PREFIX}_"  # every API key starts with it; an input holding it is never echoed


def validate_name(name: str) -> str:
    """The name if it is a DNS label (what namespaces, policies and KV paths need); InvalidInput saying why."""
    if re.fullmatch(TENANT_NAME_PATTERN, name):
        return name
    if _KEY_MARK in name:  # a key pasted where a name goes: said, never echoed
        raise InvalidInput("invalid tenant name", "that is an API key, not a tenant's name (see `foresight tenants "
                           "list`; `foresight keys list TENANT` names a key's tenant)")
    if not name:
        why = "is empty"
    elif len(name) > 63:
        why = f"is {len(name)} characters long; at most 63"
    elif name != name.lower():
        why = "has uppercase letters; use lowercase"
    elif name[0] == "-" or name[-1] == "-":
        why = "starts or ends with '-'"
    else:
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c == "-"))})
        why = f"contains {', '.join(repr(c) for c in bad)}; only a-z, 0-9 and '-' are allowed"
    raise InvalidInput(f"invalid tenant name {name!r}", f"{why} (a DNS label: 1-63 of a-z, 0-9, '-')")


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = dt.timedelta(days=36500)  # a hundred years: beyond it, an expiry date would overflow


def parse_duration(text: str, what: str, allow_zero: bool = False) -> dt.timedelta:
    """`90s`, `15m`, `12h`, `30d`, up to a hundred years; zero only where it means "at once" (`allow_zero`).
    InvalidInput otherwise: a key that expires as it is issued, or an expiry past year 9999, is a mistake."""
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match is None:
        raise InvalidInput(what, f"{text!r} is not a duration like 90s, 15m, 12h or 30d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds == 0 and not allow_zero:
        raise InvalidInput(what, f"{text!r} is zero; give a positive duration")
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidInput(what, f"{text!r} is longer than {MAX_DURATION.days} days")
    return dt.timedelta(seconds=seconds)


def parse_scopes(text: str) -> list[str]:
    """`read,write` -> ["read", "write"]; InvalidInput for an empty list or a scope that does not exist."""
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    if not scopes:
        raise InvalidInput("--scopes", f"names no scope; choose from {SCOPES_HELP}")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidInput("--scopes", f"unknown scope {', '.join(map(repr, unknown))}; choose from {SCOPES_HELP}")
    return scopes


@dataclass(kw_only=True)
class Outcome:
    """What a command did, plus what went only half right (printed as warnings)."""

    warnings: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class CreatedTenant(Outcome):
    spec: TenantSpec
    key: IssuedKey
    endpoints: Endpoints | None = None


@dataclass(kw_only=True)
class NewKey(Outcome):
    key: IssuedKey
    info: KeyInfo
    replaced: KeyInfo | None = None


@dataclass(kw_only=True)
class TenantView(Outcome):
    spec: TenantSpec
    keys: list[KeyInfo] = field(default_factory=list)
    usage: dict[str, Any] | None = None


@dataclass(kw_only=True)
class TenantList(Outcome):
    tenants: list[TenantView] = field(default_factory=list)


class Onboarder:
    def __init__(
        self,
        key_admin: VaultKeyAdmin,
        admin: AdminClient | None,
        audit: OnboardingAudit,
        journal: Journal | None = None,
        endpoints: Endpoints | None = None,
    ) -> None:
        self.key_admin = key_admin
        self.admin = admin
        self.audit = audit
        self.journal = journal
        self.endpoints = endpoints

    @classmethod
    def connect(cls, target: Target) -> Onboarder:
        audit = OnboardingAudit(target.audit_log)
        audit.check()  # before anything changes (reads are audited too): an action done but not audited is worse
        client = target.vault_client()
        admin = None
        if target.admin_url is not None and target.admin_token is not None:
            admin = AdminClient(target.admin_url, target.admin_token, ca_cert=target.admin_ca)
        onboarder = cls(
            VaultKeyAdmin(client, target.kv_mount),
            admin,
            audit,
            Journal(target.paths.pending, target.vault_addr),
            target.endpoints,
        )
        onboarder.recover()  # a creation whose process died is undone before any command sees its half tenant
        return onboarder

    def close(self) -> None:
        if self.admin is not None:
            self.admin.close()

    # -- tenants ---------------------------------------------------------------------------------------------

    def create_tenant(self, name: str, quota: TenantQuota, scopes: list[str] | None = None) -> CreatedTenant:
        """A new tenant and its first key; everything undone if a step fails. Refuses an existing name."""
        validate_name(name)
        if scopes is not None and not scopes:
            raise InvalidInput("--scopes", f"names no scope; choose from {SCOPES_HELP}")
        self.recover()
        spec = TenantSpec(name=name, quota=quota)
        with self._audited("tenant.create", tenant=name, memory_bytes=quota.memory_bytes,
                           requests_per_second=quota.requests_per_second):
            if self._call("look up tenant", self.key_admin.get_tenant, name) is not None:
                raise Conflict(f"tenant {name!r} already exists",
                               "choose another name, or `foresight keys issue` for another key")
            if self.journal:
                self.journal.begin(name)
            step = "create tenant in Vault"
            try:
                self._call(step, self.key_admin.create_tenant, spec, exclusive=True)  # a concurrent create's: Conflict
                step = "issue the first API key"
                key = self._call(step, self.key_admin.issue_key, name, scopes or list(DEFAULT_SCOPES))
                step = "load the tenant into the service"
                if self.admin is not None and not self.admin.refresh_tenant(name):
                    raise ServiceFailure(step, f"the service did not load tenant {name!r} after a refresh")
            except OnboardingError as err:
                if isinstance(err, Conflict) and step == "create tenant in Vault":
                    if self.journal:  # created at the same moment by someone else: theirs, not ours to undo
                        self.journal.done(name)
                    raise
                undone = self._roll_back_create(name)
                raise type(err)(f"create tenant {name!r}", f"{step}: {err.why}; {undone}") from None
            except BaseException:
                self._roll_back_create(name)
                raise
            if self.journal:
                self.journal.done(name)
        self.audit.record("key.issue", tenant=name, key_id=key.key_id, scopes=sorted(scopes or DEFAULT_SCOPES))
        warnings = [] if self.admin else ["no service admin API configured: the service loads the tenant on its "
                                          "next refresh (within a few seconds)"]
        return CreatedTenant(warnings=warnings, spec=spec, key=key, endpoints=self.endpoints)

    def _roll_back_create(self, name: str) -> str:
        """Delete whatever the failed create made; says how that went, for the error line."""
        try:
            self.key_admin.delete_tenant(name)
        except Exception as undo_err:
            if self.journal:
                self.journal.rollback_pending(name)
            self.audit.record("tenant.create.rollback", outcome="failure", tenant=name,
                              reason=type(undo_err).__name__)
            return "rollback pending: it finishes on the next command that reaches Vault"
        if self.journal:
            self.journal.done(name)
        self.audit.record("tenant.create.rollback", tenant=name)
        return "nothing was left behind"

    def recover(self) -> list[str]:
        """Finish the rollback of creations that failed or died half-way."""
        if self.journal is None:
            return []
        finished = self.journal.recover(self.key_admin.delete_tenant)
        for name in finished:
            self.audit.record("tenant.create.rollback", tenant=name, recovered=True)
        return finished

    def list_tenants(self) -> TenantList:
        with self._audited("tenant.list"):
            specs = self._call("list tenants", self.key_admin.list_tenants)
        usage, warnings = self._usage()
        views = [TenantView(spec=spec, usage=usage.get(spec.name)) for spec in sorted(specs, key=lambda s: s.name)]
        return TenantList(warnings=warnings, tenants=views)

    def show_tenant(self, name: str) -> TenantView:
        validate_name(name)
        with self._audited("tenant.show", tenant=name):
            spec = self._require(name)
            keys = self._call("list keys", self.key_admin.list_keys, name)
        usage, warnings = self._usage()
        return TenantView(warnings=warnings, spec=spec, keys=sorted(keys, key=lambda k: k.created),
                          usage=usage.get(name))

    def set_suspended(self, name: str, suspended: bool) -> Outcome:
        validate_name(name)
        action = "tenant.suspend" if suspended else "tenant.resume"
        with self._audited(action, tenant=name):
            spec = self._require(name)
            self._call(action.replace(".", " "), self.key_admin.update_tenant,
                       spec.model_copy(update={"suspended": suspended}))
        return Outcome(warnings=self._refresh(name))

    def set_plan(self, name: str, plan: str) -> Outcome:
        """Move a tenant to a plan's memory and rate quotas, keeping its other settings (origin, prefetcher)."""
        validate_name(name)
        preset = quota_for(plan)
        with self._audited("tenant.plan", tenant=name, plan=plan):
            spec = self._require(name)
            quota = spec.quota.model_copy(
                update={"memory_bytes": preset.memory_bytes, "requests_per_second": preset.requests_per_second}
            )
            self._call("change plan", self.key_admin.update_tenant, spec.model_copy(update={"quota": quota}))
        return Outcome(warnings=self._refresh(name))

    def delete_tenant(self, name: str) -> Outcome:
        """Refuse the tenant's keys, remove keys, policy and records from Vault, drop its cached data. Run again
        after a failure, it finishes the deletion (the tenant is no longer listed, but its records are there)."""
        validate_name(name)
        with self._audited("tenant.delete", tenant=name) as event:
            existed = self._call("look up tenant", self.key_admin.get_tenant, name) is not None
            unfinished = not existed and self._call("look up tenant", self.key_admin.deletion_pending, name)
            event["finishing"] = unfinished
            try:
                self._call(f"delete tenant {name!r}", self.key_admin.delete_tenant, name)  # clears any leftovers too
            except OnboardingError as err:
                if not (existed or unfinished) or not self._deletion_pending(name):
                    raise  # nothing changed (the step that refuses its keys is the first): no false assurance
                raise type(err)(
                    f"delete tenant {name!r}",
                    f"{err.why}; partly deleted (its keys are refused already): run the deletion again to finish it",
                ) from None
            if not (existed or unfinished):
                raise NotFound(f"delete tenant {name!r}", f"no tenant {name!r}")
        # Its data first, while the service still serves the tenant (after the refresh there is nothing to name
        # it by); a service that stops serving a tenant drops its data as well, so the refresh is the backstop.
        warnings: list[str] = []
        if self.admin is not None:
            try:
                self.admin.drop_data(name)
            except OnboardingError as err:
                warnings.append(f"{err} (the service drops the data when it stops serving the tenant)")
        if unfinished:
            warnings.append(f"finished an earlier, interrupted deletion of {name!r}")
        return Outcome(warnings=warnings + self._refresh(name))

    def _deletion_pending(self, name: str) -> bool:
        """Whether a failed deletion got as far as refusing the tenant's keys (False when Vault cannot say)."""
        try:
            return bool(self.key_admin.deletion_pending(name))
        except VaultKeyStoreError:
            return False

    # -- keys ------------------------------------------------------------------------------------------------

    def issue_key(self, tenant: str, scopes: list[str], ttl: dt.timedelta | None = None) -> NewKey:
        validate_name(tenant)
        with self._audited("key.issue", tenant=tenant, scopes=sorted(scopes)) as event:
            written = self._call("issue key", self.key_admin.issue_key_recorded, tenant, scopes, ttl=ttl)
            event["key_id"] = written.key.key_id
        return NewKey(warnings=self._refresh(tenant), key=written.key, info=written.info)

    def list_keys(self, tenant: str) -> list[KeyInfo]:
        validate_name(tenant)
        with self._audited("key.list", tenant=tenant):
            self._require(tenant)
            keys: list[KeyInfo] = self._call("list keys", self.key_admin.list_keys, tenant)
        return sorted(keys, key=lambda k: k.created)

    def rotate_key(self, key_id: str, overlap: dt.timedelta) -> NewKey:
        key_id = parse_key_id(key_id)
        with self._audited("key.rotate", key_id=key_id, overlap_s=int(overlap.total_seconds())) as event:
            written = self._call(f"rotate key {key_id}", self.key_admin.rotate_key_recorded, key_id, overlap=overlap)
            event["new_key_id"], event["tenant"] = written.key.key_id, written.info.tenant
        return NewKey(warnings=self._refresh(written.info.tenant), key=written.key, info=written.info,
                      replaced=written.replaced)

    def revoke_key(self, key_id: str) -> tuple[KeyInfo, Outcome]:
        key_id = parse_key_id(key_id)
        with self._audited("key.revoke", key_id=key_id) as event:
            info: KeyInfo = self._call(f"revoke key {key_id}", self.key_admin.revoke_key, key_id)
            event["tenant"] = info.tenant
        return info, Outcome(warnings=self._refresh(info.tenant))

    # -- internals -------------------------------------------------------------------------------------------

    def _require(self, name: str) -> TenantSpec:
        spec: TenantSpec | None = self._call("look up tenant", self.key_admin.get_tenant, name)
        if spec is None:
            raise NotFound(f"tenant {name!r}", "no such tenant (see `foresight tenants list`)")
        return spec

    @staticmethod
    def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VaultKeyStoreError as err:
            raise from_key_store(what, err) from None

    def _refresh(self, tenant: str) -> list[str]:
        """Tell the service now (it also polls Vault every few seconds, so a failure here is a warning)."""
        if self.admin is None:
            return []
        try:
            self.admin.refresh_tenant(tenant)
        except OnboardingError as err:
            return [f"{err} (the service picks the change up from Vault within a few seconds)"]
        return []

    def _usage(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        if self.admin is None:
            return {}, []
        try:
            rows = self.admin.list_tenants()
        except OnboardingError as err:
            return {}, [f"usage unavailable: {err}"]
        return {str(r.get("name", r.get("tenant"))): r for r in rows if isinstance(r, dict)}, []

    def _audited(self, action: str, **fields: Any) -> _AuditedAction:
        return _AuditedAction(self.audit, action, fields)


class _AuditedAction:
    """Records `action` on exit: success, or failure with the error's message (which never holds a secret).
    The body may add fields (a new key id) to the dict it is given."""

    def __init__(self, audit: OnboardingAudit, action: str, fields: dict[str, Any]) -> None:
        self.audit, self.action, self.fields = audit, action, fields

    def __enter__(self) -> dict[str, Any]:
        return self.fields

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        fields = dict(self.fields)
        tenant, key_id = fields.pop("tenant", None), fields.pop("key_id", None)
        if exc is None:
            self.audit.record(self.action, tenant=tenant, key_id=key_id, **fields)
        else:
            reason = str(exc) if isinstance(exc, OnboardingError) else type(exc).__name__
            self.audit.record(self.action, outcome="failure", tenant=tenant, key_id=key_id, reason=reason, **fields)


def parse_key_id(text: str) -> str:
    """A key id, or the id inside a whole key pasted by mistake (with the spaces and `Bearer ` a paste brings);
    never echoed back when it holds a key."""
    text = re.sub(r"^bearer\s+", "", text.strip(), flags=re.IGNORECASE)
    if text.startswith("fsk_"):
        try:
            return key_id_of(text)
        except MalformedKey:
            raise InvalidInput("key id", "looks like a malformed key; pass the key id (fsk_<id>_... -> <id>)") from None
    if _KEY_MARK in text:
        raise InvalidInput("key id", "holds something shaped like a key; pass the key id alone (fsk_<id>_... -> <id>)")
    if not re.fullmatch(r"[a-z2-7]{12}", text):
        raise InvalidInput("key id", f"{text!r} is not a key id (12 characters of a-z, 2-7)")
    return text
