"""Tenant creations in flight, so that none is left half-done.

`tenants create` notes the tenant here before writing to Vault and removes the note when it finishes or has
rolled back. A note survives when the rollback itself failed (Vault went away half-way) or the process died;
the next command that reaches Vault (`recover`) finishes the rollback. Notes of a creation still running in
another process are left alone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from onboarding.errors import LocalFailure
from onboarding.local.processes import is_alive, start_time
from service.validation import first_problem

log = logging.getLogger(__name__)


class _Note(TypedDict):
    tenant: str
    vault_addr: str
    pid: int
    start_time: int | None
    started: float
    rollback_pending: bool


_NOTES = TypeAdapter(list[_Note])


class Journal:
    def __init__(self, path: Path, vault_addr: str) -> None:
        self.path = path
        self.vault_addr = vault_addr

    def begin(self, tenant: str) -> None:
        with self._entries() as entries:
            entries.append({
                "tenant": tenant,
                "vault_addr": self.vault_addr,
                "pid": os.getpid(),
                "start_time": start_time(os.getpid()),
                "started": time.time(),
                "rollback_pending": False,
            })

    def done(self, tenant: str) -> None:
        with self._entries() as entries:
            entries[:] = [e for e in entries if not self._is(e, tenant)]

    def rollback_pending(self, tenant: str) -> None:
        """The rollback failed: any later command may finish it."""
        with self._entries() as entries:
            for entry in entries:
                if self._is(entry, tenant):
                    entry["rollback_pending"] = True

    def pending(self) -> list[str]:
        """Tenants of this Vault whose creation must be rolled back: failed, or their process died."""
        with self._entries() as entries:
            return [
                e["tenant"]
                for e in entries
                if e["vault_addr"] == self.vault_addr
                and (e["rollback_pending"] or not is_alive(e["pid"], e["start_time"]))
            ]

    def recover(self, rollback: Callable[[str], None]) -> list[str]:
        """Roll back every pending creation; those whose rollback fails stay for next time."""
        finished = []
        for tenant in self.pending():
            try:
                rollback(tenant)
            except Exception as err:  # Vault still away: the note stays
                log.info("rollback of tenant %s still pending: %s", tenant, type(err).__name__)
                continue
            self.done(tenant)
            finished.append(tenant)
        return finished

    def _is(self, entry: _Note, tenant: str) -> bool:
        return bool(entry["tenant"] == tenant and entry["vault_addr"] == self.vault_addr)

    @contextmanager
    def _entries(self) -> Iterator[list[_Note]]:
        """The notes, under an exclusive lock (on a file of its own, so the notes can be replaced whole); changes
        made to the list are written to a new file that then replaces the old, so a process killed while writing
        leaves the old notes, never half of the new."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                text = ""
            try:
                entries: list[_Note] = _NOTES.validate_json(text) if text.strip() else []
            except ValidationError as err:
                raise LocalFailure(f"tenant creations in flight ({self.path})", f"not a list of notes "
                                   f"({first_problem(err, 'the file')}); fix or remove the file") from None
            before = list(map(dict, entries))
            yield entries
            if entries != before:
                fresh = self.path.with_name(self.path.name + ".new")
                fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as file:
                    file.write(json.dumps(entries))
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(fresh, self.path)
        finally:
            os.close(lock)
