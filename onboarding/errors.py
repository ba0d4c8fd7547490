"""Errors the onboarding commands turn into one line and an exit code (documented in docs/onboarding.md)."""

from __future__ import annotations

from service.security.vault_keys import (
    KeyNotActive,
    KeyNotFound,
    TenantExists,
    TenantNotFound,
    VaultKeyStoreError,
    VaultUnavailable,
)

EXIT_OK = 0
EXIT_FAILURE = 1  # unexpected failure, or a confirmation declined
EXIT_USAGE = 2  # invalid name, unknown plan, bad option (also Typer's own usage errors)
EXIT_NOT_FOUND = 3  # no such tenant, key or local deployment
EXIT_CONFLICT = 4  # the tenant already exists; the key is not active
EXIT_VAULT = 5  # Vault unreachable, sealed, or the token lacks permission
EXIT_SERVICE = 6  # the service's admin API unreachable or refusing
EXIT_LOCAL = 7  # the local deployment cannot start (port busy, a process died) or its state is damaged
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (kill, systemd, CI): the same clean-up as Ctrl-C


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it stops what it started exactly as for Ctrl-C."""


class OnboardingError(Exception):
    """A failure the user can act on: `what` failed because `why`."""

    exit_code = EXIT_FAILURE

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")
        self.what, self.why = what, why


class InvalidInput(OnboardingError):
    exit_code = EXIT_USAGE


class NotFound(OnboardingError):
    exit_code = EXIT_NOT_FOUND


class Conflict(OnboardingError):
    exit_code = EXIT_CONFLICT


class VaultFailure(OnboardingError):
    exit_code = EXIT_VAULT


class ServiceFailure(OnboardingError):
    exit_code = EXIT_SERVICE


class LocalFailure(OnboardingError):
    exit_code = EXIT_LOCAL


def from_key_store(what: str, err: VaultKeyStoreError) -> OnboardingError:
    """The onboarding error for a key-store error (its message already names the tenant or key)."""
    why = str(err)
    if isinstance(err, TenantNotFound | KeyNotFound):
        return NotFound(what, why)
    if isinstance(err, TenantExists | KeyNotActive):
        return Conflict(what, why)
    if isinstance(err, VaultUnavailable):
        return VaultFailure(what, why)
    if "permission" in why or "Vault said" in why:
        return VaultFailure(what, why)
    return InvalidInput(what, why) if "invalid tenant name" in why or "scopes" in why else OnboardingError(what, why)
