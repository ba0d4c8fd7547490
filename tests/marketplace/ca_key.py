"""What every cloud's first boot must leave of the CA's private key: an envelope only the node's KMS key opens."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from marketplace.first_boot import CA_KEY_FILE, load_ca
from service.security.envelope import EnvelopeCipher
from service.security.kms.local import LocalKms

KEYRING = "kms-keyring.json"  # FORESIGHT_KMS_KEY_ID of a test node with FORESIGHT_KMS_PROVIDER=local


def local_cipher(keyring: Path) -> EnvelopeCipher:
    """The envelope cipher of `FORESIGHT_KMS_PROVIDER=local` with `FORESIGHT_KMS_KEY_ID=<keyring>`."""
    return EnvelopeCipher(LocalKms.from_file(keyring) if keyring.exists() else LocalKms.generate(keyring))


def assert_ca_key_sealed(conf: Path, cipher: EnvelopeCipher) -> None:
    """ca.key.enc is 0600 and opens with the node's KMS key to the key of ca.crt; no file in `conf` holds that key
    in any clear form (PEM, DER, or the bare scalar)."""
    sealed = conf / CA_KEY_FILE
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    key = load_ca(conf, cipher).key  # raises unless it is the key of ca.crt
    clear_forms = [
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        key.private_numbers().private_value.to_bytes(32, "big"),
    ]
    for path in conf.iterdir():
        data = path.read_bytes()
        assert not [form for form in clear_forms if form in data], f"the CA key is in clear in {path}"
    assert b"PRIVATE KEY" not in sealed.read_bytes()
