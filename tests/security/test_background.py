"""WakeableThread: the audit log's archiver and shipper. A wake is never lost, a pass never runs twice at once,
close() makes the last pass asked for and is bounded when that pass hangs."""

from __future__ import annotations

import threading
import time

import pytest

from service.security.background import WakeableThread


def test_a_wake_during_a_pass_gets_one_more_pass_and_close_waits_for_it() -> None:
    started, release = threading.Event(), threading.Event()
    passes: list[int] = []
    running = threading.Lock()

    def work() -> None:
        assert running.acquire(blocking=False), "two passes at once"
        try:
            passes.append(len(passes))
            started.set()
            release.wait(5)
        finally:
            running.release()

    worker = WakeableThread("test-worker", work)
    worker.wake()
    assert started.wait(5)
    worker.wake()  # during the first pass: not lost
    worker.wake()  # nor doubled
    closed: list[bool] = []
    closer = threading.Thread(target=lambda: closed.append(worker.close(5)))
    closer.start()
    time.sleep(0.1)  # close() is waiting on the first pass
    release.set()
    closer.join(10)
    assert closed == [True]
    assert passes == [0, 1]  # the first, then one more for the wakes and close() together


def test_close_before_any_wake_starts_nothing_and_a_later_wake_does_not_either() -> None:
    passes: list[str] = []
    worker = WakeableThread("test-idle", lambda: passes.append("ran"))
    assert worker.close(1)
    worker.wake()
    time.sleep(0.1)
    assert passes == [] and not [t for t in threading.enumerate() if t.name == "test-idle"]


def test_close_gives_up_on_a_pass_that_hangs_and_says_so() -> None:
    hang = threading.Event()
    worker = WakeableThread("test-hung", lambda: hang.wait(30))
    worker.wake()
    began = time.monotonic()
    assert worker.close(0.2) is False
    assert time.monotonic() - began < 2
    hang.set()


def test_retry_s_runs_passes_without_wakes_while_it_returns_a_number() -> None:
    passes: list[float] = []
    worker = WakeableThread("test-retry", lambda: passes.append(time.monotonic()),
                            retry_s=lambda: 0.05 if len(passes) < 4 else None)
    worker.wake()
    deadline = time.monotonic() + 5
    while len(passes) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(passes) == 4  # one woken, three retried, then it waits for a wake
    assert worker.close(5) and len(passes) == 5


def test_a_failing_pass_is_logged_and_the_next_wake_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk full")

    worker = WakeableThread("test-failing", work)
    worker.wake()
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.close(5) and len(calls) == 2
    assert any("test-failing: a pass failed" in r.message for r in caplog.records)
