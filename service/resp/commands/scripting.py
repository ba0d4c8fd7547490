"""EVAL, EVALSHA, their _RO forms and SCRIPT: Lua scripts run against the tenant's keys, atomically.

A script runs synchronously on the event loop, so no other command runs in between; what it calls goes through
the same command table, scope checks and handlers as a client's command. It cannot wait for the origin, so
the keys it declares (KEYS) are read through before it starts, as GET would; a key it reads without declaring
it is seen only if cached. The runtime (`service/resp/scripting.py`) bounds its time and memory.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from service.cache import load_each
from service.origin import OriginError
from service.resp import replies as r
from service.resp.commands import Command, Reply, run_subcommand
from service.resp.commands.strings import parse_int
from service.resp.script_budget import ScriptBudget
from service.resp.scripting import Script, ScriptEngine, ScriptError
from service.store.memory import MemoryStore

if TYPE_CHECKING:
    from service.resp.connection import RespConnection

_NOSCRIPT = r.error("NOSCRIPT No matching script. Please use EVAL.")


def _engine(conn: RespConnection) -> ScriptEngine | bytes:
    """The tenant's runtime, made on first use; or the error, where scripting is turned off for it."""
    tenant = conn.tenant
    settings = conn.state.settings
    if not settings.scripting:
        return r.error("ERR scripting is turned off on this server (the operator's FORESIGHT_SCRIPTING setting)")
    if not tenant.scripting:
        return r.error(f"ERR scripting is turned off for tenant '{tenant.name}' (its quota: tenants create "
                       "--no-scripting)")
    if tenant.scripts is None:
        budget = None if not settings.script_budget_ms_per_s else ScriptBudget(
            time.monotonic(), settings.script_budget_ms_per_s / 1000, settings.script_budget_burst_ms / 1000)
        tenant.scripts = ScriptEngine(settings.script_time_limit_ms / 1000, settings.script_memory_bytes, budget)
    return tenant.scripts


def _evaluate(conn: RespConnection, args: list[bytes], *, by_sha: bool, read_only: bool) -> Reply:
    if by_sha and len(args[1]) != 40:  # no script has that SHA: Redis says so before it reads numkeys
        return _NOSCRIPT
    numkeys = parse_int(args[2])
    if numkeys is None:
        return r.NOT_INTEGER
    if numkeys < 0:
        return r.error("ERR Number of keys can't be negative")
    if numkeys > len(args) - 3:
        return r.error("ERR Number of keys can't be greater than number of args")
    engine = _engine(conn)
    if isinstance(engine, bytes):
        return engine
    if by_sha:
        found = engine.find(args[1].decode("latin-1").lower())
        if found is None:
            return _NOSCRIPT
        script = found
    else:
        try:
            script = engine.load(args[1], keep=False)
        except ScriptError as err:
            return r.error(str(err))
    keys, argv = args[3:3 + numkeys], args[3 + numkeys:]
    read_only = read_only or script.read_only
    tenant = conn.tenant
    if tenant.reads_through:
        if (refused := engine.refusal()) is not None:  # before any origin read for a script that would not run
            return r.error(refused)
        missing = [key for key in dict.fromkeys(keys) if key not in tenant.store]
        if missing:
            return _read_through_then_run(conn, engine, script, keys, argv, read_only, missing)
    return _run(conn, engine, script, keys, argv, read_only)


async def _read_through_then_run(conn: RespConnection, engine: ScriptEngine, script: Script, keys: list[bytes],
                                 argv: list[bytes], read_only: bool, missing: list[bytes]) -> bytes:
    for result in await load_each(conn.tenant.read_through, missing):
        if isinstance(result, OriginError):
            return r.error(f"ERR origin: {result}")
        if isinstance(result, Exception):
            raise result
    return _run(conn, engine, script, keys, argv, read_only)


class _Undo:
    """The keys a script's writes touched, as they were before it: a script is all or nothing to other clients,
    so one the time limit stops must not leave half its writes behind (Redis, which cannot stop a script that
    wrote, keeps it running instead). A script that fails on its own keeps its writes, as in Redis."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.before: dict[bytes, tuple[bytes, int] | None] = {}  # key -> (value, deadline), None: absent

    def note(self, cmd: Command, args: list[bytes]) -> None:
        for key in cmd.keys(args):
            if key not in self.before:
                entry = self.store.entry(key)
                self.before[key] = None if entry is None else (entry.value, entry.expires_at)

    def undo(self) -> None:
        for key, before in self.before.items():
            if before is None:
                self.store.delete(key)
            else:
                self.store.set(key, before[0], before[1])


def _run(conn: RespConnection, engine: ScriptEngine, script: Script, keys: list[bytes], argv: list[bytes],
         read_only: bool) -> bytes:
    """Run the script on the caller's connection, set up for its calls: replies in the script's protocol, reads
    from the cache alone. Nothing else sees the connection meanwhile: the script runs without yielding the loop."""
    protocol, null = conn.protocol, conn.null  # the script's own reply goes to this client, in its protocol
    undo = _Undo(conn.tenant.store)
    conn.cache_only = True
    try:
        reply, stopped = engine.run(script, keys, argv, null,
                                    lambda args, resp: _call(conn, engine, args, resp, read_only, undo))
    finally:
        conn.protocol, conn.null = protocol, null
        del conn.cache_only
    if stopped:
        undo.undo()  # the error says so: "its writes were undone"
    return reply


def _call(conn: RespConnection, engine: ScriptEngine, args: list[bytes], resp: int, read_only: bool,
          undo: _Undo) -> tuple[Any, bytes | None]:
    """One redis.call: the checks in Redis 7.0's order (scriptCall), then the command's own handler."""
    cmd = conn.commands.get(args[0].lower())
    if cmd is None:
        return None, b"Unknown Redis command called from script"
    if not cmd.arity_ok(len(args)):
        return None, b"Wrong number of args calling Redis command from script"
    if "noscript" in cmd.flags:
        return None, b"This Redis command is not allowed from script"
    if read_only and "write" in cmd.flags:
        return None, b"Write commands are not allowed from read-only scripts."
    refused = conn.lacks_scope(cmd)
    if refused is not None:
        return None, refused[:-2]
    if "write" in cmd.flags:
        undo.note(cmd, args)
    conn.protocol, conn.null = resp, r.NULL3 if resp == 3 else r.NULL2
    reply = cmd.handler(conn, args)
    if type(reply) is not bytes:  # a handler that waits: none of those is allowed here, so this is a bug
        raise TypeError(f"{cmd.name} waited inside a script")
    if reply.startswith(b"-"):
        return None, reply[:-2]
    return _from_reply(engine, reply, 0, resp)[0], None


def _from_reply(engine: ScriptEngine, data: bytes, pos: int, resp: int) -> tuple[Any, int]:
    """A RESP reply as Redis 7.0 hands it to Lua: bulk -> string, integer -> number, status -> {ok=}, error ->
    {err=}, array -> table, null -> false (nil after redis.setresp(3)); RESP3's map, set, double, big number and
    verbatim string -> {map=}, {set=}, {double=}, {big_number=}, {verbatim_string={format=, string=}}."""
    end = data.index(b"\r\n", pos)
    kind, line, pos = data[pos:pos + 1], data[pos + 1:end], end + 2
    null = None if resp == 3 else False
    if kind == b"$":
        size = int(line)
        return (null, pos) if size < 0 else (data[pos:pos + size], pos + size + 2)
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return engine.table({b"ok": line}), pos
    if kind == b"-":
        return engine.table({b"err": line}), pos
    if kind == b"_":
        return null, pos
    if kind == b"#":
        return line == b"t", pos
    if kind == b",":
        return engine.table({b"double": float(line)}), pos
    if kind == b"(":
        return engine.table({b"big_number": line}), pos
    if kind == b"=":
        size = int(line)
        text, pos = data[pos:pos + size], pos + size + 2
        return engine.table({b"verbatim_string": engine.table({b"format": text[:3], b"string": text[4:]})}), pos
    if kind not in (b"*", b"%", b"~"):
        raise ValueError(f"a {kind!r} reply cannot be handed to a script")
    count = int(line)
    if count < 0:
        return null, pos
    items = []
    for _ in range(count * 2 if kind == b"%" else count):
        item, pos = _from_reply(engine, data, pos, resp)
        items.append(item)
    if kind == b"%":  # {map = {field = value, ...}}
        return engine.table({b"map": engine.table(dict(zip(items[::2], items[1::2], strict=True)))}), pos
    if kind == b"~":  # {set = {member = true, ...}}
        return engine.table({b"set": engine.table(dict.fromkeys(items, True))}), pos
    return engine.table(items), pos


def eval_(conn: RespConnection, args: list[bytes]) -> Reply:
    return _evaluate(conn, args, by_sha=False, read_only=False)


def evalsha(conn: RespConnection, args: list[bytes]) -> Reply:
    return _evaluate(conn, args, by_sha=True, read_only=False)


def eval_ro(conn: RespConnection, args: list[bytes]) -> Reply:
    return _evaluate(conn, args, by_sha=False, read_only=True)


def evalsha_ro(conn: RespConnection, args: list[bytes]) -> Reply:
    return _evaluate(conn, args, by_sha=True, read_only=True)


# SCRIPT -------------------------------------------------------------------------------------------------------
def _script_load(conn: RespConnection, args: list[bytes]) -> Reply:
    engine = _engine(conn)
    if isinstance(engine, bytes):
        return engine
    try:
        return r.bulk(engine.load(args[2], keep=True).sha.encode())
    except ScriptError as err:
        return r.error(str(err))


def _script_exists(conn: RespConnection, args: list[bytes]) -> Reply:
    """Without a runtime (no script yet, or scripting off) no script exists: none is made to say so."""
    engine = conn.tenant.scripts
    return r.array(r.ONE if engine and engine.find(sha.decode("latin-1").lower()) else r.ZERO for sha in args[2:])


def _script_flush(conn: RespConnection, args: list[bytes]) -> Reply:
    if len(args) > 3 or (len(args) == 3 and args[2].lower() not in (b"sync", b"async")):
        return r.error("ERR SCRIPT FLUSH only support SYNC|ASYNC option")
    if conn.tenant.scripts is not None:
        conn.tenant.scripts.flush()
    return r.OK


def _script_kill(conn: RespConnection, args: list[bytes]) -> Reply:
    """A script holds the event loop until it ends or its time limit stops it, so none runs while this does."""
    return r.error("NOTBUSY No scripts in execution right now.")


_HELP = [
    "SCRIPT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "EXISTS <sha1> [<sha1> ...]",
    "    Return information about the existence of the scripts in the script cache.",
    "FLUSH [ASYNC|SYNC]",
    "    Flush the Lua scripts cache (this tenant's).",
    "KILL",
    "    Answers NOTBUSY: a script that runs past the time limit is stopped by the server.",
    "LOAD <script>",
    "    Load a script into the scripts cache without executing it.",
    "HELP",
    "    Prints this help.",
]


def _script_help(conn: RespConnection, args: list[bytes]) -> Reply:
    return r.array(r.simple(line) for line in _HELP)


def _sub(name: str, arity: int, handler, summary: str, since: str) -> Command:
    return Command(f"script|{name}", arity, frozenset({"noscript"}), handler, group="scripting", summary=summary,
                   since=since)


SCRIPT_SUBCOMMANDS = {
    b"load": _sub("load", 3, _script_load, "Loads a server-side Lua script to the script cache.", "2.6.0"),
    b"exists": _sub("exists", -3, _script_exists, "Determines whether server-side Lua scripts exist in the script "
                    "cache.", "2.6.0"),
    b"flush": _sub("flush", -2, _script_flush, "Removes all server-side Lua scripts from the script cache.",
                   "2.6.0"),
    b"kill": _sub("kill", 2, _script_kill, "Terminates a server-side Lua script during execution.", "2.6.0"),
    b"help": _sub("help", 2, _script_help, "Returns helpful text about the different subcommands.", "5.0.0"),
}


def script(conn: RespConnection, args: list[bytes]) -> Reply:
    return run_subcommand("script", SCRIPT_SUBCOMMANDS, conn, args)


def _cmd(name: str, handler, summary: str, since: str, flags: str = "") -> Command:
    return Command(name, -3, frozenset({"noscript", *flags.split()}), handler, group="scripting", summary=summary,
                   since=since)


COMMANDS = [
    _cmd("eval", eval_, "Executes a server-side Lua script.", "2.6.0"),
    _cmd("evalsha", evalsha, "Executes a server-side Lua script by SHA1 digest.", "2.6.0"),
    _cmd("eval_ro", eval_ro, "Executes a read-only server-side Lua script.", "7.0.0", "readonly"),
    _cmd("evalsha_ro", evalsha_ro, "Executes a read-only server-side Lua script by SHA1 digest.", "7.0.0",
         "readonly"),
    Command("script", -2, frozenset({"noscript"}), script, group="scripting", since="2.6.0",
            summary="A container for Lua scripts management commands.", subcommands=SCRIPT_SUBCOMMANDS),
]
