"""Who a caller is (a principal bound to one tenant) and where that answer comes from (a key source).

A key source turns an API key into a principal and lists tenants with their quotas. The file source here
serves development and tests; the Vault source (service.security.vault_keys) serves production. Both may
block, so the service calls them from a worker thread and caches the answers briefly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, Field, ValidationError, field_validator

from service.prefetch.markov import MIN_MAX_KEYS
from service.security.apikeys import MalformedKey, key_id_of, verify_key
from service.validation import first_problem

TENANT_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
INCARNATION_PATTERN = r"^[a-z0-9]{1,64}$"  # safe in shared-tier keys and file names


# 8 PiB: past 2^53 a JSON number (Vault keeps records as JSON) no longer holds every integer.
MAX_MEMORY_BYTES = 2**53


class TenantQuota(BaseModel):
    """Limits that keep one tenant from hurting another."""

    memory_bytes: int = Field(64 * 1024 * 1024, gt=0, le=MAX_MEMORY_BYTES,
                              description="Memory budget of the tenant's store, bytes.")
    requests_per_second: float = Field(
        0, ge=0, description="Sustained command rate; 0 means unlimited. Bursts up to one second's worth."
    )
    origin: str | None = Field(
        None, description="fsspec URL read through on a miss (file:///srv/data, s3://bucket/prefix); none: no origin."
    )
    prefetcher: Literal["none", "stride", "markov", "learned"] | None = Field(
        None, description="This tenant's prefetcher; unset: the deployment's choice (or its A/B assignment)."
    )
    prefetch_max_keys: int | None = Field(
        None,
        ge=MIN_MAX_KEYS,
        description="Keys this tenant's Markov or learned prefetcher remembers, which bounds what it holds in the "
        "prefetch process (about 0.07-0.33 KB a key for Markov, 0.19-0.74 KB for the learned one); unset: the "
        "deployment's prefetch_max_keys.",
    )
    scripting: bool = Field(
        True, description="Whether the tenant may run Lua scripts (EVAL, EVALSHA). A script holds every tenant's "
        "requests while it runs, up to the service's script_time_limit_ms, and a tenant's scripts together up to "
        "script_budget_ms_per_s a second: off for tenants not trusted with that.",
    )


class TenantSpec(BaseModel):
    name: str = Field(pattern=TENANT_NAME_PATTERN, description="DNS-label tenant name.")
    quota: TenantQuota = Field(default_factory=TenantQuota)
    suspended: bool = Field(False, description="Suspended tenants cannot authenticate.")
    incarnation: str | None = Field(
        None, pattern=INCARNATION_PATTERN, exclude=True,
        description="Which tenant of this name: the key source's id for it, so that data a deleted tenant left "
        "(in memory, the shared tier, a snapshot, model checkpoints) never reaches a later tenant given its name. "
        "Set by the Vault source from the tenant's record, never stored in it; None for the tenants file's.",
    )


@dataclass(frozen=True, slots=True)
class Principal:
    """An API key's tenant and what the key may do. Scopes follow Redis's ACL categories: "read" runs the
    commands that read keys (and the HTTP reads), "write" those that change them, "admin" the ones that empty
    the tenant's whole keyspace (FLUSHDB, FLUSHALL)."""

    tenant: str
    key_id: str
    scopes: frozenset[str] = field(default_factory=lambda: frozenset({"read", "write"}))
    incarnation: str | None = None  # the tenant's (TenantSpec.incarnation) the key was issued to


class KeySource(Protocol):
    def authenticate(self, api_key: str) -> Principal | None:
        """The principal for a valid, active key; None for anything else. May block."""

    def tenants(self, fresh: bool = False) -> list[TenantSpec]:
        """Every tenant with its quota; `fresh` bypasses any cache. May block."""

    def tenant(self, name: str) -> TenantSpec | None:
        """One tenant, read now (None if it does not exist or is being deleted). May block."""


class KeyRecord(BaseModel):
    key_id: str
    tenant: str
    hash: str = Field(description="Stored form from service.security.apikeys.hash_key.")
    scopes: list[str] = Field(default_factory=lambda: ["read", "write"])


class TenantsFile(BaseModel):
    """The JSON file a development deployment keeps its tenants and key hashes in."""

    tenants: list[TenantSpec]
    keys: list[KeyRecord] = Field(default_factory=list)

    @field_validator("tenants")
    @classmethod
    def _unique(cls, tenants: list[TenantSpec]) -> list[TenantSpec]:
        names = [t.name for t in tenants]
        if len(names) != len(set(names)):
            raise ValueError("tenant names must be unique")
        return tenants


class TenantsFileError(ValueError):
    """The tenants file is missing or invalid; the message names the file and the field."""


class FileKeySource:
    """Tenants and key hashes from a JSON file (no secrets in it: only hashes), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = 0.0
        self._load()

    def _load(self) -> None:
        path = self.path
        try:
            mtime = path.stat().st_mtime
            parsed = TenantsFile.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise TenantsFileError(f"tenants file {path} does not exist") from None
        except json.JSONDecodeError as err:
            raise TenantsFileError(f"tenants file {path} is not valid JSON: {err}") from None
        except ValidationError as err:
            raise TenantsFileError(f"tenants file {path}: {first_problem(err, 'the file')}") from None
        names = {t.name for t in parsed.tenants}
        for record in parsed.keys:
            if record.tenant not in names:
                raise TenantsFileError(
                    f"tenants file {path}: key {record.key_id} names unknown tenant {record.tenant!r}"
                )
        # Swap in one assignment each: readers on other threads see the old or the new file, never a mix.
        self._by_id = {r.key_id: r for r in parsed.keys}
        self._suspended = {t.name for t in parsed.tenants if t.suspended}
        self._file = parsed
        self._mtime = mtime

    def authenticate(self, api_key: str) -> Principal | None:
        try:
            record = self._by_id.get(key_id_of(api_key))
        except MalformedKey:
            return None
        if record is None or record.tenant in self._suspended or not verify_key(api_key, record.hash):
            return None
        return Principal(record.tenant, record.key_id, frozenset(record.scopes))

    def tenants(self, fresh: bool = False) -> list[TenantSpec]:
        """The file's tenants, re-reading it first if it changed (an invalid edit keeps the last good one)."""
        if fresh or self.path.stat().st_mtime != self._mtime:
            self._load()
        return list(self._file.tenants)

    def tenant(self, name: str) -> TenantSpec | None:
        return next((t for t in self.tenants(fresh=True) if t.name == name), None)
