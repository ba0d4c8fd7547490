"""Turn Settings into the security parts a Service runs with: key source, Vault session, TLS, KMS, audit.

Each builder raises ConfigError with the setting to fix; the cloud and KMS SDKs are imported only for the
provider that is configured.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import ConfigError, Settings
from service.tenancy import FileKeySource, KeySource, TenantsFileError

if TYPE_CHECKING:
    from service.security.audit import AuditLog
    from service.security.envelope import EnvelopeCipher
    from service.security.tls import ServerTLS
    from service.security.vault_auth import VaultSession
    from service.security.vault_pki import VaultPkiCertificates

_KMS_PROVIDERS = {"vault-transit": "vault-transit", "aws": "aws-kms", "gcp": "gcp-kms", "azure": "azure-keyvault",
                  "local": "local"}


@dataclass
class SecurityParts:
    key_source: KeySource | None
    vault: VaultSession | None
    tls: ServerTLS | None
    pki: VaultPkiCertificates | None
    cipher: EnvelopeCipher | None
    audit: AuditLog | None

    def close(self) -> None:
        if self.vault is not None:
            self.vault.stop()
        if self.audit is not None:
            self.audit.close()


def build_vault_session(settings: Settings) -> VaultSession | None:
    """Log in to Vault with the configured method and keep the token renewed. Blocks."""
    if settings.vault_addr is None:
        return None
    from service.security.vault_auth import VaultAuthError, VaultAuthSettings, VaultSession

    auth = VaultAuthSettings(
        addr=settings.vault_addr,
        method=settings.vault_auth_method,
        mount=settings.vault_auth_mount,
        role=settings.vault_role,
        ca_cert=settings.vault_ca_file,
        token_file=settings.vault_token_file,
        role_id=settings.vault_role_id,
        secret_id_file=settings.vault_secret_id_file,
        aws_header_value=settings.vault_aws_header_value,
        aws_sts_region=settings.vault_aws_sts_region,
        gcp_audience=settings.vault_gcp_audience,
        azure_client_id=settings.vault_azure_client_id,
        jwt_source=settings.vault_jwt_source,
        jwt_file=settings.vault_jwt_file,
    )
    session = VaultSession(auth)
    try:
        session.start()
    except VaultAuthError as err:
        raise ConfigError(f"cannot log in to Vault at {settings.vault_addr} (FORESIGHT_VAULT_*): {err}") from None
    return session


def build_key_source(settings: Settings, vault: VaultSession | None) -> KeySource | None:
    if settings.dev:
        return None
    if vault is not None:
        from service.security.vault_source import VaultKeySource

        return VaultKeySource(vault.client, settings.vault_kv_mount, cache_ttl=settings.auth_cache_ttl_s / 2,
                              negative_ttl=settings.auth_cache_ttl_s / 2, stale_grace=settings.vault_stale_grace_s)
    assert settings.tenants_file is not None
    try:
        return FileKeySource(settings.tenants_file)
    except TenantsFileError as err:
        raise ConfigError(str(err)) from None


def build_pki(settings: Settings, vault: VaultSession | None) -> VaultPkiCertificates | None:
    """Certificates from Vault PKI, issued now into <data_dir>/tls and renewed while serving. Blocks."""
    if settings.tls_vault_pki_role is None:
        return None
    from service.security.vault_pki import VaultPkiCertificates, VaultPkiError

    assert vault is not None and settings.data_dir is not None
    names = [n for n in settings.tls_alt_names if not _is_ip(n)]
    pki = VaultPkiCertificates(vault.client, role=settings.tls_vault_pki_role, common_name=settings.tls_common_name,
                               directory=settings.data_dir / "tls", alt_names=names,
                               ip_sans=[n for n in settings.tls_alt_names if _is_ip(n)],
                               mount=settings.tls_vault_pki_mount)
    try:
        pki.issue()
    except VaultPkiError as err:
        raise ConfigError(f"TLS from Vault PKI (FORESIGHT_TLS_VAULT_PKI_*): {err}") from None
    return pki


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def build_tls(settings: Settings, pki: VaultPkiCertificates | None) -> ServerTLS | None:
    if not settings.tls_enabled:
        return None
    from service.security.tls import ServerTLS, TLSConfigError

    cert_file, key_file = (pki.cert_file, pki.key_file) if pki else (settings.tls_cert_file, settings.tls_key_file)
    assert cert_file is not None and key_file is not None
    try:
        return ServerTLS(cert_file, key_file, client_ca_file=settings.tls_client_ca_file,
                         require_client_cert=settings.tls_require_client_cert)
    except TLSConfigError as err:
        raise ConfigError(f"TLS (FORESIGHT_TLS_*): {err}") from None


def build_cipher(settings: Settings, vault: VaultSession | None) -> EnvelopeCipher | None:
    if settings.kms_provider == "none":
        return None
    from service.security.envelope import EnvelopeCipher
    from service.security.kms import KmsError, KmsSettings, build_kms

    kms_settings = KmsSettings(provider=_KMS_PROVIDERS[settings.kms_provider], key=settings.kms_key_id,
                               previous_keys=settings.kms_previous_key_ids, aws_endpoint_url=settings.kms_endpoint_url)
    try:
        return EnvelopeCipher(build_kms(kms_settings, vault_client=vault.client if vault else None))
    except KmsError as err:
        raise ConfigError(f"KMS (FORESIGHT_KMS_*): {err}") from None


def check_local_keyring(settings: Settings) -> None:
    """Refuse a local keyring that does not exist: build_kms makes a new one there, right for a service's first
    start and useless to a command that must open what an existing keyring wrapped."""
    if settings.kms_provider == "local" and not Path(settings.kms_key_id).is_file():
        raise ConfigError(f"local keyring {settings.kms_key_id} (FORESIGHT_KMS_KEY_ID) does not exist")


@contextmanager
def offline_cipher(settings: Settings) -> Iterator[EnvelopeCipher | None]:
    """The service's cipher for a command that works on its files while it is stopped (kms rewrap, audit verify),
    with the Vault session that transit needs, stopped on the way out."""
    check_local_keyring(settings)
    vault = build_vault_session(settings) if settings.kms_provider == "vault-transit" else None
    try:
        yield build_cipher(settings, vault)
    finally:
        if vault is not None:
            vault.stop()


def build_audit(settings: Settings, cipher: EnvelopeCipher | None) -> AuditLog | None:
    path = settings.audit_path
    if path is None:
        return None
    from service.security.audit import AuditLog
    from service.security.audit_shipping import AuditShipper

    shipper = None
    if settings.audit_ship_url:
        try:
            shipper = AuditShipper(settings.audit_ship_url)
        except (ImportError, ValueError) as err:  # an unknown scheme, or its filesystem package not installed
            raise ConfigError(f"FORESIGHT_AUDIT_SHIP_URL={settings.audit_ship_url!r}: {err}") from None
    try:
        return AuditLog(path, archive=cipher, rotate_bytes=settings.audit_rotate_mb * 1024 * 1024,
                        keep_files=settings.audit_keep_files or None, shipper=shipper)
    except OSError as err:
        raise ConfigError(f"audit log {path} (FORESIGHT_AUDIT_LOG): {err.strerror}") from None


def build_security(settings: Settings) -> SecurityParts:
    """Everything security-related, in dependency order; a failure releases what was already built."""
    problems = [] if settings.dev else settings.production_problems()
    if problems:
        raise ConfigError("refusing to start outside dev mode:\n  " + "\n  ".join(problems))
    vault = build_vault_session(settings)
    try:
        key_source = build_key_source(settings, vault)
        pki = build_pki(settings, vault)
        tls = build_tls(settings, pki)
        cipher = build_cipher(settings, vault)
        audit = build_audit(settings, cipher)
    except BaseException:
        if vault is not None:
            vault.stop()
        raise
    return SecurityParts(key_source, vault, tls, pki, cipher, audit)
