"""Server-side TLS for the RESP and HTTP listeners: TLS 1.2+, optional client certificates, hot reload.

`ServerTLS.context` is the one context both listeners serve. Each certificate rotation loads the new pair
into a *fresh* context, and the listeners' context hands every new handshake over to the newest one (its
SNI callback, which OpenSSL runs for every ClientHello, with or without SNI), so new handshakes present the
new certificate and established connections carry on undisturbed. A fresh context per pair matters: loading
an ECDSA pair into a context that holds an RSA one only fills the ECDSA slot, and clients that can only do
RSA would go on getting the old certificate. A pair that does not load cleanly (a half-written rotation: new
certificate, old key) is skipped until both files are in place.

Threading: OpenSSL does not promise that changing a context is safe while another thread starts a
connection from it, so reloads run on the event loop that serves the listeners (`watch()` is a coroutine
for exactly that). If RESP and HTTP run on different loops, give each its own `ServerTLS`.

Certificates come from files (`cert_file`, `key_file`), which an operator, cert-manager or
`vault_pki.VaultPkiCertificates` keeps fresh; the watcher notices new contents within `interval` seconds.
The client CA file (mTLS) is read once: changing it needs a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import ssl
import stat
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are OpenSSL's defaults (all strong).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TLSConfigError(ValueError):
    """The TLS settings or files cannot make a working server context; the message names the file."""


class ServerTLS:
    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        client_ca_file: Path | None = None,
        require_client_cert: bool = False,
    ) -> None:
        """Build the context and load the pair; raises TLSConfigError if it cannot. Blocks (file reads).

        `client_ca_file`: CAs whose client certificates are accepted (mTLS). With `require_client_cert`,
        a handshake without a valid client certificate fails; without it, a client certificate is optional
        but verified when presented.
        """
        if require_client_cert and client_ca_file is None:
            raise TLSConfigError("require_client_cert needs client_ca_file (the CA that signs client certificates)")
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.client_ca_file = Path(client_ca_file) if client_ca_file else None
        self.require_client_cert = require_client_cert
        self._client_ca = self._read_client_ca()
        self.context = self._new_context()  # what the listeners hold; hands each handshake to `_current`
        self.context.sni_callback = self._select
        self._current: ssl.SSLContext | None = None
        self._loaded_digest = ""
        self._failed_digest = ""
        self.reloads = 0
        # When the served certificate expires (Unix time; None if it cannot be read): the metric operators alert
        # on, since renewal (fetch_tls.py, VaultPkiCertificates) happens outside this process.
        self.not_after: float | None = None
        if not self.reload():
            raise TLSConfigError(f"cannot load TLS certificate {self.cert_file} with key {self.key_file}")

    def reload(self) -> bool:
        """Load the pair into the live context if the files changed and form a valid pair. Blocks briefly.

        Returns True when a new pair went live. Call it on the event loop thread that serves connections.
        """
        try:
            cert, key = self.cert_file.read_bytes(), self.key_file.read_bytes()
        except OSError as err:
            self._note_failure(f"unreadable:{err}", f"cannot read TLS files: {err.strerror} ({err.filename})")
            return False
        digest = hashlib.sha256(cert + b"\x00" + key).hexdigest()
        if digest == self._loaded_digest:
            return False
        self._warn_if_key_readable_by_others()
        scratch = tempfile.mkdtemp(prefix="foresight-tls-")
        try:
            cert_copy, key_copy = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
            cert_copy.write_bytes(cert)
            key_copy.touch(mode=0o600)
            key_copy.write_bytes(key)
            fresh = self._new_context()
            try:
                fresh.load_cert_chain(cert_copy, key_copy)
            except (ssl.SSLError, ValueError) as err:
                self._note_failure(
                    digest,
                    f"TLS pair {self.cert_file} / {self.key_file} does not load ({err.__class__.__name__}); "
                    "keeping the current certificate",
                )
                return False
            if self._current is None:
                self.context.load_cert_chain(cert_copy, key_copy)  # the first pair: the listeners' own
            self._current = fresh
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if self._loaded_digest:
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self.cert_file)
        self._loaded_digest, self._failed_digest = digest, ""
        self.not_after = _not_after(cert)
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever the files change; run as a task on the listeners' event loop, cancel to stop."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload()
            except Exception:  # the watcher must outlive any one bad rotation
                log.exception("TLS reload failed; keeping the current certificate")

    def _select(self, ssl_object: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None,
                _context: ssl.SSLContext) -> None:
        """Start this handshake on the newest pair's context."""
        current = self._current
        if current is not None and ssl_object.context is not current:
            ssl_object.context = current

    def _new_context(self) -> ssl.SSLContext:
        """A server context with the service's TLS policy and client CA, and no certificate yet."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(TLS12_CIPHERS)
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
        if self._client_ca is not None:
            context.load_verify_locations(cadata=self._client_ca)
            context.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
        return context

    def _read_client_ca(self) -> str | None:
        if self.client_ca_file is None:
            return None
        try:
            cadata = self.client_ca_file.read_text()
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=cadata)
        except (OSError, ValueError, ssl.SSLError) as err:
            raise TLSConfigError(f"cannot load client CA file {self.client_ca_file}: {err}") from None
        return cadata

    def _note_failure(self, digest: str, message: str) -> None:
        if digest != self._failed_digest:  # say it once per bad state, not every second
            log.error(message)
            self._failed_digest = digest

    def _warn_if_key_readable_by_others(self) -> None:
        mode = self.key_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("TLS key %s is readable by group or others (mode %o); use 0600", self.key_file, mode & 0o777)


def peer_common_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The verified client certificate's subject CN (mTLS), or None without one."""
    cert: Any = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                return str(value)
    return None


def client_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """A client context trusting `ca_file`, with a client certificate if given (mTLS); for tools, tests."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def _not_after(chain: bytes) -> float | None:
    """The expiry of the file's first certificate, the one served (the rest is its chain)."""
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(chain).not_valid_after_utc.timestamp()
    except ValueError:
        return None
