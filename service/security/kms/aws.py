"""AWS KMS as the KMS (boto3; tested against the moto server).

`key_id` may be a key id, ARN or alias; `key_ref` in headers is the key ARN that KMS reports, so unwrap
names the key explicitly (KMS best practice) even when the alias later moves. Every call carries a fixed
encryption context, which KMS binds to the ciphertext and logs in CloudTrail. Rotation: KMS automatic
rotation keeps old key material, so old envelopes keep opening; `rewrap` uses ReEncrypt (the DEK never
leaves KMS) and is how envelopes move to another key (e.g. after an alias points at a new key).

Headers are not authenticated, so unwrap and rewrap accept only a header whose key ARN is the configured key's
ARN (an alias or bare id is resolved once with DescribeKey: Encrypt reports the ARN, so that is what headers
hold) or one of `previous`, the keys envelopes are being moved off; anything else is refused without a call.
Needs kms:Encrypt, kms:Decrypt, kms:DescribeKey and kms:ReEncrypt* on the key.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import boto3
import botocore.exceptions

from service.security.kms.base import (
    KmsError,
    KmsProvider,
    KmsRejected,
    KmsUnavailable,
    WrappedKey,
    check_dek,
)

ENCRYPTION_CONTEXT = {"foresight:purpose": "data-key"}
_REJECTED = {"InvalidCiphertextException", "IncorrectKeyException"}
_UNAVAILABLE = {
    "KMSInternalException",
    "ThrottlingException",
    "DependencyTimeoutException",
    "ServiceUnavailable",
}


class AwsKms(KmsProvider):
    name = "aws-kms"

    def __init__(
        self,
        key_id: str,
        *,
        client: Any = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        previous: Sequence[str] = (),
    ) -> None:
        """`previous`: keys (id, ARN or alias) whose envelopes may still be unwrapped, to `rewrap` them onto this."""
        self.key_id = key_id
        self.previous = tuple(previous)
        self.client = client or boto3.client("kms", region_name=region, endpoint_url=endpoint_url)
        self._arns: dict[str, str] = {}  # configured key (id, ARN or alias) -> its key ARN
        self._lock = threading.Lock()

    @property
    def key_ref(self) -> str:
        return self.key_id

    def accepts(self, key_ref: str) -> bool:
        return any(key_ref == self._arn(key) for key in (self.key_id, *self.previous))

    def _arn(self, key: str) -> str:
        """The key ARN of a configured key, as Encrypt reports it; an alias is resolved once per process."""
        if key.startswith("arn:") and ":key/" in key:
            return key
        with self._lock:
            arn = self._arns.get(key)
        if arn is None:
            arn = str(self._call("describe_key", KeyId=key)["KeyMetadata"]["Arn"])
            with self._lock:
                self._arns[key] = arn
        return arn

    def wrap(self, dek: bytes) -> WrappedKey:
        reply = self._call("encrypt", KeyId=self.key_id, Plaintext=check_dek(dek), EncryptionContext=ENCRYPTION_CONTEXT)
        return WrappedKey(self.name, reply["KeyId"], reply["CiphertextBlob"])

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        self._check_key(wrapped)
        reply = self._call(
            "decrypt",
            CiphertextBlob=wrapped.blob,
            KeyId=wrapped.key_ref,
            EncryptionContext=ENCRYPTION_CONTEXT,
        )
        plaintext: bytes = reply["Plaintext"]
        return plaintext

    def rewrap(self, wrapped: WrappedKey) -> WrappedKey:
        self._check_key(wrapped)
        reply = self._call(
            "re_encrypt",
            CiphertextBlob=wrapped.blob,
            SourceKeyId=wrapped.key_ref,
            DestinationKeyId=self.key_id,
            SourceEncryptionContext=ENCRYPTION_CONTEXT,
            DestinationEncryptionContext=ENCRYPTION_CONTEXT,
        )
        return WrappedKey(self.name, reply["KeyId"], reply["CiphertextBlob"])

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        method = getattr(self.client, operation)
        try:
            reply: dict[str, Any] = method(**params)
            return reply
        except botocore.exceptions.ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in _REJECTED:
                raise KmsRejected(f"AWS KMS rejected the wrapped data key ({code})") from None
            if code in _UNAVAILABLE:
                raise KmsUnavailable(f"AWS KMS {operation} failed: {code}") from None
            raise KmsError(f"AWS KMS {operation} failed: {code}") from None
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
        ) as err:
            raise KmsUnavailable(f"AWS KMS unreachable: {type(err).__name__}") from None
        except botocore.exceptions.NoCredentialsError:
            raise KmsError("no AWS credentials (instance profile, environment or profile)") from None
