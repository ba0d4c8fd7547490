"""One tenant's prefetch engine: access log in, prefetches out.

The service records every GET in the access log (cheap: a sampled append to a ring) and runs `run()` as a
background task. The worker drains the log, settles earlier prefetches, asks the prefetcher for proposals in
one batch on a worker thread (torch never runs on the event loop), and lets the coordinator issue them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import Hashable
from typing import Any

from service.prefetch.access_log import DEFAULT_CAPACITY, AccessLog
from service.prefetch.base import Predictions, Prefetcher
from service.prefetch.coordinator import PrefetchBudget, PrefetchCoordinator, PrefetchTarget
from service.prefetch.keys import KeyCodec
from service.prefetch.mlops.drift import DriftDetector

log = logging.getLogger(__name__)


class PrefetchEngine:
    def __init__(
        self,
        target: PrefetchTarget,
        prefetcher: Prefetcher,
        budget: PrefetchBudget | None = None,
        log_capacity: int = DEFAULT_CAPACITY,
        sample_every: int = 1,
        codec: KeyCodec | None = None,
    ) -> None:
        self.prefetcher = prefetcher
        self.codec = codec or KeyCodec()
        self.log = AccessLog(log_capacity, sample_every)
        self.recorders = self.log.recorders()  # what the service's read path calls with the key: (hit, miss)
        self.coordinator = PrefetchCoordinator(target, budget or PrefetchBudget(), decode=self._decode)
        self.drift = DriftDetector()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._stopped = asyncio.Event()
        self._last_used = 0
        self._last_settled = 0
        # Held while the prefetcher runs; checkpointing takes it too, so weights never change mid-batch.
        self.model_lock = threading.Lock()
        self.steps = 0
        self.step_seconds = 0.0  # time spent predicting (and training), for the model-latency metric

    def _decode(self, ident: int) -> Hashable:
        return self.codec.decode(ident)

    def on_access(self, key: bytes, hit: bool) -> None:
        """Record one read; the service calls `recorders` directly, which skips this frame."""
        self.log.append(key, hit)

    def step(self) -> list[tuple[Hashable, Predictions]]:
        """Drain the log and compute proposals (blocking: run it off the event loop)."""
        batch = self.log.drain()
        if not batch:
            return []
        coordinator = self.coordinator
        for key, hit in batch:
            coordinator.on_access(key, hit)
        self._check_drift()
        ids = [self.codec.encode(key) for key, _ in batch]  # type: ignore[arg-type]
        started = time.perf_counter()
        with self.model_lock:
            proposals = self.prefetcher.access_batch(ids)
        self.step_seconds += time.perf_counter() - started
        self.steps += 1
        return [(key, props) for (key, _), props in zip(batch, proposals, strict=True)]

    def issue(self, proposals: list[tuple[Hashable, Predictions]]) -> int:
        """Hand proposals to the coordinator (on the event loop); returns how many prefetches started."""
        started = 0
        for _, props in proposals:
            if not props:
                continue
            for key, result in self.coordinator.consider(props):
                started += 1
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(functools.partial(self._done, key=key))
                else:
                    self.coordinator.completed(key)
        return started

    def _done(self, task: asyncio.Future[Any], *, key: Hashable) -> None:
        self._tasks.discard(task)
        self.coordinator.completed(key)
        if not task.cancelled() and task.exception() is not None:
            log.debug("prefetch of %r failed: %s", key, task.exception())

    def _check_drift(self) -> None:
        """Feed newly settled prefetches to the drift detector; retrain the learned model on drift."""
        stats = self.coordinator.stats
        settled = stats.used + stats.late + stats.wasted
        used = stats.used
        drifted = False
        for i in range(settled - self._last_settled):
            drifted |= self.drift.update(1.0 if i < used - self._last_used else 0.0)
        self._last_settled, self._last_used = settled, used
        retrain = getattr(self.prefetcher, "retrain", None)
        if drifted and retrain is not None:
            log.info("prefetch accuracy drifted to %.3f; retraining", self.drift.recent)
            retrain()

    async def run(self, interval: float = 0.002) -> None:
        """The background worker; returns after `stop()`."""
        while not self._stopped.is_set():
            proposals = await asyncio.to_thread(self.step)
            if proposals:
                self.issue(proposals)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), timeout=interval)

    def stop(self) -> None:
        self._stopped.set()
        for task in list(self._tasks):
            task.cancel()
