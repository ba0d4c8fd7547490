"""The marketplace purchase behind each marketplace tenant, kept in Vault beside the tenant's own records
(`<mount>/marketplace/<cloud>/<tenant>`), so the registration page, the event consumer and the metering job
agree on it whichever host they run on. Every write is check-and-set: two writers never lose each other's
update. Each cloud's record subclasses `PurchaseRecord` with the identifiers its marketplace uses."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Generic, TypeVar

from pydantic import BaseModel, Field

from onboarding.errors import from_key_store
from service.security.vault_keys import VaultKeyAdmin, VaultKeyStoreError

_CAS_RETRIES = 8


def tenant_name(cloud: str, purchase_id: str) -> str:
    """A stable DNS-label tenant name for one purchase: a hash of the marketplace's id for it fits a DNS label,
    cannot merge two purchases the way lowercasing a mixed-case id could, and says nothing about the buyer."""
    return f"{cloud}-" + hashlib.sha256(purchase_id.encode()).hexdigest()[:16]


class Subscription(StrEnum):
    ACTIVE = "active"
    ENDED = "ended"  # no entitlement left: final usage metered, the tenant suspended


class PendingUsage(BaseModel):
    """A usage record sent (or about to be) but not yet confirmed: resent as it is until the marketplace
    confirms it, so a crash between sending and recording bills the hour exactly once."""

    timestamp: dt.datetime
    quantity: int = Field(ge=0)
    requests_seen: int = Field(ge=0, description="The service's request counter that this record accounts up to.")
    remainder: int = Field(ge=0, description="Requests left over after quantity whole units.")
    counting_since: float | None = Field(
        None, description="When the service's counter began (its process's start, or its shared tier's counter's).")
    start: dt.datetime | None = Field(None, description="Start of the interval it bills: the previous record's end.")
    end: dt.datetime | None = Field(None, description="End of the interval it bills (None: staged by an old version).")


class PurchaseRecord(BaseModel):
    plan: str
    subscription: Subscription = Subscription.ACTIVE
    registered: dt.datetime
    requests_seen: int = Field(0, ge=0, description="Service request counter at the last confirmed record.")
    unbilled_requests: int = Field(0, ge=0, description="Requests counted but not yet a whole unit.")
    last_metered: dt.datetime | None = Field(None, description="Timestamp of the last confirmed usage record.")
    metered_until: dt.datetime | None = Field(
        None, description="End of the interval of the last confirmed usage record: the next one starts there.")
    counting_since: float | None = Field(
        None, description="When the counter of the last confirmed record began: another value means the counter "
                          "began anew (a restart, a new tier counter), and all of it is new usage (None: a service "
                          "that does not say).")
    pending: PendingUsage | None = None


RecordT = TypeVar("RecordT", bound=PurchaseRecord)


class PurchaseRecords(Generic[RecordT]):
    """Vault failures come out as onboarding errors (exit codes and messages the CLI already prints)."""

    def __init__(self, key_admin: VaultKeyAdmin, cloud: str, model: type[RecordT]) -> None:
        self._kv = key_admin
        self._prefix = f"marketplace/{cloud}/"
        self._model = model

    def path(self, tenant: str) -> str:
        return self._prefix + tenant

    def get(self, tenant: str) -> RecordT | None:
        with _vault(f"read the purchase record of {tenant}"):
            found = self._kv.read_record(self.path(tenant))
        return None if found is None else self._model.model_validate(found[0])

    def tenants(self) -> list[str]:
        with _vault("list purchases"):
            return [name.rstrip("/") for name in self._kv.list_records(self._prefix)]

    def tenant_exists(self, tenant: str) -> bool:
        with _vault(f"look up tenant {tenant}"):
            return self._kv.get_tenant(tenant) is not None

    def create(self, tenant: str, record: RecordT) -> bool:
        """Write a new record; False if one exists already (a second registration of the same purchase)."""
        with _vault(f"record the purchase of {tenant}"):
            return self._kv.write_record(self.path(tenant), record, 0)

    def update(self, tenant: str, change: Callable[[RecordT], RecordT]) -> RecordT:
        """Apply `change` to the current record and write it back, retrying if another writer got there first."""
        with _vault(f"update the purchase record of {tenant}"):
            for _ in range(_CAS_RETRIES):
                found = self._kv.read_record(self.path(tenant))
                if found is None:
                    raise VaultKeyStoreError(f"no purchase record for tenant {tenant!r}")
                updated = change(self._model.model_validate(found[0]))
                if self._kv.write_record(self.path(tenant), updated, found[1]):
                    return updated
            raise VaultKeyStoreError(f"the purchase record of {tenant!r} kept changing under the update; retry")

    def delete(self, tenant: str) -> None:
        """Undo `create` (a registration that failed after writing it)."""
        with _vault(f"delete the purchase record of {tenant}"):
            self._kv.delete_record(self.path(tenant))


@contextmanager
def _vault(what: str) -> Iterator[None]:
    try:
        yield
    except VaultKeyStoreError as err:
        raise from_key_store(what, err) from None
