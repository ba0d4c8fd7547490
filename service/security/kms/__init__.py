"""KMS providers behind one interface (`base.KmsProvider`), each in its own module.

`build_kms` imports only the provider asked for, so an AWS deployment never imports Google's or Azure's SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.security.kms.base import KmsError, KmsProvider, KmsRejected, KmsUnavailable, WrappedKey

__all__ = [
    "KmsError",
    "KmsProvider",
    "KmsRejected",
    "KmsSettings",
    "KmsUnavailable",
    "WrappedKey",
    "build_kms",
]


class KmsSettings(BaseModel):
    """Which KMS wraps data keys. `key` is provider-specific: see each field's description."""

    provider: Literal["vault-transit", "aws-kms", "gcp-kms", "azure-keyvault", "local"] = "vault-transit"
    key: str = Field(
        "foresight",
        description=(
            "vault-transit: transit key name; aws-kms: key id, ARN or alias/...; "
            "gcp-kms: CryptoKey resource name; "
            "azure-keyvault: key URL without version; local: path of the keyring file"
        ),
    )
    previous_keys: list[str] = Field(
        default_factory=list,
        description=(
            "Keys (same form as `key`, not local) whose envelopes may still be unwrapped, to rewrap them onto `key`; "
            "envelopes naming any other key are refused"
        ),
    )
    vault_mount: str = Field(default="transit", description="vault-transit: the transit mount.")
    aws_region: str | None = Field(None, description="aws-kms: region; default from the instance/environment.")
    aws_endpoint_url: str | None = Field(None, description="aws-kms: endpoint override (VPC endpoint, tests).")


def build_kms(settings: KmsSettings, *, vault_client: Any = None) -> KmsProvider:
    """The provider `settings` describe; vault-transit needs an authenticated hvac client."""
    if settings.provider == "vault-transit":
        from service.security.kms.vault_transit import VaultTransitKms

        if vault_client is None:
            raise KmsError("vault-transit needs a Vault client (configure Vault auth)")
        return VaultTransitKms(vault_client, settings.key, settings.vault_mount, previous=settings.previous_keys)
    if settings.provider == "aws-kms":
        from service.security.kms.aws import AwsKms

        return AwsKms(
            settings.key,
            region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            previous=settings.previous_keys,
        )
    if settings.provider == "gcp-kms":
        from service.security.kms.gcp import GcpKms

        return GcpKms(settings.key, previous=settings.previous_keys)
    if settings.provider == "azure-keyvault":
        from service.security.kms.azure import AzureKeyVaultKms

        return AzureKeyVaultKms(settings.key, previous=settings.previous_keys)
    from service.security.kms.local import LocalKms

    path = Path(settings.key)
    return LocalKms.from_file(path) if path.exists() else LocalKms.generate(path)
