"""Who may hold a connection to a listener, and how long its TLS handshake may take.

Every connection holds a file descriptor, and once the process's are gone every tenant's RESP and HTTPS fail, and so
does every other open (an origin read, a certificate reload). Left to itself, asyncio waits 60 s for a TLS handshake
before anything counts the connection. So both listeners accept connections here (`Listener`): each is counted
against its address (`Slots`) from accept, before the TLS handshake, which has a deadline; one over the caps is
closed at once, before a byte is read. An HTTP connection counts until it closes (its request heads have a deadline
too: service/http/connections.py). A RESP connection counts until its handshake ends, from when RESP's own admission
(service/resp/admission.py) counts it; without TLS, asyncio's server accepts RESP: there is no handshake.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from service.auth import source_of
from service.config import Settings

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# accept() failing for want of descriptors or memory: as asyncio's own servers do, stop accepting for a second (the
# waiting connections stay in the backlog) rather than spin on the error.
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_PAUSE_S = 1.0
_ACCEPTS_PER_TURN = 128  # a burst of clients does not hold the event loop for the whole backlog
_REFUSALS_SUMMED_EVERY_S = 60.0  # a flood of refusals is a warning a minute, not one per connection


class Slot:
    """One connection's place in its Slots, given back once whichever of its ends comes first."""

    __slots__ = ("_slots", "source")

    def __init__(self, slots: Slots, source: str) -> None:
        self._slots: Slots | None = slots
        self.source = source

    def release(self) -> None:
        if self._slots is not None:
            self._slots.give_back(self.source)
            self._slots = None


class Slots:
    """Connections open from each address (IPv6: each /64) and in all, capped by the settings named `per_source`
    and `total`; `uncapped` networks (trusted proxies, which carry many clients) only count towards the total, and so
    do the connections `counted_elsewhere` says the listener's protocol holds (past their handshake)."""

    def __init__(self, listener: str, settings: Settings, per_source: str, total: str,
                 uncapped: Sequence[Network] = (), counted_elsewhere: Callable[[], int] = lambda: 0) -> None:
        self.listener = listener
        self._counted_elsewhere = counted_elsewhere
        self.max_per_source: int = getattr(settings, per_source)
        self.max_total: int = getattr(settings, total)
        self._per_source_setting, self._total_setting = f"FORESIGHT_{per_source.upper()}", f"FORESIGHT_{total.upper()}"
        self._uncapped = tuple(uncapped)
        self.open: Counter[str] = Counter()
        self.total = 0
        self.refused_total = 0  # foresight_connections_refused_total
        self._refused = 0  # since the last line about them
        self._summary: asyncio.TimerHandle | None = None

    def take(self, address: Any) -> Slot | None:
        """A slot for a connection from `address` (accept()'s), or None (logged) when it is over a cap."""
        host, port = address[0], address[1]
        source = source_of(f"{host}:{port}")
        if self.total + self._counted_elsewhere() >= self.max_total:
            self._refuse(host, f"{self.max_total} {self.listener} connections are open ({self._total_setting})")
            return None
        if self.open[source] >= self.max_per_source and not self._is_uncapped(host):
            self._refuse(host, f"{source} holds {self.max_per_source} {self.listener} connections already "
                         f"({self._per_source_setting})")
            return None
        self.open[source] += 1
        self.total += 1
        return Slot(self, source)

    def give_back(self, source: str) -> None:
        self.total -= 1
        left = self.open[source] - 1
        if left > 0:
            self.open[source] = left
        else:
            del self.open[source]

    def _is_uncapped(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._uncapped)

    def _refuse(self, host: str, why: str) -> None:
        """The first refusal is logged with its reason; those after it are summed up once a minute."""
        self.refused_total += 1
        if self._summary is not None:
            self._refused += 1
            return
        log.warning("%s connection from %s refused: %s", self.listener, host, why)
        self._summary = asyncio.get_running_loop().call_later(_REFUSALS_SUMMED_EVERY_S, self._sum_up)

    def _sum_up(self) -> None:
        self._summary = None
        if self._refused:
            log.warning("%d more %s connections refused over the caps (%s, %s) in the last %g s", self._refused,
                        self.listener, self._per_source_setting, self._total_setting, _REFUSALS_SUMMED_EVERY_S)
            self._refused = 0
            self._summary = asyncio.get_running_loop().call_later(_REFUSALS_SUMMED_EVERY_S, self._sum_up)


class Listener:
    """Accepts on a bound, listening socket: each connection takes a slot, then gets `tls_timeout_s` for its TLS
    handshake (and a TLS close as long for the client's close_notify) before `protocol` serves it.

    With `held`, the protocol gives its slot back when the connection closes; otherwise the slot is given back once
    the handshake ends, and the protocol does its own counting from there."""

    def __init__(self, sock: socket.socket, protocol: Callable[[Slot], asyncio.Protocol], slots: Slots, *,
                 tls: ssl.SSLContext | None, tls_timeout_s: float, held: bool) -> None:
        self._sock, self._protocol, self._slots, self._held = sock, protocol, slots, held
        self._tls = tls
        self._tls_timeouts = {"ssl_handshake_timeout": tls_timeout_s, "ssl_shutdown_timeout": tls_timeout_s}
        self._opening: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock, self._accept)

    def close(self) -> None:
        """Stop accepting (a listener never started just closes its socket), and drop connections still in their
        handshake; those being served stay."""
        if self._loop is not None:
            if self._paused is not None:
                self._paused.cancel()
                self._paused = None
            else:
                self._loop.remove_reader(self._sock)
            self._loop = None
        self._sock.close()
        for task in self._opening:
            task.cancel()

    def _accept(self) -> None:
        assert self._loop is not None
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # nothing waiting, or a client that left before it was accepted
            except OSError as err:
                if err.errno not in _OUT_OF_RESOURCES:  # that one pending connection's (EPROTO, ENETDOWN, EPERM ...)
                    log.warning("%s listener: a connection failed as it was accepted (%s)", self._slots.listener,
                                err.strerror)
                    continue
                why = "out of file descriptors" if err.errno in (errno.EMFILE, errno.ENFILE) else err.strerror
                log.error("%s listener cannot accept (%s): pausing %g s", self._slots.listener, why, _ACCEPT_PAUSE_S)
                self._loop.remove_reader(self._sock)
                self._paused = self._loop.call_later(_ACCEPT_PAUSE_S, self._resume)
                return
            slot = self._slots.take(address)
            if slot is None:
                conn.close()  # refused before a byte is read: it never holds a descriptor for long
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._open(conn, slot))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    def _resume(self) -> None:
        assert self._loop is not None
        self._paused = None
        self._loop.add_reader(self._sock, self._accept)

    async def _open(self, conn: socket.socket, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        timeouts = self._tls_timeouts if self._tls is not None else {}
        served = False
        try:
            # The transport owns the socket from here, and closes it when the handshake fails or is too late.
            await loop.connect_accepted_socket(lambda: self._protocol(slot), conn, ssl=self._tls, **timeouts)
            served = True
        except OSError:  # ssl.SSLError, a reset, or ConnectionAbortedError at the handshake deadline
            pass
        finally:
            if not (served and self._held):
                slot.release()
