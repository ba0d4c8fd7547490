"""Server certificates issued by Vault's PKI engine, written to files that `tls.ServerTLS` watches.

The issue call returns a fresh private key each time; it is written mode 0600 before the certificate, both
atomically, so the watcher never loads a certificate whose key is not yet in place. Renewal happens when
less than `renew_fraction` of the certificate's lifetime is left. Needs `update` on ``<mount>/issue/<role>``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from service.security.local_ca import write_private

log = logging.getLogger(__name__)


class VaultPkiError(RuntimeError):
    """Vault would not issue the certificate; the message says which role and mount."""


class VaultPkiCertificates:
    def __init__(
        self,
        client: Any,
        *,
        role: str,
        common_name: str,
        directory: Path,
        alt_names: Sequence[str] = (),
        ip_sans: Sequence[str] = (),
        ttl: str = "72h",
        mount: str = "pki",
        renew_fraction: float = 1 / 3,
    ) -> None:
        self.client = client
        self.role, self.common_name, self.mount, self.ttl = role, common_name, mount, ttl
        self.alt_names, self.ip_sans = list(alt_names), list(ip_sans)
        self.directory = Path(directory)
        self.renew_fraction = renew_fraction

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.crt"

    @property
    def key_file(self) -> Path:
        return self.directory / "server.key"

    @property
    def ca_file(self) -> Path:
        """The issuing CA chain, for clients (`redis-cli --tls --cacert`)."""
        return self.directory / "ca.crt"

    def issue(self) -> x509.Certificate:
        """Issue a certificate now and write key, certificate (with chain) and CA files. Blocks."""
        params: dict[str, Any] = {"ttl": self.ttl}
        if self.alt_names:
            params["alt_names"] = ",".join(self.alt_names)
        if self.ip_sans:
            params["ip_sans"] = ",".join(self.ip_sans)
        try:
            reply = self.client.secrets.pki.generate_certificate(
                name=self.role, common_name=self.common_name, extra_params=params, mount_point=self.mount
            )
        except Exception as err:  # hvac raises one class per status; all mean "not issued"
            raise VaultPkiError(
                f"Vault PKI {self.mount}/issue/{self.role} refused {self.common_name!r}: {type(err).__name__}"
            ) from None
        data = reply["data"]
        chain = data.get("ca_chain") or [data["issuing_ca"]]
        self.directory.mkdir(parents=True, exist_ok=True)
        write_private(self.key_file, data["private_key"].encode() + b"\n")
        write_private(self.cert_file, "\n".join([data["certificate"], *chain]).encode() + b"\n", mode=0o644)
        write_private(self.ca_file, "\n".join(chain).encode() + b"\n", mode=0o644)
        cert = x509.load_pem_x509_certificate(data["certificate"].encode())
        log.info(
            "issued TLS certificate serial %x for %s, valid until %s",
            cert.serial_number,
            self.common_name,
            cert.not_valid_after_utc.isoformat(),
        )
        return cert

    def needs_renewal(self, now: dt.datetime | None = None) -> bool:
        """True if there is no certificate yet or less than `renew_fraction` of its lifetime is left."""
        try:
            cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        except (OSError, ValueError):
            return True
        now = now or dt.datetime.now(dt.UTC)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        return cert.not_valid_after_utc - now < lifetime * self.renew_fraction

    def renew_if_needed(self) -> bool:
        """Issue a new certificate if `needs_renewal`; True if it did. Blocks."""
        if not self.needs_renewal():
            return False
        self.issue()
        return True

    async def keep_fresh(self, check_interval: float = 60.0) -> None:
        """Renew in a worker thread whenever due; a failure is logged and retried next interval.

        Any failure, not only Vault's (a full or read-only disk, a reply missing a field): nothing watches this
        task, so if it ended the certificate would expire unnoticed and every TLS handshake would fail."""
        while True:
            try:
                await asyncio.to_thread(self.renew_if_needed)
            except VaultPkiError as err:
                log.error("%s; will retry in %.0fs", err, check_interval)
            except Exception as err:
                log.error("TLS certificate renewal failed (%s: %s); will retry in %.0fs",
                          type(err).__name__, _cause(err), check_interval)
            await asyncio.sleep(check_interval)


def _cause(err: Exception) -> str:
    """What went wrong: an OSError names its file, a KeyError the field Vault's reply lacks."""
    if isinstance(err, OSError) and err.filename:
        return f"{err.strerror or err}: {err.filename}"
    if isinstance(err, KeyError):
        return f"Vault's reply has no {err.args[0]!r}"
    return str(err)[:200]
