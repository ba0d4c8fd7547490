"""One RESP client connection: parse with hiredis, dispatch through the command table, keep reply order.

Most commands answer synchronously, so a burst of pipelined commands is parsed, executed and answered
with one write. A command that must wait (a read-through to the origin, an AUTH that asks the key source)
returns an awaitable; the connection then finishes the rest of the pipeline in a task, in order.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable
from typing import Any, cast

import hiredis

from service.auth import LoginRefused, Session
from service.cache import TenantCache
from service.resp import replies as r
from service.resp.commands import Command, build_table
from service.resp.commands.transactions import RUN_INSIDE_MULTI
from service.state import ServiceState

log = logging.getLogger(__name__)

COMMANDS: dict[bytes, Command] = build_table()
_RATE_LIMITED = "ERR rate limit exceeded: tenant '{}' allows {:g} requests per second"
_HIGH_WATER = 1 << 20  # pause reading when this much reply data waits to be sent
# Before AUTH a client may buffer only this much: nobody can make the server hold gigabytes unauthenticated.
UNAUTHENTICATED_MAX_REQUEST = 64 * 1024
# Redis 7.0's own limits before AUTH, checked on each request's headers as they arrive: at most this many
# arguments, each at most this long (the requests before it are answered, then its error, then the close).
UNAUTHENTICATED_MAX_ARGS = 10
UNAUTHENTICATED_MAX_BULK = 16 * 1024
_UNAUTH_MULTIBULK = r.error("ERR Protocol error: unauthenticated multibulk length")
_UNAUTH_BULK = r.error("ERR Protocol error: unauthenticated bulk length")
_INTERNAL_ERROR = r.error("ERR internal error")
_LENGTH = re.compile(rb"-?[0-9]{1,19}")


def _first_request(buf: bytearray) -> int | bytes | None:
    """Walk the headers of the first request in `buf` as Redis does for a client that has not authenticated:
    Redis's error when it breaks a limit above, else its length once it is complete (0 until then); None when it
    is not an array of bulk strings (hiredis, or the dispatch, refuses that)."""
    end = buf.find(b"\r\n")
    if end < 0:
        return 0
    if buf[:1] != b"*" or not _LENGTH.fullmatch(buf, 1, end):
        return None
    count = int(buf[1:end])
    if count > UNAUTHENTICATED_MAX_ARGS:
        return _UNAUTH_MULTIBULK
    pos = end + 2
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return 0
        if buf[pos:pos + 1] != b"$" or not _LENGTH.fullmatch(buf, pos + 1, end):
            return None
        size = int(buf[pos + 1:end])
        if size > UNAUTHENTICATED_MAX_BULK:
            return _UNAUTH_BULK
        if size < 0:
            return None
        pos = end + 2 + size + 2
        if pos > len(buf):
            return 0
    return pos


class RespConnection(asyncio.Protocol):
    commands = COMMANDS
    cache_only = False  # True while a script runs its calls: reads see the cache and never wait for the origin

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        # Bytes received since the last complete request: the request-size limits' measure. Not reader.len(), which
        # drops what hiredis has parsed of a request still arriving (a huge array, sent in pieces, never grew it).
        self.request_bytes = 0
        # Until the first AUTH binds it, a copy of what hiredis holds, from the next request on: Redis's limits
        # on an unauthenticated request are on its headers, which hiredis does not show until it is complete.
        self._unauthenticated: bytearray | None = bytearray()
        self.client_id = state.next_client_id()
        self.name = b""
        self.lib_info: dict[str, str] = {}
        self.protocol = 2
        self.null = r.NULL2
        self.tenant: TenantCache = None  # type: ignore[assignment]  # None until AUTH (or the dev tenant)
        self.session: Session | None = None
        self.scopes: frozenset[str] | None = None  # the key's scopes; None: every one (the dev tenant)
        self.queued: list[tuple[Command, list[bytes]]] | None = None  # MULTI's queue; None outside MULTI
        self.queue_failed = False  # a command was refused inside MULTI: EXEC aborts
        self.queued_bytes = 0  # the queue's argument bytes
        self.watching: dict[bytes, int] = {}  # WATCHed key -> the store's change count when watched
        self.close_after_reply = False
        self.commands_processed = 0
        self.commands_at_bind = 0  # commands_processed when it bound to its tenant
        self.local_port = 0
        self.local_addr = "?"
        self.peer = "?"
        self.connected_at = self.last_active = time.monotonic()  # CLIENT LIST's age and idle
        self.last_command = b""  # CLIENT LIST's cmd: the last command of the last read (noted once a read)
        self._busy: asyncio.Task[None] | None = None
        self._paused = False

    # asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        sockname = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        self.local_port = sockname[1] if sockname else 0
        self.local_addr = f"{sockname[0]}:{sockname[1]}" if sockname else "?"
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        counters = self.state.connections
        counters.current += 1
        self.state.resp_clients.add(self)
        dev = self.state.dev_tenant()
        if dev is not None:
            self._bind(dev)

    def connection_lost(self, exc: Exception | None) -> None:
        counters = self.state.connections
        counters.current -= 1
        counters.commands += self.commands_processed
        self.state.resp_clients.discard(self)
        self._unbind()
        if self._busy is not None:
            self._busy.cancel()

    def pause_writing(self) -> None:
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()  # once a read, not once a command
        self.request_bytes += len(data)
        limit = UNAUTHENTICATED_MAX_REQUEST if self.tenant is None else self.state.settings.max_request_bytes
        if self.request_bytes > limit:
            self._write(r.error(f"ERR Protocol error: request larger than {limit} bytes"))
            self.close_after_reply = True
            self.close()
            return
        self.reader.feed(data)
        if self._unauthenticated is not None:
            self._unauthenticated += data
        if self._busy is None:
            self._drain_sync()

    # dispatch -----------------------------------------------------------------------------------------
    def _next(self) -> Any:
        if self._unauthenticated is not None and (refusal := self._check_unauthenticated()) is not None:
            self._write(refusal)
            self.close_after_reply = True
            return False
        try:
            args = self.reader.gets()
        except hiredis.ProtocolError as err:
            self._write(r.error(f"ERR Protocol error: {err}"))
            self.close_after_reply = True
            return False
        if args is not False:
            self.request_bytes = self.reader.len()
        return args

    def _check_unauthenticated(self) -> bytes | None:
        """Redis's error when the next request breaks its limits before AUTH; else None, and a complete request
        leaves the copy (hiredis parses the same bytes next)."""
        buf = self._unauthenticated
        assert buf is not None
        first = _first_request(buf)
        if first is None:
            self._unauthenticated = None  # not a request hiredis will let through: the byte limit still holds
        elif isinstance(first, bytes):
            return first
        elif first:
            del buf[:first]
        return None

    def _drain_sync(self) -> None:
        """Answer every complete command in the buffer; hand over to a task at the first that must wait."""
        out: list[bytes] = []
        execute, gets = self.execute, self.reader.gets
        last: Any = None
        try:
            while not self.close_after_reply:
                if self._unauthenticated is not None and (refusal := self._check_unauthenticated()) is not None:
                    out.append(refusal)
                    self.close_after_reply = True
                    break
                args = gets()
                if args is False:
                    break
                last = args
                try:
                    reply = execute(args)
                except Exception:  # a bug in one command: it answers an error, the rest of the pipeline runs
                    log.exception("command failed on connection %d", self.client_id)
                    reply = _INTERNAL_ERROR
                if type(reply) is bytes:
                    out.append(reply)
                else:
                    if out:
                        self._write(b"".join(out))
                    self._note_command(last)
                    self.request_bytes = self.reader.len()
                    self._busy = asyncio.ensure_future(self._drain_async(reply))  # type: ignore[arg-type]
                    return
        except hiredis.ProtocolError as err:
            out.append(r.error(f"ERR Protocol error: {err}"))
            self.close_after_reply = True
        if last is not None:  # requests answered: what counts against the limit now is the next one's bytes so far
            self.request_bytes = self.reader.len()  # (once per drain, not per command: this is the hot path)
        self._note_command(last)
        if out:
            self._write(b"".join(out))
        if self.close_after_reply and self.transport is not None:
            self.transport.close()

    def _note_command(self, args: Any) -> None:
        if type(args) is list and args and type(args[0]) is bytes:
            self.last_command = args[0]

    async def _drain_async(self, pending: Awaitable[bytes]) -> None:
        try:
            self._write(await pending)
            out: list[bytes] = []
            while not self.close_after_reply:
                args = self._next()
                if args is False:
                    break
                self._note_command(args)
                reply = self.execute(args)
                if type(reply) is not bytes:
                    if out:
                        self._write(b"".join(out))
                        out = []
                    reply = await reply  # type: ignore[misc]
                out.append(reply)
            if out:
                self._write(b"".join(out))
        except Exception:
            log.exception("command failed on connection %d", self.client_id)
            self._write(_INTERNAL_ERROR)
            self.close_after_reply = True
        finally:
            self._busy = None
        if self.close_after_reply and self.transport is not None:
            self.transport.close()

    @property
    def busy(self) -> bool:
        return self._busy is not None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def kill(self) -> None:
        """CLIENT KILL: drop the connection now. A TLS close would wait for the peer's close_notify, which an idle
        client never sends, and the connection would linger in CLIENT LIST for the shutdown timeout."""
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
            self.close_after_reply = True
            return r.error("ERR Protocol error: expected an array of bulk strings")
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
        server's memory any more than one request can."""
        self.queued_bytes += sum(map(len, args))
        limit = self.state.settings.max_request_bytes
        if self.queued_bytes > limit:
            return self._refuse(r.error(f"ERR transaction larger than {limit} bytes; EXEC will discard it"))
        self.queued.append((cmd, args))  # type: ignore[union-attr]  # the caller checked it
        return r.QUEUED

    def run_queued(self, cmd: Command, args: list[bytes], queued_for: TenantCache) -> bytes | Awaitable[bytes]:
        """Run a command EXEC took from the queue, checked again against the login in force now, as Redis does:
        a queued AUTH (or HELLO AUTH; Redis queues both) switches key, and maybe tenant, part-way through EXEC,
        and the queue-time checks were made for the old key. `queued_for` is the tenant it was queued for."""
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
            self.queued, self.queue_failed = None, False
            self.unwatch_all()
            reason = reply[1:-2].split(b" ", 1)[1]  # without the error code
            return b"-EXECABORT Transaction discarded because of: " + reason + b"\r\n"
        if self.queued is not None:
            self.queue_failed = True
        return reply

    # state changes used by handlers -------------------------------------------------------------------
    def _bind(self, tenant: TenantCache, session: Session | None = None) -> None:
        self._unbind()
        self._unauthenticated = None  # Redis's checks end at the first login (a revoked key keeps the byte limit)
        self.tenant = tenant
        self.session = session
        self.scopes = session.principal.scopes if session is not None else None
        self.commands_at_bind = self.commands_processed
        tenant.connections_received += 1
        per_tenant = self.state.connections.per_tenant
        per_tenant[tenant.name] = per_tenant.get(tenant.name, 0) + 1
        if session is not None and self.state.authenticator is not None:
            self.state.authenticator.attach(session)

    def _unbind(self) -> None:
        self.unwatch_all()
        self.queued, self.queue_failed = None, False
        if self.tenant is not None:
            self.state.connections.per_tenant[self.tenant.name] -= 1
            self.tenant.commands_of_closed += self.commands_processed - self.commands_at_bind
        if self.session is not None and self.state.authenticator is not None:
            self.state.authenticator.detach(self.session)
        self.tenant = None  # type: ignore[assignment]
        self.session = None
        self.scopes = None

    async def login(self, user: bytes | None, password: bytes) -> bytes:
        """AUTH: bind this connection to the key's tenant. Failure leaves the previous login in place."""
        authenticator = self.state.authenticator
        assert authenticator is not None
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
