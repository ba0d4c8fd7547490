"""Which reads a prefetch worker that is behind records: windows, not every read.

A worker predicts from at most `max_batch` reads a step. Once it is behind (its last step left reads
unpredicted) it needs two kinds of reads only: those right after each chunk of prefetches it issued, which
settle them (the coordinator's horizon), and the newest `max_batch` before its next step. Every other read
would cost the GET path an append (and, with the ring full, the free of the entry it pushes out) and the worker
a settlement, only to be dropped unpredicted: under load a step takes tens of milliseconds (65-70 ms for 512
reads on the dev box), and recording through the steps logged 77-97 % of reads on a 16-core host. So between
the windows the read path is routed to nothing, where a GET costs what it costs without a prefetcher. Windows
are timed from the read rate measured while recording. All of it runs on the event loop, which is also where
reads are recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from service.prefetch.access_log import Recorder

Recorders = tuple[Recorder, Recorder]
# Points the read path at the access log's (hit, miss) recorders, or at nothing (None): reads go unrecorded.
Route = Callable[[Recorders | None], None]

# A pause shorter than this is not worth the extra wake-up of the worker it costs.
MIN_PAUSE_S = 0.005
# Settle windows are timed for this many times the horizon: a read rate that has just dropped still fills it.
SETTLE_MARGIN = 1.5


class RecordingWindows:
    def __init__(self, route: Route, recorders: Recorders, horizon: int, max_batch: int) -> None:
        self._route, self._recorders = route, recorders
        self.horizon, self.max_batch = horizon, max_batch
        self.recording = True  # whether the read path is routed to the recorders now
        self.sampling = False  # behind: recording in windows only
        self.read_rate = 0.0  # reads a second while recording, measured at the last step
        self._since = time.monotonic()  # when recording last started or its time was last taken
        self._recorded_s = 0.0  # recorded seconds since the last step started
        self._step_recorded_s = 0.0  # ... up to the start of the running step
        self._step_started = self._since
        self._cycle_s = 0.0  # between the last two step starts
        self._filling = False  # recording the reads the next step predicts from
        self._timer: asyncio.TimerHandle | None = None  # ends the running settle window
        self._closed = False

    def _set(self, on: bool) -> None:
        if on == self.recording or self._closed:
            return
        now = time.monotonic()
        if self.recording:
            self._recorded_s += now - self._since
        self.recording, self._since = on, now
        self._route(self._recorders if on else None)

    def step_starting(self) -> None:
        """The worker is about to drain the log: the window it predicts from ends here."""
        now = time.monotonic()
        self._step_recorded_s = self._recorded_s + (now - self._since if self.recording else 0.0)
        self._cycle_s = now - self._step_started
        self._recorded_s, self._since, self._step_started = 0.0, now, now
        if self.sampling:
            self._filling = False
            if self._timer is None:  # else a settle window still runs: its timer ends the recording
                self._set(False)

    def step_done(self, drained: int, unpredicted: bool) -> bool:
        """The step drained `drained` reads and left some `unpredicted` or not; returns whether the worker is
        behind. Sampling, the drain holds only the windows: behind is then more reads since the last step, at
        the measured rate, than a step predicts from (a drain of one full window must not end the sampling)."""
        if self._step_recorded_s > 0:
            self.read_rate = drained / self._step_recorded_s
        behind = self.read_rate * self._cycle_s > self.max_batch if self.sampling else unpredicted
        self.sampling = behind and self.read_rate > 0
        if not self.sampling:
            self._set(True)
        return behind

    def reads_since_step(self) -> int:
        """About how many reads came since the running step drained the log, recorded or not."""
        return round(self.read_rate * (time.monotonic() - self._step_started))

    def issued(self) -> None:
        """Prefetches started: record the reads that settle them."""
        if not self.sampling:
            return
        wait = SETTLE_MARGIN * self.horizon / self.read_rate
        self._set(True)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(wait, self._settled)

    def _settled(self) -> None:
        self._timer = None
        if self.sampling and not self._filling:  # the fill window keeps recording until the step
            self._set(False)

    def close(self) -> None:
        """The worker stopped: route nothing more. The read path may already belong to the tenant's next
        engine (a changed prefetcher), which a late settle window must not unroute."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()

    async def idle(self, seconds: float, rest: Callable[[float], Awaitable[bool]]) -> None:
        """Wait `seconds` for the next step (`rest` waits, returning True when the worker stops meanwhile);
        sampling, record only for the last `max_batch` reads' worth of them."""
        fill = seconds
        if self.sampling:
            fill = min(seconds, self.max_batch / self.read_rate)
            if seconds - fill < MIN_PAUSE_S:
                fill = seconds
            elif await rest(seconds - fill):
                return  # stopping: whoever stops the worker unroutes the read path
            self._filling = True
            self._set(True)
        await rest(fill)
