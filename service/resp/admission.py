"""Who may hold a RESP connection: the client cap and the per-address cap on connections not yet logged in.

Every connection holds a file descriptor and buffers, and before AUTH nobody has proved to be a tenant: without
these caps one address could open connections until the process runs out of descriptors, and then every tenant's
reads fail (an origin read, a certificate reload). Redis caps clients the same way (`maxclients`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import Counter
from collections.abc import Callable

from service.config import Settings
from service.resp import replies as r
from service.state import ServiceState

MAX_CLIENTS = r.error("ERR max number of clients reached")  # Redis's text: clients know it


class Admission:
    """The connections of one service that have not logged in yet, counted per source address."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.unauthenticated: Counter[str] = Counter()

    def refusal(self, clients: int, source: str | None) -> bytes | None:
        """The error for a new connection from `source` (None: it needs no login) while `clients` are open, or None."""
        if clients >= self.settings.resp_max_clients:
            return MAX_CLIENTS
        if source is not None and self.unauthenticated[source] >= self.settings.resp_max_unauthenticated_per_source:
            return MAX_CLIENTS
        return None

    def enter(self, source: str) -> None:
        self.unauthenticated[source] += 1

    def leave(self, source: str) -> None:
        """It logged in or went away: it no longer counts against its address."""
        left = self.unauthenticated[source] - 1
        if left > 0:
            self.unauthenticated[source] = left
        else:
            del self.unauthenticated[source]


class LoginWait:
    """One connection's time before its first login: it counts against its address (None: a refused connection,
    which does not), and a deadline hands `expire` the error to send before dropping it."""

    def __init__(self, admission: Admission, source: str | None, timeout: float,
                 expire: Callable[[bytes], None]) -> None:
        self._admission, self._source = admission, source
        if source is not None:
            admission.enter(source)
        self._deadline = asyncio.get_running_loop().call_later(timeout, self._expired, timeout, expire)

    def _expired(self, timeout: float, expire: Callable[[bytes], None]) -> None:
        expire(r.error(f"ERR no AUTH within {timeout:g} s of connecting: closing the connection"))

    def end(self) -> None:
        """It logged in or went away."""
        self._deadline.cancel()
        if self._source is not None:
            self._admission.leave(self._source)
            self._source = None


# Each service's counts, beside its ServiceState (which this module keeps free of admission policy).
_ADMISSIONS: weakref.WeakKeyDictionary[ServiceState, Admission] = weakref.WeakKeyDictionary()


def admission_for(state: ServiceState) -> Admission:
    admission = _ADMISSIONS.get(state)
    if admission is None:
        admission = _ADMISSIONS[state] = Admission(state.settings)
    return admission
