"""A daemon thread that runs one piece of work each time it is woken, for work that must not hold up its caller.

The audit log has two: one archives rotated files (local disk and the KMS), one ships them to a bucket. They are
apart so that a copy hung on a partitioned network never leaves later files unencrypted, and so that a shutdown
can wait for the first without waiting on the second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class WakeableThread:
    """Runs `work` after each `wake()` (wakes during a pass make one more pass), and again every `retry_s()`
    seconds while that returns a number; started at the first wake, stopped by `close()` after a last pass."""

    def __init__(self, name: str, work: Callable[[], None], retry_s: Callable[[], float | None] = lambda: None) -> None:
        self.name = name
        self._work, self._retry_s = work, retry_s
        self._wanted = threading.Event()
        self._guard = threading.Lock()  # a wake racing close() either starts the thread before, or not at all
        self._thread: threading.Thread | None = None
        self._closing = False

    def wake(self) -> None:
        self._wanted.set()
        with self._guard:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def close(self, timeout: float | None = None) -> bool:
        """Let the pass the last wake asked for finish, then stop; False when it is still running after `timeout`
        seconds (it is left to finish alone: a daemon thread does not keep the process alive)."""
        with self._guard:
            self._closing = True
            thread = self._thread
        if thread is None:
            return True
        self._wanted.set()
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wanted.wait(self._retry_s())
            self._wanted.clear()
            try:
                self._work()
            except Exception:  # e.g. the disk refusing the audit.pruned line: the next wake tries again
                log.exception("%s: a pass failed; the next one retries", self.name)
            if self._closing and not self._wanted.is_set():
                return
