"""The admin credential: a bearer token of its own shape, so a tenant key can never pass for it."""

from __future__ import annotations

import hmac
import secrets

from service.security.apikeys import hash_key

PREFIX = "fsadm_"


def new_admin_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def is_admin_token(token: str) -> bool:
    return token.startswith(PREFIX)


def verify_admin_token(token: str, stored_hash: str) -> bool:
    """Constant-time check of a presented admin token against its stored hash."""
    return is_admin_token(token) and hmac.compare_digest(hash_key(token).encode(), stored_hash.encode())
