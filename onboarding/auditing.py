"""Every onboarding action goes to a hash-chained audit log (`service.security.audit.AuditLog`).

Several CLI processes may append to the same file, and each `AuditLog` chains from the tail it read when it
opened; so every event opens the log under an exclusive lock, appends, and closes. Fields never hold a
secret: `AuditLog.scrub` refuses anything shaped like a key or a token.
"""

from __future__ import annotations

import fcntl
import getpass
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from onboarding.errors import LocalFailure
from service.security.audit import AuditLog, AuditLogError

log = logging.getLogger(__name__)


def operator_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"operator:{user}"


class OnboardingAudit:
    """`check()` before anything changes; after that `record()` never raises: an action that changed Vault must
    still print its result (a new key's secret is shown once), so a line that cannot be written is a warning
    in the log (stderr for the CLI, the service log for the marketplace's listeners)."""

    def __init__(self, path: Path, actor: str | None = None) -> None:
        self.path = path
        self.actor = actor or operator_actor()

    def check(self) -> None:
        """LocalFailure (exit 7) when the log cannot be opened for writing: a directory, a read-only place, a
        file the service writes."""
        try:
            self._locked(lambda trail: None)
        except (OSError, AuditLogError) as err:
            raise LocalFailure(f"audit log {self.path}", f"cannot be written ({_why(err)}); nothing was changed: "
                               "fix the path (FORESIGHT_AUDIT_LOG) or its permissions") from None

    def record(
        self,
        action: str,
        *,
        outcome: Literal["success", "failure"] = "success",
        tenant: str | None = None,
        key_id: str | None = None,
        **details: Any,
    ) -> None:
        try:
            self._locked(lambda trail: trail.record(action, actor=self.actor, outcome=outcome, tenant=tenant,
                                                key_id=key_id, **details))
        except (OSError, AuditLogError) as err:
            log.warning("audit log %s: %s not recorded (%s)", self.path, action, _why(err))

    def _locked(self, write: Callable[[AuditLog], object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with AuditLog(self.path, fsync="always") as log:
                write(log)
        finally:
            os.close(fd)


def _why(err: Exception) -> str:
    return (err.strerror or type(err).__name__) if isinstance(err, OSError) else str(err)
