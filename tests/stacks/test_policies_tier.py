"""The `shared-tier-tls-and-identity` policy: each cloud's tier must speak TLS only and admit clients by identity.
The scale-out stacks' own tiers pass it (each cloud's scale-out test runs the whole pack on its resources)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stacks.policy_harness import violations

POLICY = "shared-tier-tls-and-identity"
ELASTICACHE = "aws:elasticache/replicationGroup:ReplicationGroup"
ELASTICACHE_USER = "aws:elasticache/user:User"
MEMORYSTORE = "gcp:memorystore/instance:Instance"
AZURE_REDIS = "azure-native:redis:Redis"
KEY = "arn:aws:kms:us-east-1:123456789012:key/0f0e0d0c-0b0a-0908-0706-050403020100"

GOOD: dict[str, dict[str, Any]] = {
    ELASTICACHE: {"transitEncryptionEnabled": True, "transitEncryptionMode": "required",
                  "atRestEncryptionEnabled": True, "kmsKeyId": KEY, "userGroupIds": ["foresight-dev"]},
    MEMORYSTORE: {"transitEncryptionMode": "SERVER_AUTHENTICATION", "authorizationMode": "IAM_AUTH"},
    AZURE_REDIS: {"enableNonSslPort": False, "minimumTlsVersion": "1.2", "disableAccessKeyAuthentication": True,
                  "redisConfiguration": {"aadEnabled": "true"}},
}


@pytest.mark.parametrize("resource_type", sorted(GOOD))
def test_a_tier_with_tls_and_identity_passes(resource_type: str) -> None:
    assert violations(POLICY, resource_type, GOOD[resource_type]) == []


@pytest.mark.parametrize(("resource_type", "change", "fragment"), [
    (ELASTICACHE, {"transitEncryptionEnabled": False}, "TLS in transit"),
    (ELASTICACHE, {"kmsKeyId": None}, "customer-managed key"),
    (ELASTICACHE, {"authToken": "hunter2-hunter2-hunter2"}, "no AUTH token"),
    (ELASTICACHE, {"transitEncryptionMode": "preferred"}, "'preferred' also admits plain text"),
    (ELASTICACHE, {"userGroupIds": None}, "default user"),
    (ELASTICACHE, {"userGroupIds": []}, "default user"),
    (MEMORYSTORE, {"transitEncryptionMode": "TRANSIT_ENCRYPTION_DISABLED"}, "SERVER_AUTHENTICATION"),
    (MEMORYSTORE, {"authorizationMode": "AUTH_DISABLED"}, "IAM_AUTH"),
    (AZURE_REDIS, {"enableNonSslPort": True}, "no plain-text port"),
    (AZURE_REDIS, {"minimumTlsVersion": "1.0"}, "TLS 1.2"),
    (AZURE_REDIS, {"disableAccessKeyAuthentication": False}, "no access keys"),
    (AZURE_REDIS, {"redisConfiguration": {}}, "Entra ID"),
])
def test_each_weakness_is_named(resource_type: str, change: dict[str, Any], fragment: str) -> None:
    props = {k: v for k, v in {**GOOD[resource_type], **change}.items() if v is not None}
    found = violations(POLICY, resource_type, props)
    assert len(found) == 1 and fragment in found[0], found


def test_tls_without_a_mode_is_required_tls() -> None:
    """ElastiCache makes a new group with transit encryption on `required` unless told `preferred`."""
    props = {k: v for k, v in GOOD[ELASTICACHE].items() if k != "transitEncryptionMode"}
    assert violations(POLICY, ELASTICACHE, props) == []


@pytest.mark.parametrize(("props", "ok"), [
    ({"authenticationMode": {"type": "iam"}, "accessString": "on ~fs:* -@all +get"}, True),
    ({"authenticationMode": {"type": "no-password-required"}, "accessString": "off -@all"}, True),
    ({"authenticationMode": {"type": "no-password-required"}, "accessString": "on ~* +@all"}, False),
    ({"authenticationMode": {"type": "password", "passwords": ["a-long-password-123"]}, "accessString": "on"}, False),
    ({"passwords": ["a-long-password-123"], "accessString": "on ~* +@all"}, False),
])
def test_elasticache_users_have_no_password_and_passwordless_ones_are_off(props: dict[str, Any], ok: bool) -> None:
    assert (violations(POLICY, ELASTICACHE_USER, props) == []) is ok
