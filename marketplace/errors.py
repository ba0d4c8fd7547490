"""Failures of a marketplace integration, with the exit codes of docs/onboarding.md (listed for these commands
in docs/marketplace-aws.md)."""

from __future__ import annotations

from onboarding.errors import EXIT_CONFLICT, EXIT_LOCAL, EXIT_SERVICE, OnboardingError


class MarketplaceFailure(OnboardingError):
    """The marketplace's APIs (or its identity provider) could not be reached or refused the call."""

    exit_code = EXIT_SERVICE


class NotEntitled(OnboardingError):
    """The purchase is entitled to no plan this service offers (not paid yet, ended, or an unmapped plan)."""

    exit_code = EXIT_CONFLICT


class CannotListen(OnboardingError):
    """`serve` cannot listen on its --host and --port: the port is busy, or needs privileges this process lacks."""

    exit_code = EXIT_LOCAL
