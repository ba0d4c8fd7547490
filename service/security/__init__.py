"""Security primitives: API keys, key sources, TLS, KMS envelope encryption and the audit log."""
