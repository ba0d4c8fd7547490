"""Onboarding: `foresight tenants`, `foresight keys` and `foresight local` (the whole product on one machine).

`tenants`/`keys` drive Vault (the store of tenants and key hashes, through `VaultKeyAdmin`) and the service's
admin API; `local` starts an OpenBao, a CA, the service and a demo tenant under a state directory, and the
other commands find that deployment there without flags.
"""
