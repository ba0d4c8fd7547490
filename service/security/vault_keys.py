"""Vault (KV v2) as the store of tenants and API-key hashes: the layout, the policies, and the writer.

Layout under the KV v2 mount (default ``foresight``)::

    tenants/<tenant>/meta           the tenant: spec (quotas, suspended), created, uid, deleting
    tenants/<tenant>/keys/<key id>  one key: hash, scopes, created, expires, state, rotated_to, incarnation
    keyids/<key id>                 {"tenant": ...}: finds a key's tenant in one read

Policies: ``foresight-tenant-<tenant>`` reads only ``<mount>/data/tenants/<tenant>/*``;
``foresight-service`` (the running service) reads and lists the mount and can never write it;
``foresight-onboarding`` (operators, the admin API) writes it and manages tenant policies.

`VaultKeyAdmin` is the writer. Each operation is idempotent where a retry is natural (create an existing
identical tenant, revoke a revoked key, delete a deleted tenant) and undoes its own partial work when a
later step fails. Secrets never leave it except as the `IssuedKey` returned once by issue/rotate.
Every method blocks on Vault; call it from a worker thread in async code. The reader side
(`VaultKeySource`) lives in `vault_source`.

A name can be deleted and given to a new tenant, so a tenant is one *incarnation* of its name: `TenantMeta.uid`,
random, written at creation (a tenant created before uids existed has its `created` time instead). The service
keys everything it holds for a tenant by it, and a key record names the incarnation it was issued to, so that a
key a deletion missed (an issue racing it) never works for a later tenant of the name.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

import hvac
import hvac.exceptions
import requests
from pydantic import BaseModel, Field, ValidationError

from service.security.apikeys import IssuedKey, new_key
from service.tenancy import INCARNATION_PATTERN, TENANT_NAME_PATTERN, TenantSpec
from service.validation import first_problem

log = logging.getLogger(__name__)

DEFAULT_MOUNT = "foresight"
SCOPES = frozenset({"read", "write", "admin"})
SERVICE_POLICY = "foresight-service"
ONBOARDING_POLICY = "foresight-onboarding"
TENANT_POLICY_PREFIX = "foresight-tenant-"
# A 403 on the key store is a wrong mount or policy, never an outage: say which setting to look at.
FORBIDDEN_HINT = "check FORESIGHT_VAULT_KV_MOUNT / the policy"
_CAS_RETRIES = 5


class VaultKeyStoreError(RuntimeError):
    """A key-store operation failed; the message says which tenant or key, never a secret."""


class DamagedRecord(VaultKeyStoreError):
    """A tenant's record that is not one (written over by hand or by a mistyped path)."""


class VaultUnavailable(VaultKeyStoreError):
    """Vault could not be reached or is sealed."""


class TenantExists(VaultKeyStoreError):
    pass


class TenantNotFound(VaultKeyStoreError):
    pass


class KeyNotFound(VaultKeyStoreError):
    pass


class KeyNotActive(VaultKeyStoreError):
    """The key is revoked, expired or already rotated, so it cannot be rotated."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class KeyInfo(BaseModel):
    """A stored key: everything but the secret (only its hash is kept)."""

    key_id: str
    tenant: str
    hash: str
    scopes: list[str]
    created: dt.datetime
    expires: dt.datetime | None = None
    state: Literal["active", "revoked"] = "active"
    revoked_at: dt.datetime | None = None
    rotated_to: str | None = Field(default=None, description="The key that replaced this one, when rotated.")
    incarnation: str | None = Field(
        default=None, description="The tenant's incarnation it was issued to (TenantMeta.incarnation); none for keys "
        "issued before incarnations existed.",
    )

    def usable_at(self, now: dt.datetime) -> bool:
        return self.state == "active" and (self.expires is None or now < self.expires)


class WrittenKey(NamedTuple):
    """A key just written: its secret (shown once), its record, and for a rotation the old key's record as rotated."""

    key: IssuedKey
    info: KeyInfo
    replaced: KeyInfo | None = None


class TenantMeta(BaseModel):
    spec: TenantSpec
    created: dt.datetime
    deleting: bool = Field(default=False, description="Deletion started: the tenant no longer authenticates.")
    uid: str | None = Field(
        default=None, pattern=INCARNATION_PATTERN,
        description="Random, written at creation: tells this tenant from an earlier one of the same name. None for "
        "tenants created before uids existed.",
    )

    @property
    def incarnation(self) -> str:
        """The uid; for a tenant created before uids, one derived from its creation time (stable, and distinct
        for a tenant deleted and created again by an older release, which writes a new `created`)."""
        if self.uid is not None:
            return self.uid
        created = self.created if self.created.tzinfo else self.created.replace(tzinfo=dt.UTC)
        return f"c{(created - _EPOCH) // dt.timedelta(microseconds=1):x}"

    def service_spec(self) -> TenantSpec:
        """The spec as the service serves it: with the incarnation its data is kept under."""
        return self.spec.model_copy(update={"incarnation": self.incarnation})

    def issued(self, key: KeyInfo) -> bool:
        """Whether `key` was issued to this incarnation, not to an earlier tenant of the name. A key from before
        incarnations has none, and is taken only by a tenant from before them too."""
        if key.incarnation is None:
            return self.uid is None
        return key.incarnation == self.incarnation


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def tenant_meta(record: dict[str, Any], mount: str, tenant: str) -> TenantMeta:
    """The tenant's record, or DamagedRecord naming its path and the first thing wrong, never its values (the
    record may now hold a secret that was written over it)."""
    try:
        return TenantMeta.model_validate(record)
    except ValidationError as err:
        raise DamagedRecord(f"{mount}/tenants/{tenant}/meta is not a tenant record ({first_problem(err, 'the record')}"
                            "); restore an earlier version (`bao kv rollback`) or delete the tenant") from None


def tenant_policy_name(tenant: str, mount: str = DEFAULT_MOUNT) -> str:
    """`foresight-tenant-<t>` in the default mount; `foresight-tenant-<mount>.<t>` in another, since policies are
    the Vault's, not the mount's: two deployments sharing one Vault each had a tenant `acme`, and one's create
    replaced the other's policy and its delete deleted it. A tenant name (a DNS label) holds no `.`, so no name
    of one form is a name of the other."""
    return TENANT_POLICY_PREFIX + (tenant if mount == DEFAULT_MOUNT else f"{mount}.{tenant}")


def tenant_policy(tenant: str, mount: str = DEFAULT_MOUNT) -> str:
    """Read access to the tenant's own records and nothing else (tenant names cannot hold glob characters)."""
    _check_tenant_name(tenant)
    return _stanza(f"{mount}/data/tenants/{tenant}/*", "read") + _stanza(
        f"{mount}/metadata/tenants/{tenant}/*", "read", "list"
    )


def service_policy(
    mount: str = DEFAULT_MOUNT,
    *,
    transit: tuple[str, str] | None = None,
    pki: tuple[str, str] | None = None,
) -> str:
    """The running service: read hashes, never write; optional transit (mount, key) and PKI (mount, role)."""
    policy = _stanza(f"{mount}/data/*", "read") + _stanza(f"{mount}/metadata/*", "read", "list")
    if transit is not None:
        transit_mount, key = transit
        for op in ("encrypt", "decrypt", "rewrap"):
            policy += _stanza(f"{transit_mount}/{op}/{key}", "update")
    if pki is not None:
        pki_mount, role = pki
        policy += _stanza(f"{pki_mount}/issue/{role}", "update")
    return policy


def onboarding_policy(mount: str = DEFAULT_MOUNT) -> str:
    """Operators and the admin API: manage records and tenant policies, nothing else in Vault."""
    policy = ""
    for sub in ("data", "metadata"):
        policy += _stanza(f"{mount}/{sub}/*", "create", "read", "update", "delete", "list")
    for sys_path in ("sys/policy", "sys/policies/acl"):
        policy += _stanza(f"{sys_path}/{TENANT_POLICY_PREFIX}*", "create", "read", "update", "delete")
    return policy


def _stanza(path: str, *capabilities: str) -> str:
    quoted = ", ".join(f'"{c}"' for c in capabilities)
    return f'path "{path}" {{\n  capabilities = [{quoted}]\n}}\n'


class VaultKeyAdmin:
    """Creates tenants and issues, rotates and revokes their keys. Needs the onboarding policy (or root)."""

    def __init__(self, client: hvac.Client, mount: str = DEFAULT_MOUNT) -> None:
        self.client = client
        self.mount = mount
        self._kv = client.secrets.kv.v2

    def setup(self, *, transit: tuple[str, str] | None = None, pki: tuple[str, str] | None = None) -> None:
        """Enable the KV v2 mount if absent; write the service and onboarding policies (privileged token)."""
        with _vault_errors("set up the key store"):
            mounts = self.client.sys.list_mounted_secrets_engines()
            mounts = mounts.get("data", mounts)
            if f"{self.mount}/" not in mounts:
                self.client.sys.enable_secrets_engine("kv", path=self.mount, options={"version": "2"})
            self.client.sys.create_or_update_policy(
                SERVICE_POLICY, service_policy(self.mount, transit=transit, pki=pki)
            )
            self.client.sys.create_or_update_policy(ONBOARDING_POLICY, onboarding_policy(self.mount))

    # -- tenants -------------------------------------------------------------------------------------------

    def create_tenant(self, spec: TenantSpec, *, exclusive: bool = False) -> TenantSpec:
        """Create the tenant and its policy. Creating an existing tenant with the same spec is a no-op, unless
        `exclusive`: a caller that goes on to issue the first key, and deletes the tenant if a later step fails,
        must know the tenant is its own, not a concurrent create's."""
        existing = self._read_meta(spec.name)
        if existing is not None:
            if existing[0].deleting:
                raise TenantExists(f"tenant {spec.name!r} is being deleted; run the deletion again to finish it")
            if exclusive:
                raise TenantExists(f"tenant {spec.name!r} already exists")
            if existing[0].spec == spec:
                return spec
            raise TenantExists(f"tenant {spec.name!r} already exists with a different spec (use update)")
        with _vault_errors(f"create tenant {spec.name!r}"):
            self.client.sys.create_or_update_policy(self._policy(spec.name), tenant_policy(spec.name, self.mount))
            try:
                meta = TenantMeta(spec=spec, created=utcnow(), uid=secrets.token_hex(8))
                self._kv.create_or_update_secret(
                    self._meta_path(spec.name), meta.model_dump(mode="json"), cas=0, mount_point=self.mount
                )
            except hvac.exceptions.InvalidRequest as err:
                if is_cas_conflict(err):  # created concurrently: same spec is fine, another is TenantExists
                    return self.create_tenant(spec, exclusive=exclusive)
                self._quietly(self.client.sys.delete_policy, self._policy(spec.name))
                raise
            except BaseException:
                self._quietly(self.client.sys.delete_policy, self._policy(spec.name))
                raise
        log.info("created tenant %s", spec.name)
        return spec

    def update_tenant(self, spec: TenantSpec) -> TenantSpec:
        """Change quotas or suspension; suspension refuses the tenant's keys within the readers' cache TTL."""
        for _ in range(_CAS_RETRIES):
            current = self._read_meta(spec.name)
            if current is None or current[0].deleting:
                raise TenantNotFound(f"no tenant {spec.name!r}")
            meta, version = current
            if self.write_record(self._meta_path(spec.name), meta.model_copy(update={"spec": spec}), version):
                return spec
        raise VaultKeyStoreError(f"tenant {spec.name!r} kept changing under the update; retry")

    def get_tenant(self, name: str) -> TenantSpec | None:
        current = self._read_meta(name)
        return None if current is None or current[0].deleting else current[0].spec

    def deletion_pending(self, name: str) -> bool:
        """A deletion of `name` started and did not finish (its keys are refused already); running it again ends it."""
        try:
            current = self._read_meta(name)
        except DamagedRecord:
            return False
        return current is not None and current[0].deleting

    def list_tenants(self) -> list[TenantSpec]:
        """Every live tenant; a damaged record is left out with a warning, so that one does not hide the rest."""
        specs = []
        for name in (n.rstrip("/") for n in self.list_records("tenants/")):
            try:
                spec = self.get_tenant(name)
            except DamagedRecord as err:
                log.warning("tenant %s left out: %s", name, err)
                continue
            if spec is not None:
                specs.append(spec)
        return specs

    def delete_tenant(self, name: str) -> None:
        """Remove the tenant's keys, policy and records, refusing its keys first (a damaged record refuses them
        already). Safe to re-run."""
        try:
            current = self._read_meta(name)
        except DamagedRecord:
            current = None
        if current is not None and not current[0].deleting:
            self.write_record(self._meta_path(name), current[0].model_copy(update={"deleting": True}), current[1])
        with _vault_errors(f"delete tenant {name!r}"):
            for key_id in self.list_records(f"tenants/{name}/keys/"):
                self._kv.delete_metadata_and_all_versions(f"keyids/{key_id}", mount_point=self.mount)
                self._kv.delete_metadata_and_all_versions(self._key_path(name, key_id), mount_point=self.mount)
            self.client.sys.delete_policy(self._policy(name))
            self._delete_legacy_policy(name)
            self._kv.delete_metadata_and_all_versions(self._meta_path(name), mount_point=self.mount)
        log.info("deleted tenant %s", name)

    # -- keys ----------------------------------------------------------------------------------------------

    def issue_key(
        self, tenant: str, scopes: Iterable[str] = ("read", "write"), *, ttl: dt.timedelta | None = None
    ) -> IssuedKey:
        """A new key for `tenant`; the returned secret is shown once and never stored."""
        return self.issue_key_recorded(tenant, scopes, ttl=ttl).key

    def issue_key_recorded(
        self, tenant: str, scopes: Iterable[str] = ("read", "write"), *, ttl: dt.timedelta | None = None
    ) -> WrittenKey:
        """`issue_key`, with the record as written: a caller that shows the key needs no read after the write, which
        could fail and lose a secret that already works."""
        scope_list = sorted(set(scopes))
        if not scope_list or not set(scope_list) <= SCOPES:
            raise VaultKeyStoreError(f"scopes must be a non-empty subset of {sorted(SCOPES)}")
        current = self._read_meta(tenant)
        if current is None or current[0].deleting:
            raise TenantNotFound(f"no tenant {tenant!r}")
        now = utcnow()
        with _vault_errors(f"issue a key for tenant {tenant!r}"):
            key = self._claim_key_id(tenant)
            info = KeyInfo(
                key_id=key.key_id,
                tenant=tenant,
                hash=key.key_hash,
                scopes=scope_list,
                created=now,
                expires=now + ttl if ttl else None,
                incarnation=current[0].incarnation,  # a deletion racing this write leaves a key no later tenant takes
            )
            try:
                self._kv.create_or_update_secret(
                    self._key_path(tenant, key.key_id),
                    info.model_dump(mode="json"),
                    cas=0,
                    mount_point=self.mount,
                )
            except BaseException:
                self._quietly(self._kv.delete_metadata_and_all_versions, f"keyids/{key.key_id}", mount_point=self.mount)
                raise
        log.info("issued key %s for tenant %s", key.key_id, tenant)
        return WrittenKey(key, info)

    def rotate_key(self, key_id: str, *, overlap: dt.timedelta, tenant: str | None = None) -> IssuedKey:
        """A new key with the same scopes and lifetime; the old one works for `overlap` more, then expires.
        A key rotated already is refused: its expiry was cut to the overlap, so it no longer says its lifetime."""
        return self.rotate_key_recorded(key_id, overlap=overlap, tenant=tenant).key

    def rotate_key_recorded(self, key_id: str, *, overlap: dt.timedelta, tenant: str | None = None) -> WrittenKey:
        """`rotate_key`, with the new key's record and the old one's as written (`replaced`)."""
        info, version = self._read_key(key_id, tenant)
        now = utcnow()
        _check_rotatable(info, now)
        ttl = info.expires - info.created if info.expires else None
        new = self.issue_key_recorded(info.tenant, info.scopes, ttl=ttl)
        old_expiry = now + overlap if info.expires is None else min(info.expires, now + overlap)
        try:
            for _ in range(_CAS_RETRIES):
                rotated = info.model_copy(update={"expires": old_expiry, "rotated_to": new.key.key_id})
                if self.write_record(self._key_path(info.tenant, key_id), rotated, version):
                    break
                info, version = self._read_key(key_id, info.tenant)
                _check_rotatable(info, now)  # a concurrent rotation or revocation won: this one's key is undone
            else:
                raise VaultKeyStoreError(f"key {key_id} kept changing during rotation; retry")
        except BaseException:
            self._quietly(self._delete_key, info.tenant, new.key.key_id)
            raise
        log.info(
            "rotated key %s -> %s for tenant %s (old expires %s)",
            key_id,
            new.key.key_id,
            info.tenant,
            old_expiry.isoformat(),
        )
        return new._replace(replaced=rotated)

    def revoke_key(self, key_id: str, *, tenant: str | None = None) -> KeyInfo:
        """Mark the key revoked readers refuse it within their cache TTL. Idempotent."""
        for _ in range(_CAS_RETRIES):
            info, version = self._read_key(key_id, tenant)
            if info.state == "revoked":
                return info
            revoked = info.model_copy(update={"state": "revoked", "revoked_at": utcnow()})
            if self.write_record(self._key_path(info.tenant, key_id), revoked, version):
                log.info("revoked key %s of tenant %s", key_id, info.tenant)
                return revoked
        raise VaultKeyStoreError(f"key {key_id} kept changing during revocation; retry")

    def get_key(self, key_id: str, *, tenant: str | None = None) -> KeyInfo:
        return self._read_key(key_id, tenant)[0]

    def list_keys(self, tenant: str) -> list[KeyInfo]:
        return [self._read_key(key_id, tenant)[0] for key_id in self.list_records(f"tenants/{tenant}/keys/")]

    # -- internals -----------------------------------------------------------------------------------------

    def _policy(self, tenant: str) -> str:
        return tenant_policy_name(tenant, self.mount)

    def _delete_legacy_policy(self, tenant: str) -> None:
        """A tenant of another mount created before policy names held the mount has `foresight-tenant-<t>`, a
        name another deployment's tenant may hold too: deleted only when its rules are for this mount."""
        legacy = tenant_policy_name(tenant)
        if legacy == self._policy(tenant):
            return
        try:
            rules = self.client.sys.read_policy(legacy)["data"]["rules"]
        except hvac.exceptions.InvalidPath:
            return
        if rules == tenant_policy(tenant, self.mount):
            self.client.sys.delete_policy(legacy)

    def _meta_path(self, tenant: str) -> str:
        _check_tenant_name(tenant)
        return f"tenants/{tenant}/meta"

    def _key_path(self, tenant: str, key_id: str) -> str:
        _check_tenant_name(tenant)
        return f"tenants/{tenant}/keys/{key_id}"

    def _claim_key_id(self, tenant: str) -> IssuedKey:
        for _ in range(_CAS_RETRIES):  # a 60-bit id collides practically never; CAS makes it impossible
            key = new_key()
            try:
                self._kv.create_or_update_secret(
                    f"keyids/{key.key_id}", {"tenant": tenant}, cas=0, mount_point=self.mount
                )
                return key
            except hvac.exceptions.InvalidRequest as err:
                if not is_cas_conflict(err):
                    raise
        raise VaultKeyStoreError("could not allocate a unique key id")

    def read_record(self, path: str) -> tuple[dict[str, Any], int] | None:
        """The record at `path` in the mount and its version (0 to create it with `write_record`); public
        because the marketplace integrations keep their customer records beside the tenants'."""
        with _vault_errors(f"read {self.mount}/{path}"):
            try:
                reply = self._kv.read_secret_version(path, mount_point=self.mount, raise_on_deleted_version=True)
            except hvac.exceptions.InvalidPath:
                return None
        return reply["data"]["data"], int(reply["data"]["metadata"]["version"])

    def _read_meta(self, tenant: str) -> tuple[TenantMeta, int] | None:
        found = self.read_record(self._meta_path(tenant))
        return None if found is None else (tenant_meta(found[0], self.mount, tenant), found[1])

    def _read_key(self, key_id: str, tenant: str | None) -> tuple[KeyInfo, int]:
        index = self.read_record(f"keyids/{key_id}")
        owner = index[0]["tenant"] if index else None
        if owner is None or (tenant is not None and owner != tenant):
            raise KeyNotFound(f"no key {key_id}" + (f" for tenant {tenant!r}" if tenant else ""))
        found = self.read_record(self._key_path(owner, key_id))
        if found is None:
            raise KeyNotFound(f"no key {key_id}")
        return KeyInfo.model_validate(found[0]), found[1]

    def write_record(self, path: str, record: BaseModel, version: int) -> bool:
        """Write if the record is still at `version`; False if someone else changed it first."""
        with _vault_errors(f"write {self.mount}/{path}"):
            try:
                self._kv.create_or_update_secret(
                    path, record.model_dump(mode="json"), cas=version, mount_point=self.mount
                )
                return True
            except hvac.exceptions.InvalidRequest as err:
                if is_cas_conflict(err):
                    return False
                raise

    def list_records(self, path: str) -> list[str]:
        with _vault_errors(f"list {self.mount}/{path}"):
            try:
                return list(self._kv.list_secrets(path, mount_point=self.mount)["data"]["keys"])
            except hvac.exceptions.InvalidPath:
                return []

    def delete_record(self, path: str) -> None:
        with _vault_errors(f"delete {self.mount}/{path}"):
            self._kv.delete_metadata_and_all_versions(path, mount_point=self.mount)

    def _delete_key(self, tenant: str, key_id: str) -> None:
        self._kv.delete_metadata_and_all_versions(self._key_path(tenant, key_id), mount_point=self.mount)
        self._kv.delete_metadata_and_all_versions(f"keyids/{key_id}", mount_point=self.mount)

    @staticmethod
    def _quietly(undo: Any, *args: Any, **kwargs: Any) -> None:
        """Roll back one step; a failure here is logged, the original error is what the caller sees."""
        try:
            undo(*args, **kwargs)
        except Exception as err:
            log.error("rollback step %s failed: %s", getattr(undo, "__name__", undo), type(err).__name__)


def _check_rotatable(info: KeyInfo, now: dt.datetime) -> None:
    """A rotated key names its successor even once expired (rotated with no overlap, it expires at once)."""
    if info.state == "revoked":
        raise KeyNotActive(f"key {info.key_id} is revoked; issue a new one")
    if info.rotated_to is not None:
        raise KeyNotActive(f"key {info.key_id} was already rotated to {info.rotated_to}; rotate {info.rotated_to} "
                           "instead, or issue a new key")
    if not info.usable_at(now):
        raise KeyNotActive(f"key {info.key_id} is expired; issue a new one")


def _check_tenant_name(tenant: str) -> None:
    if not re.fullmatch(TENANT_NAME_PATTERN, tenant):
        raise VaultKeyStoreError(f"invalid tenant name {tenant!r} (lowercase DNS label)")


def is_cas_conflict(err: hvac.exceptions.InvalidRequest) -> bool:
    return "check-and-set" in " ".join(err.errors or [str(err)])


class _vault_errors:
    """Turn transport and permission failures into key-store errors naming the operation."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, VaultKeyStoreError):
            return
        if isinstance(exc, requests.RequestException | hvac.exceptions.VaultDown | hvac.exceptions.BadGateway):
            raise VaultUnavailable(f"cannot {self.what}: Vault unreachable ({type(exc).__name__})") from None
        if isinstance(exc, hvac.exceptions.Forbidden):
            raise VaultKeyStoreError(
                f"cannot {self.what}: the Vault token lacks permission: forbidden ({FORBIDDEN_HINT})"
            ) from None
        if isinstance(exc, hvac.exceptions.VaultError):
            raise VaultKeyStoreError(f"cannot {self.what}: Vault said {type(exc).__name__}") from None
