"""HTTP connections that say nothing: uvicorn holds a connection that never sends a request for good (its keep-alive
timer starts after a response), and one whose request head trickles in (a header line every few seconds) for as long
as it trickles. Each request's head has a deadline here (`HeadDeadlineProtocol`); the connection's slot and its TLS
handshake's deadline are service/listener.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.listener import Slot


def _request_timeout(timeout_s: float) -> bytes:
    body = f"no request line and headers within {timeout_s:g} s: closing the connection".encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body))


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for each request's line and headers, counted from the
    connection's start or from the end of the previous response, and a slot given back when it closes.

    A connection that never began a request is dropped; one whose head had begun is answered 408 and closed. Bodies
    and responses have no deadline here: they happen after the head, and the connection caps bound them."""

    def __init__(self, config: uvicorn.Config, server_state: ServerState, slot: Slot, head_timeout_s: float) -> None:
        # lifespan is off: the app keeps no state for uvicorn to hand each request
        super().__init__(config, server_state, app_state={})
        self._slot = slot
        self._head_timeout_s = head_timeout_s
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        self._slot.release()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        self._head_begun = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Unless it closes, or a pipelined request (its head already in) is answered next, the next head is due.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._await_head()

    def _await_head(self) -> None:
        self._stop_waiting()
        self._head_deadline = self.loop.call_later(self._head_timeout_s, self._head_late)

    def _stop_waiting(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_late(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        if self._head_begun:
            self.transport.write(_request_timeout(self._head_timeout_s))
            self.transport.close()
        else:
            self.transport.abort()  # it said nothing: nothing to tell it, and no close_notify to wait for


def http_protocol(server: uvicorn.Server, head_timeout_s: float) -> Callable[[Slot], asyncio.Protocol]:
    """Protocols for `server`'s connections: uvicorn serves them (and shuts them down) as if it had accepted them."""
    return lambda slot: HeadDeadlineProtocol(server.config, server.server_state, slot, head_timeout_s)
