"""API key format and hashing, shared by the service (which verifies) and onboarding (which issues).

A key reads `fsk_<key id>_<secret>`: the key id is public, so logs and audit lines can name a key without
revealing it; the secret carries 256 random bits. Only a hash is ever stored. A fast hash is the right
choice here: with 256 bits of entropy nothing can be brute-forced, and a slow KDF would put milliseconds
on every AUTH.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "fsk"
_KEY_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_KEY_RE = re.compile(r"fsk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")
_HASH_DOMAIN = b"foresight-apikey-v1\x00"
_KEY_LIKE = re.compile(rf"{PREFIX}_[A-Za-z0-9_-]+")  # a key, or part of one: what a message must never repeat


class MalformedKey(ValueError):
    """The string is not shaped like a Foresight API key."""


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key_id: str
    secret: str  # the whole key string, shown once

    @property
    def key_hash(self) -> str:
        return hash_key(self.secret)


def new_key() -> IssuedKey:
    """A fresh key: 60-bit public id, 256-bit secret."""
    key_id = "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(12))
    return IssuedKey(key_id=key_id, secret=f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}")


def key_id_of(api_key: str) -> str:
    """The public key id inside a key; raises MalformedKey without echoing the input."""
    match = _KEY_RE.fullmatch(api_key)
    if match is None:
        raise MalformedKey("not a Foresight API key (expected fsk_<key id>_<secret>)")
    return match.group(1)


def redact_keys(text: str) -> str:
    """`text` with anything shaped like a key, whole or cut, replaced: for messages that quote what was typed."""
    return _KEY_LIKE.sub(f"{PREFIX}_(a key, not shown)", text)


def hash_key(api_key: str) -> str:
    """The stored form of a key."""
    return "sha256:" + hashlib.sha256(_HASH_DOMAIN + api_key.encode()).hexdigest()


def verify_key(api_key: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented key against a stored hash."""
    return hmac.compare_digest(hash_key(api_key).encode(), stored_hash.encode())
