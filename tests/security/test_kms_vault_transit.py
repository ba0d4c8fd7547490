"""Vault transit as the KMS, against a real OpenBao, with the service policy's narrow transit grants."""

from __future__ import annotations

import hvac
import pytest

from service.security.envelope import EnvelopeCipher, TamperedEnvelope, wrapped_key_of
from service.security.kms import KmsSettings, build_kms
from service.security.kms.base import KmsError, KmsKeyRetired, KmsRejected, KmsUnavailable, WrappedKey
from service.security.kms.vault_transit import VaultTransitKms
from tests.security.conftest import TRANSIT_KEY
from tests.security.helpers import replace_wrapped_blob, token_client, unique
from tests.servers import OpenBao


@pytest.fixture
def rotating_key(bao_root: hvac.Client) -> str:
    """A transit key of this test's own, so rotating it disturbs nobody."""
    name = unique("kek")
    bao_root.secrets.transit.create_key(name, mount_point="transit")
    return name


def test_service_policy_can_wrap_and_unwrap(service_client: hvac.Client) -> None:
    kms = build_kms(KmsSettings(provider="vault-transit", key=TRANSIT_KEY), vault_client=service_client)
    cipher = EnvelopeCipher(kms)
    envelope = cipher.encrypt(b"snapshot bytes", b"snapshot")
    assert wrapped_key_of(envelope).blob.startswith(b"vault:v1:")
    assert cipher.decrypt(envelope, b"snapshot") == b"snapshot bytes"


def test_other_transit_keys_are_off_limits_to_the_service(service_client: hvac.Client, rotating_key: str) -> None:
    with pytest.raises(KmsError, match="may not use"):
        VaultTransitKms(service_client, rotating_key).wrap(b"k" * 32)


def test_tampered_wrapped_key_is_rejected(bao_root: hvac.Client) -> None:
    kms = VaultTransitKms(bao_root, TRANSIT_KEY)
    wrapped = kms.wrap(b"k" * 32)
    body = wrapped.blob.decode()
    forged = body[:-6] + ("AAAA==" if not body.endswith("AAAA==") else "BBBB==")
    with pytest.raises(KmsRejected):
        kms.unwrap(WrappedKey(wrapped.provider, wrapped.key_ref, forged.encode()))
    with pytest.raises(KmsRejected):
        kms.unwrap(WrappedKey(wrapped.provider, wrapped.key_ref, b"\xff\xfe binary junk"))
    envelope = EnvelopeCipher(kms).encrypt(b"data")
    with pytest.raises(TamperedEnvelope, match="KMS rejected"):
        EnvelopeCipher(kms).decrypt(replace_wrapped_blob(envelope, forged.encode()))


def test_rotation_then_rewrap_moves_dek_to_new_version_without_touching_data(
    bao_root: hvac.Client, rotating_key: str
) -> None:
    kms = VaultTransitKms(bao_root, rotating_key)
    cipher = EnvelopeCipher(kms)
    envelope = cipher.encrypt(b"checkpoint" * 100, b"ckpt")
    bao_root.secrets.transit.rotate_key(rotating_key, mount_point="transit")
    rewrapped = cipher.rewrap(envelope)
    assert wrapped_key_of(rewrapped).blob.startswith(b"vault:v2:")
    assert rewrapped.endswith(envelope[-(len(b"checkpoint") * 100 + 16) :])
    # Retire version 1: only the re-wrapped envelope still opens; the other says why, not "tampered".
    bao_root.secrets.transit.update_key_configuration(rotating_key, min_decryption_version=2, mount_point="transit")
    assert cipher.decrypt(rewrapped, b"ckpt") == b"checkpoint" * 100
    with pytest.raises(KmsKeyRetired, match="version 1 is retired"):
        cipher.decrypt(envelope, b"ckpt")


def test_unreachable_vault_is_unavailable_not_tampered() -> None:
    kms = VaultTransitKms(hvac.Client(url="http://127.0.0.1:9", timeout=1), TRANSIT_KEY)
    with pytest.raises(KmsUnavailable):
        kms.wrap(b"k" * 32)


def test_missing_key_is_a_configuration_error(openbao: OpenBao, bao_root: hvac.Client) -> None:
    client = token_client(openbao.addr, bao_root, "root")
    with pytest.raises(KmsError, match=r"does not exist|may not use") as info:
        VaultTransitKms(client, "no-such-key").unwrap(WrappedKey("vault-transit", "no-such-key", b"vault:v1:AAAA"))
    assert not isinstance(info.value, KmsRejected)


def test_header_naming_another_transit_key_is_refused(bao_root: hvac.Client, rotating_key: str) -> None:
    """The header is not authenticated: it must not choose another key the token can reach."""
    forged = EnvelopeCipher(VaultTransitKms(bao_root, rotating_key)).encrypt(b"forged entries", b"snapshot")
    ours = EnvelopeCipher(VaultTransitKms(bao_root, TRANSIT_KEY))
    with pytest.raises(TamperedEnvelope, match="not this provider's configured key"):
        ours.decrypt(forged, b"snapshot")
    with pytest.raises(TamperedEnvelope, match="not this provider's configured key"):
        ours.rewrap(forged)
    moving = EnvelopeCipher(VaultTransitKms(bao_root, TRANSIT_KEY, previous=[rotating_key]))
    moved = moving.rewrap(forged)  # named as a previous key: envelopes move off it
    assert wrapped_key_of(moved).key_ref == TRANSIT_KEY
    assert ours.decrypt(moved, b"snapshot") == b"forged entries"
