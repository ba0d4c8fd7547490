"""The AWS purchase behind a marketplace tenant. Since June 2026 new SaaS listings identify a purchase by its
license and the buyer's account (one account may hold several concurrent agreements), so the license is the
tenant."""

from __future__ import annotations

from marketplace.records import PurchaseRecord, PurchaseRecords, tenant_name
from service.security.vault_keys import VaultKeyAdmin

CLOUD = "aws"


class CustomerRecord(PurchaseRecord):
    license_arn: str
    aws_account_id: str
    product_code: str


def records(key_admin: VaultKeyAdmin) -> PurchaseRecords[CustomerRecord]:
    return PurchaseRecords(key_admin, CLOUD, CustomerRecord)


def tenant_of(license_arn: str) -> str:
    return tenant_name(CLOUD, license_arn)
