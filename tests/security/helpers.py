"""Small helpers shared by the security tests."""

from __future__ import annotations

import base64
import json
import secrets
import struct

import hvac


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def token_client(addr: str, root: hvac.Client, *policies: str) -> hvac.Client:
    """A client holding a fresh one-hour token with exactly `policies` (plus default)."""
    token = root.auth.token.create(policies=list(policies), ttl="1h")
    return hvac.Client(url=addr, token=token["auth"]["client_token"], timeout=2)


def replace_wrapped_blob(envelope: bytes, blob: bytes) -> bytes:
    """The envelope with a different wrapped DEK in an otherwise well-formed key block."""
    length = struct.unpack_from(">H", envelope, 15)[0]
    block = json.loads(envelope[17 : 17 + length])
    block["dek"] = base64.b64encode(blob).decode()
    new_block = json.dumps(block, sort_keys=True, separators=(",", ":")).encode()
    return envelope[:15] + struct.pack(">H", len(new_block)) + new_block + envelope[17 + length :]


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])
