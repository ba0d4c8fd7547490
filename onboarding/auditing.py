"""Every onboarding action goes to a hash-chained audit log (`service.security.audit.AuditLog`).

Several CLI processes may append to the same file, and each `AuditLog` chains from the tail it read when it
opened; so every event opens the log under an exclusive lock, appends, and closes. Fields never hold a
secret: `AuditLog.scrub` refuses anything shaped like a key or a token.
"""

from __future__ import annotations

import fcntl
import getpass
import os
from pathlib import Path
from typing import Any, Literal

from service.security.audit import AuditLog


def operator_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"operator:{user}"


class OnboardingAudit:
    def __init__(self, path: Path, actor: str | None = None) -> None:
        self.path = path
        self.actor = actor or operator_actor()

    def record(
        self,
        action: str,
        *,
        outcome: Literal["success", "failure"] = "success",
        tenant: str | None = None,
        key_id: str | None = None,
        **details: Any,
    ) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with AuditLog(self.path, fsync="always") as log:
                log.record(action, actor=self.actor, outcome=outcome, tenant=tenant, key_id=key_id, **details)
        finally:
            os.close(fd)
