"""MULTI/EXEC/DISCARD and WATCH/UNWATCH: redis-py's default pipeline is a transaction, so clients use these
without asking for them (Django's set_many, for one).

The connection queues commands between MULTI and EXEC after the same checks it runs on any command (so an
unknown command, a wrong arity or a missing scope fails the transaction at once, as in Redis). EXEC runs
the queue with no other client's command in between, except where a command reads through to the origin:
while that read waits, other clients run. A cache entry's origin copy is the same either way; a client that
needs a strict check-and-set guards it with WATCH, which sees every write, expiry, eviction and flush.

AUTH and HELLO AUTH are queued, as in Redis 7.0, and switch the login at their turn in EXEC; so EXEC checks each
command again against the login in force when it runs (`RespConnection.run_queued`), as Redis re-checks ACLs:
a read-only key AUTHed inside MULTI gets NOPERM for the writes queued after it, under any key it follows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.resp import replies as r
from service.resp.commands import Command, Reply

if TYPE_CHECKING:
    from service.cache import TenantCache
    from service.resp.connection import RespConnection

_EXECABORT = r.error("EXECABORT Transaction discarded because of previous errors.")


def multi(conn: RespConnection, args: list[bytes]) -> Reply:
    if conn.queued is not None:
        return r.error("ERR MULTI calls can not be nested")
    conn.queued, conn.queued_bytes = [], 0
    return r.OK


def exec_(conn: RespConnection, args: list[bytes]) -> Reply:
    queued, failed = conn.queued, conn.queue_failed
    if queued is None:
        return r.error("ERR EXEC without MULTI")
    conn.end_queue()
    changed = conn.watched_keys_changed()
    conn.unwatch_all()
    if failed:
        return _EXECABORT
    if changed:
        return conn.null_array
    tenant = conn.tenant  # every command was queued for it: AUTH outside MULTI empties the queue
    replies: list[bytes] = []
    for i, (cmd, command) in enumerate(queued):
        reply = conn.run_queued(cmd, command, tenant)
        if type(reply) is not bytes:
            return _exec_after_wait(conn, queued[i + 1:], replies, reply, tenant)
        replies.append(reply)
    return r.array(replies)


async def _exec_after_wait(conn: RespConnection, rest: list[tuple[Command, list[bytes]]], replies: list[bytes],
                           pending: Reply, tenant: TenantCache) -> bytes:
    replies.append(await pending)  # type: ignore[misc]
    for cmd, command in rest:
        reply = conn.run_queued(cmd, command, tenant)
        replies.append(reply if type(reply) is bytes else await reply)  # type: ignore[misc]
    return r.array(replies)


def discard(conn: RespConnection, args: list[bytes]) -> Reply:
    if conn.queued is None:
        return r.error("ERR DISCARD without MULTI")
    conn.end_queue()
    conn.unwatch_all()
    return r.OK


def watch(conn: RespConnection, args: list[bytes]) -> Reply:
    if conn.queued is not None:
        return r.error("ERR WATCH inside MULTI is not allowed")
    conn.watch(args[1:])
    return r.OK


def unwatch(conn: RespConnection, args: list[bytes]) -> Reply:
    conn.unwatch_all()
    return r.OK


def _cmd(name: str, arity: int, handler, summary: str, since: str, last_key: int = 0) -> Command:
    return Command(name, arity, frozenset({"connection", "fast", "noscript"}), handler, 1 if last_key else 0, last_key,
                   1 if last_key else 0, "transactions", summary, since)


COMMANDS = [
    _cmd("multi", 1, multi, "Starts a transaction.", "1.2.0"),
    _cmd("exec", 1, exec_, "Executes all commands in a transaction.", "1.2.0"),
    _cmd("discard", 1, discard, "Discards a transaction.", "2.0.0"),
    _cmd("watch", -2, watch, "Monitors changes to keys to determine the execution of a transaction.", "2.2.0", -1),
    _cmd("unwatch", 1, unwatch, "Forgets about watched keys of a transaction.", "2.2.0"),
]

# Run at once inside MULTI, never queued (Redis 7.0's list; RESET is not implemented).
RUN_INSIDE_MULTI = frozenset({"exec", "discard", "multi", "watch", "quit"})
