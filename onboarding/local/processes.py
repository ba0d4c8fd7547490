"""Background processes owned by a state directory: start detached, find by pid file, stop cleanly.

A pid file holds the pid *and* the process's start time (from /proc), so a pid reused by an unrelated
process after a reboot or crash is never mistaken for ours, and never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

STOP_TIMEOUT_S = 10.0  # SIGTERM to SIGKILL, for a process without a stop budget of its own (OpenBao)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it does not exist (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing parenthesis
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def is_alive(pid: int, started: int | None) -> bool:
    """True if `pid` runs and is the same process that started at `started` (when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: not ours
    if _is_zombie(pid):
        return False
    return started is None or start_time(pid) in (None, started)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].startswith("Z")


@dataclass(frozen=True)
class ManagedProcess:
    """One long-running process of the deployment, identified by its pid file."""

    name: str
    pid_file: Path
    log_file: Path

    def read_pid(self) -> tuple[int, int | None] | None:
        try:
            record = json.loads(self.pid_file.read_text())
            return int(record["pid"]), record.get("start_time")
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def pid(self) -> int | None:
        """The pid if the process runs, else None."""
        record = self.read_pid()
        if record is None or not is_alive(*record):
            return None
        return record[0]

    def start(
        self, argv: list[str], env: Mapping[str, str], cwd: Path | None = None, fingerprint: str | None = None
    ) -> int:
        """Start detached (own session, output to the log file) and record the pid (and `fingerprint`, a
        digest of the configuration it started with)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log_offset = log.seek(0, os.SEEK_END)  # where this run's output begins: `log_tail` shows only it
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,  # survives the CLI; Ctrl-C in the terminal does not reach it
            )
        try:
            record = {"pid": proc.pid, "start_time": start_time(proc.pid), "fingerprint": fingerprint,
                      "log_offset": log_offset}
            self.pid_file.write_text(json.dumps(record))
        except BaseException:  # interrupted before its pid file exists: no clean-up could find it later
            proc.kill()
            proc.wait()
            raise
        return proc.pid

    def fingerprint(self) -> str | None:
        """The configuration digest the running process started with; None if not running or not recorded."""
        if self.pid() is None:
            return None
        try:
            value = json.loads(self.pid_file.read_text()).get("fingerprint")
        except (FileNotFoundError, ValueError):
            return None
        return str(value) if value else None

    def exited_early(self) -> bool:
        """True if the recorded process is gone (it started and died)."""
        return self.read_pid() is not None and self.pid() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM, wait up to `timeout`, then SIGKILL. True if a running process was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            _reap(pid)
            time.sleep(0.05)
        if self.pid() is not None:
            _signal(pid, signal.SIGKILL)
            while self.pid() is not None:
                _reap(pid)
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the recorded run wrote (not an earlier run's, which the log also holds)."""
        try:
            offset = int(json.loads(self.pid_file.read_text()).get("log_offset", 0))
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            offset = 0
        try:
            with open(self.log_file, "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child (started by this same CLI run)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
