"""Server commands, scoped to the caller's tenant: INFO, COMMAND, CONFIG GET (INFO's tenant sections:
`service/stats.py`) and FLUSHDB/FLUSHALL, which empty the tenant's keyspace and no other."""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from service import admin
from service.resp import replies as r
from service.resp.commands import Command, Reply, run_subcommand
from service.resp.commands.strings import parse_int
from service.state import REDIS_COMPAT_VERSION
from service.stats import clients_section, memory_section, prefetch_section, stats_section

if TYPE_CHECKING:
    from service.resp.connection import RespConnection

_DEFAULT_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "prefetch", "keyspace")
# What redis-cli --stat and other monitors read, with this server's honest values (no fork, no AOF, no loading).
_PERSISTENCE: list[tuple[str, object]] = [
    ("loading", 0), ("async_loading", 0), ("rdb_bgsave_in_progress", 0), ("aof_enabled", 0),
    ("aof_rewrite_in_progress", 0),
]


def _human(size: int) -> str:
    """Redis's bytesToHuman: 512B, 1.50K, 2.00M, ..."""
    for unit, scale in (("P", 1 << 50), ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.2f}{unit}"
    return f"{size}B"


def _info_sections(conn: RespConnection) -> dict[str, list[tuple[str, object]]]:
    state, tenant = conn.state, conn.tenant
    store = tenant.store
    uptime = int(time.time() - state.started)
    expires = store.keys_with_ttl()
    clients = clients_section(state, tenant)
    keyspace: list[tuple[str, object]] = []
    if len(store):
        keyspace.append(("db0", f"keys={len(store)},expires={expires},avg_ttl=0"))
    return {
        "server": [
            ("redis_version", REDIS_COMPAT_VERSION),
            ("foresight_version", state.version),
            ("redis_mode", "standalone"),
            ("os", os.uname().sysname),
            ("arch_bits", 64),
            ("process_id", os.getpid()),
            ("tcp_port", conn.local_port),
            ("uptime_in_seconds", uptime),
            ("uptime_in_days", uptime // 86400),
            ("tenant", tenant.name),
        ],
        "clients": [
            ("connected_clients", clients["connected_clients"]),
            ("blocked_clients", 0),  # no blocking commands
        ],
        "memory": [*memory_section(tenant).items(), ("used_memory_human", _human(store.used)),
                   ("maxmemory_human", _human(store.budget))],
        "persistence": _PERSISTENCE,
        "stats": [
            ("total_connections_received", clients["total_connections_received"]),
            ("total_commands_processed", clients["total_commands_processed"]),
            *stats_section(tenant).items(),
        ],
        "prefetch": list(prefetch_section(state, tenant).items()),
        "keyspace": keyspace,
    }


def info(conn: RespConnection, args: list[bytes]) -> Reply:
    sections = _info_sections(conn)
    asked = [a.decode("utf-8", "replace").lower() for a in args[1:]]
    if not asked or any(a in ("all", "everything", "default") for a in asked):
        asked = list(_DEFAULT_SECTIONS)
    parts = []
    for name in asked:
        if name in sections:
            lines = "".join(f"{k}:{v}\r\n" for k, v in sections[name])
            parts.append(f"# {name.capitalize()}\r\n{lines}")
    return r.verbatim("\r\n".join(parts), conn.protocol == 3)


def _command_info(cmd: Command, resp3: bool) -> bytes:
    return r.array([
        r.bulk(cmd.name.encode()),
        r.integer(cmd.arity),
        r.set_of([r.simple(f) for f in sorted(cmd.flags - {"connection"})], resp3),
        r.integer(cmd.first_key),
        r.integer(cmd.last_key),
        r.integer(cmd.step),
        r.set_of([r.simple(f"@{cmd.group}")], resp3),
        r.set_of([], resp3),
        r.EMPTY_ARRAY,
        r.array(_command_info(sub, resp3) for sub in cmd.subcommands.values()),
    ])


def _command_doc(cmd: Command, resp3: bool) -> bytes:
    fields = [
        (r.bulk(b"summary"), r.bulk(cmd.summary.encode())),
        (r.bulk(b"since"), r.bulk(cmd.since.encode())),
        (r.bulk(b"group"), r.bulk(cmd.group.encode())),
    ]
    if cmd.subcommands:
        subs = [(r.bulk(s.name.encode()), _command_doc(s, resp3)) for s in cmd.subcommands.values()]
        fields.append((r.bulk(b"subcommands"), r.mapping(subs, resp3)))
    return r.mapping(fields, resp3)


def command(conn: RespConnection, args: list[bytes]) -> Reply:
    if len(args) == 1:
        return r.array(_command_info(c, conn.protocol == 3) for c in conn.commands.values())
    return run_subcommand("command", COMMAND_SUBCOMMANDS, conn, args)


def _command_count(conn: RespConnection, args: list[bytes]) -> Reply:
    return r.integer(len(conn.commands))


def _named(conn: RespConnection, args: list[bytes]) -> list[bytes]:
    """The command names DOCS and INFO were given, or every one."""
    return [a.lower() for a in args[2:]] or list(conn.commands)


def _command_docs(conn: RespConnection, args: list[bytes]) -> Reply:
    table = conn.commands
    found = [(r.bulk(n), _command_doc(table[n], conn.protocol == 3)) for n in _named(conn, args) if n in table]
    return r.mapping(found, conn.protocol == 3)


def _command_info_of(conn: RespConnection, args: list[bytes]) -> Reply:
    table = conn.commands
    return r.array(_command_info(table[n], conn.protocol == 3) if n in table else conn.null
                   for n in _named(conn, args))


def _config_values(conn: RespConnection) -> dict[str, str]:
    store = conn.tenant.store
    return {
        "maxmemory": str(store.budget),
        "maxmemory-policy": store.policy.name,
        "databases": "1",
        "save": "",
        "appendonly": "no",
        "timeout": "0",
        "port": str(conn.local_port),
    }


def config(conn: RespConnection, args: list[bytes]) -> Reply:
    return run_subcommand("config", CONFIG_SUBCOMMANDS, conn, args)


def _config_get(conn: RespConnection, args: list[bytes]) -> Reply:
    values = _config_values(conn)
    patterns = [a.decode("utf-8", "replace").lower() for a in args[2:]]
    matched = [(k, v) for k, v in values.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    return r.mapping([(r.bulk(k.encode()), r.bulk(v.encode())) for k, v in matched], conn.protocol == 3)


def memory(conn: RespConnection, args: list[bytes]) -> Reply:
    return run_subcommand("memory", MEMORY_SUBCOMMANDS, conn, args)


def _memory_usage(conn: RespConnection, args: list[bytes]) -> Reply:
    """MEMORY USAGE: the bytes the entry is charged against the tenant's budget (key, value and overhead)."""
    for i in range(3, len(args), 2):  # SAMPLES n, repeatable; nothing is sampled here
        if args[i].lower() != b"samples" or i + 1 >= len(args):
            return r.SYNTAX
        samples = parse_int(args[i + 1])
        if samples is None:
            return r.NOT_INTEGER
        if samples < 0:
            return r.SYNTAX
    entry = conn.tenant.store.entry(args[2])
    return conn.null if entry is None else r.integer(entry.size)


def flush(conn: RespConnection, args: list[bytes]) -> Reply:
    """The tenant's keys are its one database, so FLUSHALL empties the same keys as FLUSHDB."""
    if len(args) > 2 or (len(args) == 2 and args[1].lower() not in (b"sync", b"async")):
        return r.SYNTAX
    key_id = conn.session.principal.key_id if conn.session is not None else None
    return _flushed(admin.flush(conn.state, conn.tenant, key_id, conn.peer, args[0].decode("ascii").lower()))


async def _flushed(flushing: Awaitable[int]) -> bytes:
    await flushing
    return r.OK


def time_(conn: RespConnection, args: list[bytes]) -> Reply:
    """TIME: the server's clock (rate limiters' scripts read it), seconds and microseconds."""
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    return r.array((r.bulk(b"%d" % seconds), r.bulk(b"%d" % micros)))


def _sub(name: str, arity: int, flags: str, handler, summary: str, since: str, scope: str | None = None) -> Command:
    return Command(name, arity, frozenset(flags.split()), handler, group="server", summary=summary, since=since,
                   scope=scope)


COMMAND_SUBCOMMANDS = {
    b"count": _sub("command|count", 2, "connection", _command_count, "Returns a count of commands.", "2.8.13"),
    b"docs": _sub("command|docs", -2, "connection", _command_docs, "Returns documentary information about one, "
                  "multiple or all commands.", "7.0.0"),
    b"info": _sub("command|info", -2, "connection", _command_info_of, "Returns information about one, multiple or "
                  "all commands.", "2.8.13"),
}
CONFIG_SUBCOMMANDS = {
    b"get": _sub("config|get", -3, "admin noscript", _config_get, "Returns the effective values of configuration "
                 "parameters.", "2.0.0", scope="read"),
}
MEMORY_SUBCOMMANDS = {
    b"usage": _sub("memory|usage", -3, "readonly", _memory_usage, "Estimates the memory usage of a key.", "4.0.0"),
}

COMMANDS = [
    Command("time", 1, frozenset({"fast", "connection"}), time_, group="server", since="2.6.0",
            summary="Returns the server time."),
    Command("info", -1, frozenset({"connection"}), info, group="server",
            summary="Returns information and statistics about the server."),
    Command("command", -1, frozenset({"connection"}), command, group="server",
            summary="Returns detailed information about all commands.", since="2.8.13",
            subcommands=COMMAND_SUBCOMMANDS),
    # Containers carry no scope: each subcommand's own, so that NOPERM names it (`config|get`) as Redis does.
    Command("config", -2, frozenset({"admin", "noscript"}), config, group="server",
            summary="A container for server configuration commands.", since="2.0.0", subcommands=CONFIG_SUBCOMMANDS),
    Command("memory", -2, frozenset(), memory, group="server", since="4.0.0",
            summary="A container for memory diagnostics commands.", subcommands=MEMORY_SUBCOMMANDS),
    # Not from scripts: a flush waits for its audit record, and a script cannot wait.
    Command("flushdb", -1, frozenset({"write", "noscript"}), flush, group="server", scope="admin",
            summary="Removes all keys from the current database."),
    Command("flushall", -1, frozenset({"write", "noscript"}), flush, group="server", scope="admin",
            summary="Removes all keys from all databases."),
]
