"""The Azure SaaS subscription behind a marketplace tenant: the subscription id is the purchase."""

from __future__ import annotations

from marketplace.records import PurchaseRecord, PurchaseRecords, tenant_name
from service.security.vault_keys import VaultKeyAdmin

CLOUD = "azure"


class SubscriptionRecord(PurchaseRecord):
    subscription_id: str
    offer_id: str
    plan_id: str


def records(key_admin: VaultKeyAdmin) -> PurchaseRecords[SubscriptionRecord]:
    return PurchaseRecords(key_admin, CLOUD, SubscriptionRecord)


def tenant_of(subscription_id: str) -> str:
    return tenant_name(CLOUD, subscription_id)
