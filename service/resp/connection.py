"""One RESP client connection: parse with hiredis, dispatch through the command table, keep reply order.

Most commands answer synchronously, so a burst of pipelined commands is parsed, executed and answered
with few writes. A command that must wait (a read-through to the origin, an AUTH that asks the key source)
returns an awaitable; the connection then finishes the rest of the pipeline in a task, in order, and reads
nothing more until it is done: what the client sends meanwhile waits in the kernel, not in this process.

One client cannot hold the loop or the memory: after YIELD_EVERY commands or 64 KiB of replies of a pipeline
the replies go out and the loop runs other clients (an EXEC runs whole, as in Redis); once more than
_HIGH_WATER of them waits to be sent (a client that does not read), commands stop until the transport drains
(pause_writing/resume_writing), so such a client holds about _HIGH_WATER of replies plus one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable
from typing import Any, cast

import hiredis

from service.auth import LoginRefused, Session, source_of
from service.cache import TenantCache
from service.resp import framing
from service.resp import replies as r
from service.resp.admission import LoginWait, admission_for
from service.resp.commands import Command, build_table, checked_subcommand
from service.resp.commands.transactions import RUN_INSIDE_MULTI
from service.resp.reader import Position, new_reader
from service.state import ServiceState

log = logging.getLogger(__name__)

COMMANDS: dict[bytes, Command] = build_table()
_RATE_LIMITED = "ERR rate limit exceeded: tenant '{}' allows {:g} requests per second"
_HIGH_WATER = 1 << 20  # stop answering when this much reply data waits to be sent
# One turn of a pipeline: replies are written, and other clients get the loop, once this much has been answered,
# each command counted as its reply's bytes plus _COMMAND_COST (one running total: the hot path's only check).
_TURN_BYTES = 64 * 1024
_COMMAND_COST = 64
YIELD_EVERY = _TURN_BYTES // _COMMAND_COST  # commands, at most, between other clients' turns
# What a queued command costs besides its arguments' bytes: its args list and (cmd, args) tuple and its queue
# slot; and each argument, its bytes object's header and list slot. Charged against max_request_bytes.
_QUEUED_COMMAND = sys.getsizeof([]) + sys.getsizeof((None, None)) + 8
_QUEUED_ARG = sys.getsizeof(b"") + 8
_INTERNAL_ERROR = r.error("ERR internal error")
# A request still arriving past this size, once a read is answered, is refused while its tenant's requests in flight
# are over its memory budget; smaller ones never are (an EXEC after a full MULTI queue), and hold at most this much.
_SMALL_REQUEST = 64 * 1024
# A read that starts a request goes through Redis's framing (framing.take_requests) instead of straight to hiredis
# when it does not start with '*' (an inline request, or a RESP value Redis takes for one) or holds a '+' (where an
# argument's '$' should be, hiredis takes `+foo` for a bulk string): one scan of the read, and one look at where
# hiredis stands once the read is answered (_answered), are the hot path's costs.
# What hiredis refuses or parses into something that is not an array of bytes is framed again from that request on
# (_reframe), and an argument still arriving that Redis would already refuse is refused (_answered).
_PLUS = b"+"


class RespConnection(asyncio.Protocol):
    commands = COMMANDS
    cache_only = False  # True while a script runs its calls: reads see the cache and never wait for the origin

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.reader = new_reader(state.settings.max_request_args)
        self.position = Position(self.reader)
        # Bytes received since the last complete request: the request-size limits' measure. Not reader.len(), which
        # drops what hiredis has parsed of a request still arriving (a huge array, sent in pieces, never grew it).
        self.request_bytes = 0
        # Until the first AUTH binds it, a copy of what hiredis holds, from the next request on: Redis's limits
        # on an unauthenticated request are on its headers, which hiredis does not show until it is complete.
        self._unauthenticated: bytearray | None = bytearray()
        self.client_id = 0  # drawn once connected: a TLS handshake that fails never reaches connection_lost
        self.name = b""
        self.lib_info: dict[str, str] = {}
        self.protocol = 2
        self.null = r.NULL2
        self.tenant: TenantCache = None  # type: ignore[assignment]  # None until AUTH (or the dev tenant)
        self.session: Session | None = None
        self.scopes: frozenset[str] | None = None  # the key's scopes; None: every one (the dev tenant)
        self.queued: list[tuple[Command, list[bytes]]] | None = None  # MULTI's queue; None outside MULTI
        self.queue_failed = False  # a command was refused inside MULTI: EXEC aborts
        self.queued_bytes = 0  # the queue's memory: argument bytes and the overheads above
        self.watching: dict[bytes, int] = {}  # WATCHed key -> the store's change count when watched
        self.close_after_reply = False
        self.killed = False  # CLIENT KILL dropped it: gone from CLIENT before its connection_lost comes
        self.commands_processed = 0
        self.commands_at_bind = 0  # commands_processed when it bound to its tenant
        self.local_port = 0
        self.local_addr = "?"
        self.peer = "?"
        self.connected_at = self.last_active = time.monotonic()  # CLIENT LIST's age and idle
        self.last_command = b""  # CLIENT LIST's cmd: the last command of the last read (noted once a read)
        self._busy: asyncio.Task[None] | None = None
        self._paused = False
        self._writable = asyncio.Event()  # cleared while the transport holds more than _HIGH_WATER
        self._writable.set()
        self._login_wait: LoginWait | None = None  # until the first login (never in dev mode)
        self._inline = b""  # an inline request's line still arriving (hiredis reads arrays only)
        self._frame_error: bytes | None = None  # what framing refused: answered after the requests before it
        # While a task answers a read, that read (None once another one was fed: it is then not all the reader may
        # hold), whether it started where a request does, and the last request the reader returned: where a request
        # hiredis misread is looked for, and what it follows. The synchronous drain has them in its locals.
        self._read: bytes | None = None
        self._read_at_start = False
        self._at_start = True  # whether hiredis stood between requests when the last read was answered
        self._previous: list[bytes] | None = None

    # asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        sockname = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        self.local_port = sockname[1] if sockname else 0
        self.local_addr = f"{sockname[0]}:{sockname[1]}" if sockname else "?"
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        state = self.state
        self.client_id = state.next_client_id()
        state.connections.current += 1
        dev = state.dev_tenant()
        admission = admission_for(state)
        source = source_of(self.peer) if dev is None else None
        refusal = admission.refusal(len(state.resp_clients), source)
        state.resp_clients.add(self)  # a refused one too, until it is gone: it holds a descriptor all the same
        if refusal is None and dev is not None:
            self._bind(dev)
            return
        if refusal is not None:
            self._write(refusal)
            self.close_after_reply = True
            transport.close()
            source = None  # it does not count against its address
        # A deadline on a refused one too: a TLS close waits for the client's close_notify, which it need never send.
        self._login_wait = LoginWait(admission, source, state.settings.resp_auth_timeout_s, self._login_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        counters = self.state.connections
        counters.current -= 1
        counters.commands += self.commands_processed
        self.state.resp_clients.discard(self)
        self.state.release_client_id(self.client_id)
        self._end_login_wait()
        self._unbind()
        if self._busy is not None:
            self._busy.cancel()

    def pause_writing(self) -> None:
        self._paused = True
        self._writable.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        self._writable.set()
        if self._busy is None and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()  # while busy, the task resumes reading once the pipeline is done

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()  # once a read, not once a command
        self._hold(self.request_bytes + len(data))
        tenant = self.tenant
        limit = framing.UNAUTHENTICATED_MAX_REQUEST if tenant is None else self.state.settings.max_request_bytes
        if self.request_bytes > limit:
            self._stop_reading(r.error(f"ERR Protocol error: request larger than {limit} bytes"))
            return
        at_start = self._at_start if self._busy is None else self.position.between_requests()
        if self._inline or (at_start and (data[0] != 0x2A or _PLUS in data)):
            data = self._framed(data)
            at_start = True
        self.reader.feed(data)
        if self._unauthenticated is not None:
            self._unauthenticated += data
        if self._busy is None:
            if self._paused:
                self._continue_in_task(None, None, data, at_start)
            else:
                self._drain_sync(data, at_start)
        else:
            self._read = None

    def _hold(self, held: int) -> None:
        """This connection's bytes of requests not yet complete, also counted in its tenant's total
        (TenantCache.requests_held): over all its connections, a tenant's requests in flight may hold no more memory
        than its budget, so a tenant cannot grow the process past its own budget by sending values it never ends."""
        if self.tenant is not None:
            self.tenant.requests_held += held - self.request_bytes
        self.request_bytes = held

    def _stop_reading(self, reply: bytes) -> None:
        """Refuse what is arriving and close. The request's bytes and any MULTI queue go now (a new, empty reader),
        not when the transport is gone: a TLS close waits on a client that may never answer it."""
        self.reader = new_reader(self.state.settings.max_request_args)
        self.position = Position(self.reader)
        self._hold(0)
        self.end_queue()  # never run now: a MULTI queue goes too
        self._write(reply)
        self.close_after_reply = True
        if self.transport is not None:
            self.transport.close()

    def _framed(self, data: bytes) -> bytes:
        """What arrived, from where a request starts, as Redis frames it: arrays hiredis reads alike, with what is
        still arriving of an array after them (hiredis parses it)."""
        buf = self._inline + data if self._inline else data
        encoded, used, error, hold = framing.take_requests(buf, self.state.settings.max_request_args)
        self._inline = b""
        if error is not None:
            if self._unauthenticated is not None:  # Redis's limits before AUTH come first, on the same request
                first = framing.first_request(bytearray(buf[used:]))
                error = first if isinstance(first, bytes) else error
            self._frame_error = error  # what follows it is never read: the connection closes
            return encoded
        if hold:  # a line still arriving (at most framing.INLINE_MAX), or an array hiredis would misread
            self._inline = buf[used:]
            return encoded
        return encoded + buf[used:]

    # dispatch -----------------------------------------------------------------------------------------
    def _next(self) -> Any:
        if self._unauthenticated is not None and (refusal := self._check_unauthenticated()) is not None:
            self._write(refusal)
            self.close_after_reply = True
            return False
        try:
            args = self.reader.gets()
        except hiredis.ProtocolError as err:
            fed = self._reframe(self._read, self._read_at_start, self._previous, str(err))
            if fed is not None:
                self._read, self._read_at_start = fed, True
                return self._next()
            self._write(framing.parse_error(err))
            self.close_after_reply = True
            return False
        except MemoryError as err:
            self._write(framing.parse_error(err))
            self.close_after_reply = True
            return False
        if args is not False:
            self._hold(self.reader.len())
        elif (refusal := self._answered()) is not None:
            self._write(refusal)
            self.close_after_reply = True
        return args

    def _reframe(
        self, read: bytes | None, at_start: bool, previous: list[bytes] | None, refusal: str | None
    ) -> bytes | None:
        """When hiredis refused (`refusal`, its message) or misread a request of `read` right after `previous`, the
        last request it returned from it: a new reader (hiredis ends one at its first protocol error) fed that
        request and what follows it as Redis frames them, and what it was fed (the read to look in next time). None
        when where that request starts is not certain (the read went on with a request begun in an earlier one,
        and only an inline request is looked for there): hiredis's error stands."""
        if read is None:
            return None
        if at_start:
            start, last = framing.hiredis_prefix(read)
            if last != previous or start >= len(read):
                return None
        else:
            found = None if previous is None or refusal is None else framing.inline_start(read, previous, refusal)
            if found is None:
                return None
            start = found
        if start == 0 and at_start and not self._inline and framing.take_requests(
                read, self.state.settings.max_request_args)[0] == read:
            return None  # Redis frames it as hiredis read it: the refusal stands (framing it again would loop)
        self.reader = new_reader(self.state.settings.max_request_args)
        self.position = Position(self.reader)
        fed = self._framed(read[start:])
        self.reader.feed(fed)
        return fed

    def _answered(self) -> bytes | None:
        """Once hiredis has nothing more to return: notes whether the next read starts a request, and returns what
        framing refused, or Redis's error for the argument hiredis is still reading where Redis would have refused it
        already (None: the connection goes on)."""
        position = self.position
        self._at_start = position.between_requests()
        if self._frame_error is not None:
            return self._frame_error
        progress = position.element_in_progress()
        return None if progress is None else framing.refusal_in_progress(*progress)

    def _check_unauthenticated(self) -> bytes | None:
        """Redis's error when the next request breaks its limits before AUTH; else None, and a complete request
        leaves the copy (hiredis parses the same bytes next)."""
        buf = self._unauthenticated
        assert buf is not None
        first = framing.first_request(buf)
        if first is None:
            self._unauthenticated = None  # not a request hiredis will let through: the byte limit still holds
        elif isinstance(first, bytes):
            return first
        elif first:
            del buf[:first]
        return None

    def _drain_sync(self, read: bytes, at_start: bool) -> None:
        """Answer the complete commands in the buffer (`read` is what was just fed, `at_start` whether it started
        where a request does); hand over to a task at the first that must wait, or after a turn's worth."""
        out: list[bytes] = []
        spent = 0
        execute, gets, cost, turn = self.execute, self.reader.gets, _COMMAND_COST, _TURN_BYTES
        last: Any = None
        pending: Any = None
        more = False
        try:
            while not self.close_after_reply:
                if self._unauthenticated is not None and (refusal := self._check_unauthenticated()) is not None:
                    out.append(refusal)
                    self.close_after_reply = True
                    break
                try:
                    args = gets()
                except hiredis.ProtocolError as err:
                    fed = self._reframe(read, at_start, last, str(err))
                    if fed is None:
                        raise
                    read, at_start, gets = fed, True, self.reader.gets
                    continue
                if args is False:
                    refusal = self._answered()
                    if refusal is not None:
                        out.append(refusal)
                        self.close_after_reply = True
                    break
                try:
                    reply = execute(args)
                except framing.Malformed as malformed:
                    fed = self._reframe(read, at_start, last, None)
                    if fed is None:
                        out.append(malformed.reply)
                        self.close_after_reply = True
                        break
                    read, at_start, gets = fed, True, self.reader.gets
                    continue
                except Exception:  # a bug in one command: it answers an error, the rest of the pipeline runs
                    log.exception("command failed on connection %d", self.client_id)
                    reply = _INTERNAL_ERROR
                last = args
                if type(reply) is not bytes:
                    pending = reply
                    break
                out.append(reply)
                spent += len(reply) + cost
                if spent >= turn:  # the rest in a task, after other clients' turn (or the client reads)
                    more = True
                    break
        except (hiredis.ProtocolError, MemoryError) as err:
            out.append(framing.parse_error(err))
            self.close_after_reply = True
        if last is not None:  # requests answered: what counts against the limit now is the next one's bytes so far
            self._hold(self.reader.len())  # (once per drain, not per command: this is the hot path)
        self._note_command(last)
        if out:
            self._write(b"".join(out))
        if pending is not None or more:
            self._continue_in_task(pending, last, read, at_start)
        elif self.close_after_reply and self.transport is not None:
            self.transport.close()
        elif self.request_bytes > _SMALL_REQUEST:
            self._check_in_flight()

    def _check_in_flight(self) -> None:
        """A request still arriving (what the drain left) past _SMALL_REQUEST while its tenant's requests in flight
        are over its budget is refused: the reads of a pipeline of small requests never are, only what is held."""
        tenant = self.tenant
        if tenant is not None and (why := tenant.requests_over_budget()) is not None:
            self._stop_reading(r.error(f"ERR Protocol error: {why}"))

    def _note_command(self, args: Any) -> None:
        if type(args) is list and args and type(args[0]) is bytes:
            self.last_command = args[0]

    def _continue_in_task(
        self, pending: Awaitable[bytes] | None, previous: list[bytes] | None, read: bytes, at_start: bool
    ) -> None:
        """Finish the pipeline in a task, reading nothing more until it is done; `previous` is the last request
        taken from the reader, `read` what it was last fed, `at_start` whether that started where a request does."""
        self._previous, self._read, self._read_at_start = previous, read, at_start
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._busy = asyncio.ensure_future(self._drain_async(pending))

    async def _drain_async(self, pending: Awaitable[bytes] | None) -> None:
        try:
            if pending is None:
                await asyncio.sleep(0)  # other clients' turn
            else:
                self._write(await pending)
            out: list[bytes] = []
            spent = 0
            while not self.close_after_reply:
                if self._paused:
                    await self._writable.wait()
                args = self._next()
                if args is False:
                    break
                try:
                    reply = self.execute(args)
                except framing.Malformed as malformed:
                    fed = self._reframe(self._read, self._read_at_start, self._previous, None)
                    if fed is None:
                        out.append(malformed.reply)
                        self.close_after_reply = True
                        break
                    self._read, self._read_at_start = fed, True
                    continue
                self._note_command(args)
                self._previous = args
                if type(reply) is not bytes:
                    if out:
                        self._write(b"".join(out))
                        out, spent = [], 0
                    reply = await reply  # type: ignore[misc]
                out.append(reply)
                spent += len(reply) + _COMMAND_COST
                if spent >= _TURN_BYTES:
                    self._write(b"".join(out))
                    out, spent = [], 0
                    await asyncio.sleep(0)  # other clients' turn (the loop's head then waits while writes are paused)
            if out:
                self._write(b"".join(out))
        except Exception:
            log.exception("command failed on connection %d", self.client_id)
            self._write(_INTERNAL_ERROR)
            self.close_after_reply = True
        finally:
            self._busy = None
            self._read = self._previous = None  # an idle connection holds neither (a large value's bytes)
            transport = self.transport
            if not self._paused and transport is not None and not transport.is_closing():
                transport.resume_reading()
        if self.close_after_reply and self.transport is not None:
            self.transport.close()

    @property
    def busy(self) -> bool:
        return self._busy is not None

    def close(self) -> None:
        """Shutdown's close. A connection with no command in progress and nothing left to send is dropped at once:
        a TLS close would wait for the client's close_notify, which an idle client never sends, for the whole grace
        period. One that is answering finishes first (shutdown calls this again once it is idle)."""
        transport = self.transport
        if transport is None:
            return
        if self._busy is None and not transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def kill(self) -> None:
        """CLIENT KILL: drop the connection now. A TLS close would wait for the peer's close_notify, which an idle
        client never sends, and the connection would linger in CLIENT LIST for the shutdown timeout."""
        self.killed = True
        if self.transport is not None:
            self.transport.abort()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def execute(self, args: Any) -> bytes | Awaitable[bytes]:
        """Run one parsed command: lookup, arity, auth, scope and quota checks in Redis's order, then the handler
        (or, inside MULTI, the queue)."""
        try:
            cmd = COMMANDS.get(args[0].lower())
        except (AttributeError, TypeError, IndexError, KeyError):
            if args == [] or args is None:
                return b""  # `*0` and `*-1`: Redis skips them without a reply
            # Redis refuses these while parsing (`*1\r\n:1`), or reads them as inline requests (`:1`): the drain
            # frames them again, or answers this and closes
            raise framing.Malformed(framing.not_bulk(args[0]) if type(args) is list else framing.NOT_AN_ARRAY) from None
        for arg in args:
            if type(arg) is not bytes:
                raise framing.Malformed(framing.not_bulk(arg))
        if cmd is None:
            return self._refuse(r.unknown_command(args))
        arity, argc = cmd.arity, len(args)  # Command.arity_ok, inlined: one call less per command
        if (argc != arity) if arity > 0 else (argc < -arity):
            return self._refuse(r.wrong_arity(cmd.name), cmd.name)
        self.commands_processed += 1
        tenant = self.tenant
        if tenant is None:
            if not cmd.no_auth:
                return r.NOAUTH
        else:
            if self.session is not None and self.session.revoked:
                self._unbind()
                return cmd.handler(self, args) if cmd.no_auth else r.NOAUTH
            scopes = self.scopes
            if scopes is not None and cmd.scope is not None and cmd.scope not in scopes:
                return self._refuse(r.no_permission(cmd.name, cmd.scope))
            if tenant.bucket is not None and cmd.touches_data and not tenant.admit():
                return self._refuse(r.error(_RATE_LIMITED.format(tenant.name, tenant.bucket.rate)))
            if tenant.shared is not None and cmd.keys_to_load(args):
                missing = [key for key in cmd.keys(args) if key not in tenant.store]
                if missing:
                    return self._run_after_loading(cmd, args, tenant, missing)
            if self.queued is not None and cmd.name not in RUN_INSIDE_MULTI:
                if cmd.subcommands and len(args) > 1:  # a bad subcommand aborts the transaction, as in Redis
                    sub = checked_subcommand(self, cmd.name, cmd.subcommands, args)
                    if isinstance(sub, bytes):
                        return self._refuse(sub)
                return self._queue(cmd, args)
        return cmd.handler(self, args)

    async def _run_after_loading(self, cmd: Command, args: list[bytes], tenant: TenantCache,
                                 missing: list[bytes]) -> bytes:
        """Bring keys another node holds into memory, then queue or run the command as if they had been there:
        DEL, INCR or EXPIRE on a key this node never read acts on the deployment's value, not on nothing."""
        await tenant.load_shared(missing)
        if self.queued is not None and cmd.name not in RUN_INSIDE_MULTI:
            return self._queue(cmd, args)
        reply = cmd.handler(self, args)
        return reply if isinstance(reply, bytes) else await reply

    def lacks_scope(self, cmd: Command) -> bytes | None:
        """NOPERM when the key may not run `cmd` (a subcommand's own check; `execute` inlines the same test)."""
        if self.scopes is not None and cmd.scope is not None and cmd.scope not in self.scopes:
            return self._refuse(r.no_permission(cmd.name, cmd.scope))
        return None

    def describe(self) -> str:
        """This connection as one CLIENT LIST line: Redis's field names, those this server can fill."""
        now = time.monotonic()
        multi = -1 if self.queued is None else len(self.queued)
        fields: dict[str, object] = {
            "id": self.client_id, "addr": self.peer, "laddr": self.local_addr, "name": self.name.decode(),
            "age": int(now - self.connected_at), "idle": int(now - self.last_active),
            "flags": "N" if multi < 0 else "x", "db": 0, "sub": 0, "psub": 0, "multi": multi,
            "watch": len(self.watching), "cmd": self.last_command.decode("utf-8", "replace").lower(),
            "user": self.tenant.name if self.tenant is not None else "default", "resp": self.protocol,
            **self.lib_info,
        }
        return " ".join(f"{k}={v}" for k, v in fields.items())

    def _queue(self, cmd: Command, args: list[bytes]) -> bytes:
        """Queue a command for EXEC, within the request limit: one tenant's transaction cannot hold the
        server's memory any more than one request can: it counts what the queue holds, not just the bytes sent."""
        cost = _QUEUED_COMMAND + _QUEUED_ARG * len(args) + sum(map(len, args))
        self._hold(self.reader.len())  # its bytes as a request are parsed now: counted once, as the queue's
        tenant = self.tenant
        limit = self.state.settings.max_request_bytes
        if self.queued_bytes + cost > limit:
            return self._refuse(r.error(f"ERR transaction larger than {limit} bytes; EXEC will discard it"))
        if tenant.requests_held + cost > tenant.store.budget:  # the queue counts as its requests in flight do
            return self._refuse(r.error(f"ERR transaction over tenant '{tenant.name}''s memory budget with its "
                                        "other requests in flight; EXEC will discard it"))
        self.queued_bytes += cost
        tenant.requests_held += cost
        self.queued.append((cmd, args))  # type: ignore[union-attr]  # the caller checked it
        return r.QUEUED

    def end_queue(self) -> None:
        """MULTI's queue is run, discarded or abandoned: its memory no longer counts against the tenant."""
        if self.tenant is not None:
            self.tenant.requests_held -= self.queued_bytes
        self.queued, self.queue_failed, self.queued_bytes = None, False, 0

    def run_queued(self, cmd: Command, args: list[bytes], queued_for: TenantCache) -> bytes | Awaitable[bytes]:
        """Run a command EXEC took from the queue, checked again against the login in force now, as Redis does:
        a queued AUTH (or HELLO AUTH; Redis queues both) switches key, and maybe tenant, part-way through EXEC,
        and the queue-time checks were made for the old key. `queued_for` is the tenant it was queued for.

        EXEC never yields between its commands (only a read-through to the origin waits): it is isolated from
        other clients as in Redis, and its length is bounded by what `_queue` admits."""
        tenant = self.tenant
        if tenant is None or (self.session is not None and self.session.revoked):
            return r.NOAUTH  # revoked while EXEC waited on the origin: nothing more runs on that key
        if self.scopes is not None and cmd.scope is not None and cmd.scope not in self.scopes:
            return r.no_permission(cmd.name, cmd.scope)
        if tenant is not queued_for:  # the queue-time rate charge and key loading were the old tenant's
            if tenant.bucket is not None and cmd.touches_data and not tenant.admit():
                return r.error(_RATE_LIMITED.format(tenant.name, tenant.bucket.rate))
            if tenant.shared is not None and cmd.keys_to_load(args):
                missing = [key for key in cmd.keys(args) if key not in tenant.store]
                if missing:
                    return self._run_after_loading(cmd, args, tenant, missing)
        return cmd.handler(self, args)

    def _refuse(self, reply: bytes, name: str = "") -> bytes:
        """A command refused inside MULTI fails the whole transaction (EXECABORT), as in Redis; a refused EXEC
        ends it there and then, and says why with EXECABORT even outside MULTI (Redis 7.0 does)."""
        if name == "exec":
            self.end_queue()
            self.unwatch_all()
            reason = reply[1:-2].split(b" ", 1)[1]  # without the error code
            return b"-EXECABORT Transaction discarded because of: " + reason + b"\r\n"
        if self.queued is not None:
            self.queue_failed = True
        return reply

    # state changes used by handlers -------------------------------------------------------------------
    def _bind(self, tenant: TenantCache, session: Session | None = None) -> None:
        self._unbind()
        self._end_login_wait()
        self._unauthenticated = None  # Redis's checks end at the first login (a revoked key keeps the byte limit)
        self.tenant = tenant
        tenant.requests_held += self.request_bytes
        self.session = session
        self.scopes = session.principal.scopes if session is not None else None
        self.commands_at_bind = self.commands_processed
        tenant.connections_received += 1
        per_tenant = self.state.connections.per_tenant
        per_tenant[tenant.name] = per_tenant.get(tenant.name, 0) + 1
        if session is not None and self.state.authenticator is not None:
            self.state.authenticator.attach(session)

    def _end_login_wait(self) -> None:
        if self._login_wait is not None:
            self._login_wait.end()
            self._login_wait = None

    def _login_expired(self, reply: bytes) -> None:
        self._login_wait = None
        self._write(reply)
        self.kill()

    def _unbind(self) -> None:
        self.unwatch_all()
        self.end_queue()
        if self.tenant is not None:
            self.state.connections.per_tenant[self.tenant.name] -= 1
            self.tenant.commands_of_closed += self.commands_processed - self.commands_at_bind
            self.tenant.requests_held -= self.request_bytes
        if self.session is not None and self.state.authenticator is not None:
            self.state.authenticator.detach(self.session)
        self.tenant = None  # type: ignore[assignment]
        self.session = None
        self.scopes = None

    async def login(self, user: bytes | None, password: bytes) -> bytes:
        """AUTH: bind this connection to the key's tenant. Failure leaves the previous login in place."""
        authenticator = self.state.authenticator
        assert authenticator is not None
        bound = self.tenant
        if bound is not None and bound.bucket is not None and not bound.admit():
            # Another login on a logged-in connection asks the key source and writes an audit line, as the first
            # did: a pipeline of them is charged like any other command, or it floods the audit log for free.
            return r.error(_RATE_LIMITED.format(bound.name, bound.bucket.rate))
        try:
            session = await authenticator.login(password.decode("utf-8", "replace"), peer=self.peer, listener="resp")
        except LoginRefused as refused:  # too many failures from this address, or no lookup slot: nothing asked
            return r.error(f"ERR {refused}: try again in {refused.retry_after_s} s")
        if session is None:
            return r.WRONGPASS
        tenant_name = session.principal.tenant
        if user is not None and user not in (b"default", tenant_name.encode()):
            return r.WRONGPASS
        tenant = self.state.tenants.serving(session.principal)
        if tenant is None:
            return r.WRONGPASS
        cap = self.state.settings.resp_max_clients_per_tenant
        if tenant is not bound and self.state.connections.per_tenant.get(tenant.name, 0) >= cap:
            return r.error(f"ERR max number of clients reached: tenant '{tenant.name}' holds {cap} connections "
                           "(resp_max_clients_per_tenant)")
        self._bind(tenant, session)
        return r.OK

    @property
    def null_array(self) -> bytes:
        return r.NULL3 if self.protocol == 3 else r.NULL_ARRAY2

    def watch(self, keys: list[bytes]) -> None:
        store = self.tenant.store
        for key in keys:
            if key not in self.watching:
                self.watching[key] = store.watch(key)

    def watched_keys_changed(self) -> bool:
        store = self.tenant.store
        return any(store.changed_since(key, count) for key, count in self.watching.items())

    def unwatch_all(self) -> None:
        if self.watching:
            store = self.tenant.store
            for key in self.watching:
                store.unwatch(key)
            self.watching = {}

    def set_name(self, name: bytes) -> bytes | None:
        """CLIENT SETNAME's rule; returns the error reply or None."""
        if any(c < 0x21 or c > 0x7E for c in name):
            return r.error("ERR Client names cannot contain spaces, newlines or special characters.")
        self.name = name
        return None

    def set_protocol(self, version: int) -> None:
        self.protocol = version
        self.null = r.NULL3 if version == 3 else r.NULL2
