"""One tenant's prefetch engine: access log in, prefetches out.

The service records every GET in the access log (cheap: a sampled append to a ring) and runs `run()` as a
background task. The worker drains the log, settles earlier prefetches, asks the prefetcher for proposals on a
worker thread (torch never runs on the event loop), and lets the coordinator issue them on the event loop, a
chunk at a time as the thread predicts them (under load a whole step is thousands of reads).

The worker thread shares the interpreter lock with the event loop, and the learned prefetcher costs 55-85
us of CPU per access (features, training, inference, its baselines and shadow caches, mostly Python):
unbounded, a busy tenant's worker took 40 % of the process and halved GET throughput. So the service runs
the learned prefetcher in a child process (`isolated.py`); every worker draws on two process-wide
`CpuBudget`s, one for the CPU its thread spends under the lock and one for what its child computes (a child
takes a core, not the lock, so where cores are spare it may take more); a step predicts for at most
`max_batch` of the newest accesses (older ones are still settled, just not predicted from: the log becomes a
sample under load), the step gives the lock back between chunks, and a worker that is behind steps at most
every `busy_interval`. A worker that is behind also records only the reads it settles and predicts from
(`windows.py`). For a prefetcher with arms (the learned one) the engine also answers with a stride prefetcher of
its own, issued when the prefetcher's answers come late and score worse live, or when a duel on the real cache
finds them used more (`answers.py`). Where stride answers are issued, the engine tunes how far ahead they aim
from what the cache used (`lead.py`). Of all it issues, it counts apart the prefetches the learned model made
itself (`NetworkBooks`): its checkpoints are judged on those. A worker whose steps keep failing backs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from service.prefetch.access_log import DEFAULT_CAPACITY, AccessLog
from service.prefetch.answers import FAST, MODEL, AnswerSources
from service.prefetch.base import Predictions, Prefetcher
from service.prefetch.coordinator import PrefetchBudget, PrefetchCoordinator, PrefetchTarget
from service.prefetch.keys import KeyCodec
from service.prefetch.lead import MAX_LEAD, LeadTuner
from service.prefetch.mlops.drift import DriftDetector
from service.prefetch.shadow import NO_PREFETCH
from service.prefetch.windows import RecordingWindows, Route

log = logging.getLogger(__name__)

CHUNK = 128  # accesses predicted between two releases of the interpreter lock
FAST_READS = 32  # the newest reads of a drain the engine's own stride answers (`answers.py`)
NETWORK_ARM = "network"  # the learned prefetcher's own model, beside its stride and Markov arms
# A worker whose steps keep failing (a prefetch child that dies at every start) waits twice as long after each
# failure in a row, up to this: each retry may start a new interpreter that imports torch, seconds of CPU.
MAX_FAILED_INTERVAL_S = 240.0
Emit = Callable[[list[tuple[Hashable, Predictions]], int, str], Any]


class CpuBudget:
    """The share of wall time all prefetch workers together may compute: a token bucket of CPU seconds.

    Used from the event loop only (engines charge it after their step returns), so it needs no lock.
    """

    def __init__(self, share: float, burst_s: float = 0.05) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"CPU share must be in (0, 1], got {share}")
        self.share, self.burst_s = share, burst_s
        self._credit = burst_s
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._credit = min(self.burst_s, self._credit + (now - self._stamp) * self.share)
        self._stamp = now

    def charge(self, seconds: float) -> None:
        self._refill()
        self._credit -= seconds

    def wait_s(self) -> float:
        """How long to wait before the next step may start (0 while there is credit)."""
        self._refill()
        return 0.0 if self._credit > 0 else -self._credit / self.share


def available_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float:
    """Cores this process may use: its CPU affinity (where the OS has one), capped by a cgroup v2 quota (a
    container's CPU limit)."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = float(len(affinity(0)) if affinity is not None else os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    return cores if quota == "max" else min(cores, int(quota) / int(period))


class NetworkBooks:
    """The prefetches the learned model made itself (issued from the prefetcher's answers while it served its
    network arm) and how many of them were used, by the coordinator's rule: what its checkpoints are judged on.
    The engine's stride answers and the prefetcher's stride and Markov arms are not the model's doing."""

    def __init__(self) -> None:
        self.issued = 0
        self.used = 0
        self.pending: set[Hashable] = set()  # issued, not yet read (or expired: dropped at the next step)

    def issued_key(self, key: Hashable) -> None:
        self.issued += 1
        self.pending.add(key)

    def on_access(self, coordinator: PrefetchCoordinator, key: Hashable, hit: bool | None) -> None:
        """Settle a read of one of the model's pending keys through the coordinator, counting it if used."""
        stats = coordinator.stats
        used, late = stats.used, stats.late
        coordinator.on_access(key, hit)
        if stats.used != used:
            self.used += 1
        if stats.used != used or stats.late != late:
            self.pending.discard(key)

    def forget_settled(self, coordinator: PrefetchCoordinator) -> None:
        """Drop the keys the coordinator no longer waits on (expired unread: wasted)."""
        for key in list(self.pending):  # a copy: the event loop adds the keys it issues meanwhile
            if not coordinator.unsettled(key):
                self.pending.discard(key)


class PrefetchEngine:
    def __init__(
        self,
        target: PrefetchTarget,
        prefetcher: Prefetcher,
        budget: PrefetchBudget | None = None,
        log_capacity: int = DEFAULT_CAPACITY,
        sample_every: int = 1,
        codec: KeyCodec | None = None,
        cpu: CpuBudget | None = None,
        max_batch: int = 512,
        process_cpu: CpuBudget | None = None,
        route: Route | None = None,
        tune_lead: bool = False,
        executor: Executor | None = None,
    ) -> None:
        self.prefetcher = prefetcher
        # Where steps run: the service gives engines threads of their own, so a step stuck on a hung child never
        # takes a thread from the default executor the origin reads and the rest of the service share.
        self.executor = executor
        self.codec = codec or KeyCodec()
        self.log = AccessLog(log_capacity, sample_every, target.in_flight)
        self.recorders = self.log.recorders()  # what the service's read path calls with the key: (hit, miss)
        self.coordinator = PrefetchCoordinator(target, budget or PrefetchBudget(), decode=self._decode,
                                               track_waits=tune_lead)
        self.drift = DriftDetector()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._stopped = asyncio.Event()
        self._last_used = 0
        self._last_settled = 0
        # Held while the prefetcher runs; checkpointing takes it too, so weights never change mid-batch.
        self.model_lock = threading.Lock()
        self.cpu = cpu or CpuBudget(1.0)  # the worker thread's CPU, taken from the event loop's interpreter
        self.process_cpu = process_cpu or self.cpu  # what a child computes for this engine
        self.max_batch = max_batch
        self.steps = 0
        self.step_seconds = 0.0  # time spent predicting (and training), for the model-latency metric
        self.predicted = 0  # accesses predicted from
        self.unpredicted = 0  # accesses settled but not predicted from: the worker was over its budget
        self.last_step_cpu_s = 0.0  # the worker thread's CPU time in the last step: what `cpu` is charged
        self.last_step_offloaded_s = 0.0  # a child's CPU time for the last step: what `process_cpu` is charged
        self.failures = 0  # steps that raised (a prefetcher process that died, a model error)
        self.network = NetworkBooks()
        # Summed over predicted reads: reads logged after each one before its proposals reached the coordinator.
        self.issue_lag_reads = 0
        self.last_drained = 0
        # For a prefetcher with arms (the learned one): its answers against the engine's own on-time stride
        # answers (`answers.py`); built once the prefetcher first says which arm it serves.
        self.sources: AnswerSources | None = None
        self.fast_answered = 0  # predicted reads whose issued proposals were the engine's stride answers
        self._backlog: deque[tuple[Hashable, int]] = deque(maxlen=max_batch)  # drained, not yet given to it
        # The live aim of the serving stride answers (`lead.py`): the tenant's stride prefetcher, or the engine's
        # own while it serves; the used prefetches it judges by are the coordinator's since the last step.
        self.tuner = LeadTuner(min(prefetcher.lead, MAX_LEAD)) if tune_lead else None
        self._outcomes_seen = (0, 0)  # the coordinator's (used, late_in_flight) at the last step
        # `route` points the read path at `recorders` or at nothing; without one it records always (the caller
        # routed `recorders` itself).
        self.windows = (RecordingWindows(route, self.recorders, self.coordinator.horizon, max_batch)
                        if route is not None else None)

    def _decode(self, ident: int) -> Hashable:
        return self.codec.decode(ident)

    def on_access(self, key: bytes, hit: bool) -> None:
        """Record one read; the service calls `recorders` directly, which skips this frame."""
        self.log.append(key, hit)

    def step(self, emit: Emit | None = None, learn: bool = True) -> list[tuple[Hashable, Predictions]]:
        """Drain the log, settle every access, and predict from the newest `max_batch` of them (blocking: run
        it off the event loop); returns the serving source's proposals.

        `emit` is handed each chunk's proposals, with how many of the batch's reads came after them and their
        source, as soon as the chunk is predicted (the worker issues them from there instead of waiting for the
        whole step: under load a step takes tens of milliseconds, thousands of reads).

        With answer sources (a prefetcher with arms), the engine's stride answers the newest `FAST_READS` at
        once, and the prefetcher predicts from the reads drained since it last did (at most `max_batch`; a
        `CHUNK` while the stride answers are the ones issued) only if `learn`: its CPU budget has credit."""
        thread_started, offloaded_started = time.thread_time(), self.prefetcher.offloaded_cpu_s
        batch = self.log.drain()
        self.last_drained = len(batch)
        if not batch and not (learn and self._backlog):
            return []
        coordinator, sources, network = self.coordinator, self.sources, self.network
        pending = network.pending
        for key, hit in batch:
            if key in pending:  # one of the model's own prefetches: its checkpoints are judged on those
                network.on_access(coordinator, key, hit)
            else:
                coordinator.on_access(key, hit)
        if pending:
            network.forget_settled(coordinator)
        self._judge(len(batch))
        if sources is not None:
            for key, _ in batch:
                sources.on_access(key)
            sources.rescore(self.prefetcher.serving_arm)
        self._check_drift()
        if len(batch) > self.max_batch:
            self.unpredicted += len(batch) - self.max_batch
            batch = batch[-self.max_batch :]
        todo = [(key, self.codec.encode(key)) for key, _ in batch]  # type: ignore[arg-type]
        out: list[tuple[Hashable, Predictions]] = []
        if sources is not None:
            if sources.fast_due():
                newest = todo[-FAST_READS:]  # an older read's answers would aim at reads already served
                answers = sources.fast.access_batch([i for _, i in newest])
                fast = [(key, props) for (key, _), props in zip(newest, answers, strict=True)]
                if emit is not None:
                    emit(fast, 0, FAST)
                if sources.serving == FAST:
                    out = fast
                    self.fast_answered += len(fast)
            self._backlog.extend(todo)
            todo = []
            if learn:
                todo = list(self._backlog)[-CHUNK:] if sources.serving == FAST else list(self._backlog)
                self._backlog.clear()
        started = time.perf_counter()
        for begin in range(0, len(todo), CHUNK):
            part = todo[begin : begin + CHUNK]
            with self.model_lock:
                proposals = self.prefetcher.access_batch([i for _, i in part])
            chunk = [(key, props) for (key, _), props in zip(part, proposals, strict=True)]
            if emit is not None:
                emit(chunk, max(0, len(todo) - begin - CHUNK), MODEL)
            if sources is None or sources.serving == MODEL:
                out += chunk
            time.sleep(0)  # let the event loop take the interpreter lock between chunks
        self.step_seconds += time.perf_counter() - started
        self.steps += 1
        self.predicted += len(out)
        self.last_step_cpu_s = time.thread_time() - thread_started
        self.last_step_offloaded_s = self.prefetcher.offloaded_cpu_s - offloaded_started
        if sources is None and self.prefetcher.serving_arm is not None:
            self.sources = AnswerSources(coordinator, self.prefetcher.lead)
        return out

    @property
    def stride_lead(self) -> int | None:
        """The lead the stride answers aim with (the tuner's choice, between probes); None without stride answers."""
        aimed = self.sources.fast if self.sources is not None else self.prefetcher
        if not aimed.aimable:
            return None
        return self.tuner.lead if self.tuner is not None else aimed.lead

    def _judge(self, reads: int) -> None:
        """Hand the reads just settled and the prefetches they used to what judges by them: the lead tuner, which
        aims the serving stride answers, and the answer sources' duel."""
        sources = self.sources
        if self.tuner is None and sources is None:
            return
        stats = self.coordinator.stats
        (used, in_flight), (seen_used, seen_in_flight) = (stats.used, stats.late_in_flight), self._outcomes_seen
        self._outcomes_seen = used, in_flight
        used, in_flight = used - seen_used, in_flight - seen_in_flight
        if sources is not None:
            sources.observe(reads, used)
        if self.tuner is None:
            return
        waits = self.coordinator.take_waits()
        aimed = self.prefetcher if sources is None else sources.fast if sources.serving == FAST else None
        if aimed is not None and aimed.aimable:
            aimed.aim_at(self.tuner.observe(reads, used, in_flight, waits))

    def issue(self, proposals: list[tuple[Hashable, Predictions]], reads_after: int = 0, source: str = MODEL) -> int:
        """Hand proposals to the coordinator (on the event loop); returns how many prefetches started.

        `reads_after`: reads of the step's batch that came after the last of these; with the reads logged since
        the drain, it is how late the proposals are. `source`: whose they are (`answers.py`): with answer
        sources, both are scored and only the serving one's issued."""
        if self._stopped.is_set():  # a chunk handed over while the engine was stopping: nothing may start now
            return 0
        logged = len(self.log)  # reads logged since the drain (all of them while the ring has room)
        windows = self.windows
        arrived = windows.reads_since_step() if windows is not None and windows.sampling else logged
        n = len(proposals)
        sources = self.sources
        if sources is not None:
            sources.note_lag(source, n, arrived + reads_after + (n - 1) / 2)
            for _, props in proposals:
                if props:
                    sources.score(source, props, logged)
            if source != sources.serving or self.prefetcher.serving_arm == NO_PREFETCH:
                return 0
        self.issue_lag_reads += n * (arrived + reads_after) + n * (n - 1) // 2
        network = source == MODEL and self.prefetcher.serving_arm == NETWORK_ARM
        started = 0
        for _, props in proposals:
            if not props:
                continue
            for key, result in self.coordinator.consider(props, logged):
                started += 1
                if network:
                    self.network.issued_key(key)
                else:  # issued again (the coordinator counted the model's issue of it wasted): not the model's now
                    self.network.pending.discard(key)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(functools.partial(self._done, key=key))
                else:
                    self.coordinator.completed(key, logged)
        if started and windows is not None:
            windows.issued()
        return started

    def _done(self, task: asyncio.Future[Any], *, key: Hashable) -> None:
        self._tasks.discard(task)
        self.coordinator.completed(key, len(self.log))  # landed after the reads logged since the drain
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

    async def run(self, interval: float = 0.002, busy_interval: float = 0.02, failed_interval: float = 1.0,
                  max_failed_interval: float = MAX_FAILED_INTERVAL_S) -> None:
        """The background worker; returns after `stop()`. A step that fails is logged and the worker goes on after
        `failed_interval`, doubled for each failure in a row (up to `max_failed_interval`) until a step with reads
        to predict from succeeds."""
        loop = asyncio.get_running_loop()
        after_failure = failed_interval

        def emit(chunk: list[tuple[Hashable, Predictions]], reads_after: int, source: str) -> None:
            loop.call_soon_threadsafe(self.issue, chunk, reads_after, source)  # each chunk's proposals, as they come

        while not self._stopped.is_set():
            rest, learn = self._wait_s()
            if not rest:
                self.last_step_cpu_s = self.last_step_offloaded_s = 0.0
                unpredicted, steps = self.unpredicted, self.steps
                if self.windows is not None:
                    self.windows.step_starting()
                try:
                    proposals = await loop.run_in_executor(self.executor, self.step, emit, learn)
                except Exception as err:  # reads are still served; prefetching resumes with the next step
                    self.failures += 1
                    rest, after_failure = after_failure, min(2 * after_failure, max_failed_interval)
                    log.error("prefetch step failed (%d so far): %s; the next step in %.3g s", self.failures, err,
                              rest)
                else:
                    if self.steps > steps:  # a step with nothing to predict from proves nothing
                        after_failure = failed_interval
                    # Behind (reads left unpredicted): fewer, fuller steps, as each costs the event loop a hand-off.
                    behind = self.unpredicted > unpredicted
                    if self.windows is not None:
                        behind = self.windows.step_done(self.last_drained, behind)
                    # Proposals flowing: the next step at once, unless they are the engine's own stride answers,
                    # which come with every step (back to back, steps of a few reads would each cost the event
                    # loop a hand-off: a quarter of the GET rate on a 16-core host).
                    flowing = proposals and (self.sources is None or self.sources.serving != FAST)
                    rest = busy_interval if behind else 0.0 if flowing else interval
                self.cpu.charge(self.last_step_cpu_s)
                self.process_cpu.charge(self.last_step_offloaded_s)
                rest = max(rest, self._wait_s()[0])
            if rest and self.windows is not None:
                await self.windows.idle(rest, self._rest)
            elif rest:
                await self._rest(rest)

    def _wait_s(self) -> tuple[float, bool]:
        """How long until the next step may start, and whether the prefetcher computes in it. Both budgets must
        have credit, unless the engine's own stride answers are useful (`answers.py`): they need only the worker
        thread's, and the prefetcher joins the steps its own budget pays for."""
        thread_s, offloaded_s = self.cpu.wait_s(), self.process_cpu.wait_s()
        if self.sources is not None and self.sources.fast_useful:
            return thread_s, not offloaded_s
        return max(thread_s, offloaded_s), True

    async def _rest(self, seconds: float) -> bool:
        """Wait `seconds`, or until stopped; True when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout=seconds)
        return self._stopped.is_set()

    def stop(self) -> None:
        """Issue nothing more. Prefetches in flight finish (the origin's timeout bounds them): each is the tenant's
        single-flight load of its key, which a client's read of that key may have joined, so cancelling it would
        cancel that read."""
        self._stopped.set()
        if self.windows is not None:
            self.windows.close()
