"""Single-flight: however many readers wait for one missing key, the origin sees one fetch.

The fetch runs as its own task, so a reader that disconnects (and is cancelled) never cancels the fetch
the other readers are waiting on. A flight started without a reader (a prefetch) knows when a reader joins it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Task[T]] = {}
        self._demanded: set[Hashable] = set()  # keys whose flight in progress a reader waits on
        self.started = 0  # fetches actually run, for tests and metrics

    def __contains__(self, key: Hashable) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    def demanded(self, key: Hashable) -> bool:
        """Whether a reader (`do`) waits on the flight of `key`, not only whoever started it."""
        return key in self._demanded

    def start(self, key: Hashable, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """The in-flight task for `key`, starting `work` only if none is running (else `work` is closed)."""
        task = self._flights.get(key)
        if task is not None:
            work.close()
            return task
        task = asyncio.ensure_future(work)
        self._flights[key] = task
        self.started += 1
        task.add_done_callback(lambda done: self._finish(key, done))
        return task

    def _finish(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
            self._demanded.discard(key)
        if not task.cancelled():
            task.exception()  # mark retrieved: a prefetch nobody awaits must not log a warning

    async def do(self, key: Hashable, work: Coroutine[Any, Any, T]) -> T:
        """Join or start the fetch for `key`; every caller gets the same result or error."""
        task = self.start(key, work)
        if not task.done():
            self._demanded.add(key)
        return await asyncio.shield(task)
