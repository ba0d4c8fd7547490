"""AWS KMS as the KMS, against the moto server (real boto3 calls over HTTP)."""

from __future__ import annotations

import subprocess
import sys

import boto3
import pytest
from botocore.config import Config

from service.security.envelope import EnvelopeCipher, TamperedEnvelope, wrapped_key_of
from service.security.kms import KmsSettings, build_kms
from service.security.kms.aws import AwsKms
from service.security.kms.base import KmsError, KmsRejected, KmsUnavailable, WrappedKey
from tests.security.helpers import replace_wrapped_blob
from tests.servers import MotoServer

CREDS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture
def kms_client(moto_server: MotoServer):  # type: ignore[no-untyped-def]
    return boto3.client("kms", endpoint_url=moto_server.endpoint, **CREDS)


@pytest.fixture
def key_arn(kms_client) -> str:  # type: ignore[no-untyped-def]
    return str(kms_client.create_key(Description="foresight test")["KeyMetadata"]["Arn"])


def test_envelope_round_trip_through_aws_kms(kms_client, key_arn: str) -> None:  # type: ignore[no-untyped-def]
    cipher = EnvelopeCipher(AwsKms(key_arn, client=kms_client))
    envelope = cipher.encrypt(b"snapshot" * 1000, b"snapshot")
    wrapped = wrapped_key_of(envelope)
    assert (wrapped.provider, wrapped.key_ref) == ("aws-kms", key_arn)
    assert cipher.decrypt(envelope, b"snapshot") == b"snapshot" * 1000


def test_alias_resolves_to_the_key_arn_in_headers(kms_client, key_arn: str) -> None:  # type: ignore[no-untyped-def]
    kms_client.create_alias(AliasName="alias/foresight-alias-test", TargetKeyId=key_arn)
    envelope = EnvelopeCipher(AwsKms("alias/foresight-alias-test", client=kms_client)).encrypt(b"x")
    assert wrapped_key_of(envelope).key_ref == key_arn


def test_tampered_wrapped_key_is_rejected(kms_client, key_arn: str) -> None:  # type: ignore[no-untyped-def]
    kms = AwsKms(key_arn, client=kms_client)
    envelope = EnvelopeCipher(kms).encrypt(b"data")
    blob = wrapped_key_of(envelope).blob
    with pytest.raises(TamperedEnvelope, match="KMS rejected"):
        EnvelopeCipher(kms).decrypt(replace_wrapped_blob(envelope, blob[:-8] + bytes(8)))
    with pytest.raises(KmsRejected):
        kms.unwrap(wrapped_key_of(replace_wrapped_blob(envelope, b"\x01" * 40)))


def test_rewrap_moves_envelopes_to_a_new_key_via_reencrypt(kms_client, key_arn: str) -> None:  # type: ignore[no-untyped-def]
    old = EnvelopeCipher(AwsKms(key_arn, client=kms_client))
    envelope = old.encrypt(b"checkpoint" * 50, b"ckpt")
    new_arn = kms_client.create_key(Description="successor")["KeyMetadata"]["Arn"]
    with pytest.raises(TamperedEnvelope, match="not this provider's configured key"):
        EnvelopeCipher(AwsKms(new_arn, client=kms_client)).rewrap(envelope)  # the old key must be named to move off it
    new = EnvelopeCipher(AwsKms(new_arn, client=kms_client, previous=[key_arn]))
    rewrapped = new.rewrap(envelope)
    assert wrapped_key_of(rewrapped).key_ref == new_arn
    assert rewrapped.endswith(envelope[-(500 + 16) :])
    assert new.decrypt(rewrapped, b"ckpt") == b"checkpoint" * 50
    # KMS itself says which key the re-wrapped DEK now needs (moto does not enforce disabled keys, so ask it).
    context = {"foresight:purpose": "data-key"}
    reply = kms_client.decrypt(CiphertextBlob=wrapped_key_of(rewrapped).blob, EncryptionContext=context)
    assert reply["KeyId"] == new_arn


def test_header_naming_another_key_is_refused(kms_client, key_arn: str) -> None:  # type: ignore[no-untyped-def]
    """The header is not authenticated: it must not choose the key (e.g. one in an attacker's account)."""
    other_arn = kms_client.create_key(Description="someone else's")["KeyMetadata"]["Arn"]
    forged = EnvelopeCipher(AwsKms(other_arn, client=kms_client)).encrypt(b"forged entries", b"snapshot")
    kms_client.create_alias(AliasName="alias/foresight-forge-test", TargetKeyId=key_arn)
    key_id = key_arn.rsplit("/", 1)[1]
    for configured in (key_arn, key_id, "alias/foresight-forge-test"):
        cipher = EnvelopeCipher(AwsKms(configured, client=kms_client))
        with pytest.raises(TamperedEnvelope, match="not this provider's configured key"):
            cipher.decrypt(forged, b"snapshot")
        with pytest.raises(TamperedEnvelope, match="not this provider's configured key"):
            cipher.rewrap(forged)
        assert cipher.decrypt(cipher.encrypt(b"ours", b"snapshot"), b"snapshot") == b"ours"  # ARN in header: same key


def test_wrong_encryption_context_is_rejected(kms_client, key_arn: str) -> None:  # type: ignore[no-untyped-def]
    blob = kms_client.encrypt(KeyId=key_arn, Plaintext=b"k" * 32, EncryptionContext={"other": "context"})
    with pytest.raises(KmsError):
        AwsKms(key_arn, client=kms_client).unwrap(WrappedKey("aws-kms", key_arn, blob["CiphertextBlob"]))


def test_build_kms_from_settings(moto_server: MotoServer, key_arn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = KmsSettings(
        provider="aws-kms", key=key_arn, aws_region="us-east-1", aws_endpoint_url=moto_server.endpoint
    )
    cipher = EnvelopeCipher(build_kms(settings))
    assert cipher.decrypt(cipher.encrypt(b"ok")) == b"ok"


def test_unreachable_kms_is_unavailable_not_tampered() -> None:
    config = Config(retries={"max_attempts": 1}, connect_timeout=1)
    client = boto3.client("kms", endpoint_url="http://127.0.0.1:9", config=config, **CREDS)
    with pytest.raises(KmsUnavailable):
        AwsKms("alias/anything", client=client).wrap(b"k" * 32)


def test_importing_the_aws_adapter_imports_no_other_cloud_sdk() -> None:
    code = (
        "import sys, service.security.kms.aws, service.security.envelope, service.security.kms\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('azure', 'google', 'grpc'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_service_unwraps_with_the_previous_keys_it_is_given(  # type: ignore[no-untyped-def]
    kms_client, key_arn: str, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the key moved (an alias pointed at a new key), what the old key wrapped still opens when, and only
    when, the service's settings name it."""
    from service.bootstrap import build_cipher
    from service.config import Settings

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    envelope = EnvelopeCipher(AwsKms(key_arn, client=kms_client)).encrypt(b"warm", b"snapshot")
    new_arn = kms_client.create_key(Description="successor")["KeyMetadata"]["Arn"]
    common = {"dev": True, "kms_provider": "aws", "kms_key_id": new_arn, "kms_endpoint_url": moto_server.endpoint}
    without = build_cipher(Settings(**common), None)
    assert without is not None
    with pytest.raises(TamperedEnvelope):
        without.decrypt(envelope, b"snapshot")
    cipher = build_cipher(Settings(**common, kms_previous_key_ids=[key_arn]), None)
    assert cipher is not None and cipher.decrypt(envelope, b"snapshot") == b"warm"
