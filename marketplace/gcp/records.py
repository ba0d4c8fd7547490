"""The Google Cloud entitlement behind a marketplace tenant: each order is an entitlement of the buyer's
Procurement account, so the entitlement is the purchase."""

from __future__ import annotations

from marketplace.records import PurchaseRecord, PurchaseRecords, tenant_name
from service.security.vault_keys import VaultKeyAdmin

CLOUD = "gcp"


class EntitlementRecord(PurchaseRecord):
    entitlement_id: str
    account_id: str
    plan_id: str
    usage_reporting_id: str


def records(key_admin: VaultKeyAdmin) -> PurchaseRecords[EntitlementRecord]:
    return PurchaseRecords(key_admin, CLOUD, EntitlementRecord)


def tenant_of(entitlement_id: str) -> str:
    return tenant_name(CLOUD, entitlement_id)
