"""Lua scripting (EVAL and friends) for one tenant: Redis 7.0's Lua 5.1 semantics in a sandboxed runtime.

Each tenant gets its own Lua runtime, so one tenant's scripts, globals and memory never meet another's. A
script runs on the event loop like any command (that is what makes it atomic), so it is bounded: an
instruction-count hook stops a script that runs past the time limit, and the runtime's allocator refuses
memory past the memory limit. The time limit bounds one script; what all of a tenant's scripts may hold the loop
for is its budget of script time (`script_budget.py`), charged with what each run and compile took.

What is left out of Redis's Lua environment is left out because it could escape the sandbox or dodge the limits:
`coroutine` (a coroutine runs without the hook), bytecode loading, `setfenv`/`getfenv`; cmsgpack, struct and bit
are not built. The sandbox, cjson and the pattern functions (find, match, gmatch, gsub) are Lua, in `lua/`.

Conversions between Lua values and replies, the error formats and the read-only global table follow Redis
7.0 byte for byte where the differential test checks them (tests/service/test_scripting.py).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lupa import lua51

from service.resp import replies as r
from service.resp.script_budget import ScriptBudget

# Scripts that EVAL compiled are dropped oldest-first past this many (Redis 7.4 does the same); SCRIPT LOAD's stay.
EVAL_SCRIPTS_KEPT = 500

_LUA = resources.files("service.resp") / "lua"
_SANDBOX = (_LUA / "sandbox.lua").read_text()  # builds the sandbox, the runner and the compiler
# Handed to the sandbox, which loads them as Lua chunks of its own:
_CJSON = (_LUA / "cjson.lua").read_bytes()
_PATTERNS = (_LUA / "patterns.lua").read_bytes()


_SHEBANG_FLAGS = ("no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys")


class ScriptError(Exception):
    """A script that cannot be compiled or a shebang that cannot be read; the message is Redis's error line."""


def sha1hex(body: bytes) -> str:
    return hashlib.sha1(body).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1; not a security use


def read_shebang(body: bytes) -> tuple[bytes, bool]:
    """The script without its `#!lua flags=...` line (kept as an empty line, so line numbers hold) and whether
    it declared `no-writes`. Raises ScriptError where Redis 7.0's evalExtractShebangFlags refuses it."""
    if not body.startswith(b"#!"):
        return body, False
    line, newline, rest = body.partition(b"\n")
    if not newline:
        raise ScriptError("ERR Invalid script shebang")
    engine, *options = line.decode("utf-8", "replace").split()
    if engine != "#!lua":
        raise ScriptError(f"ERR Unexpected engine in script shebang: {engine}")
    read_only = False
    for option in options:
        if not option.startswith("flags="):
            raise ScriptError(f"ERR Unknown lua shebang option: {option}")
        flags = option[len("flags="):]
        for flag in flags.split(",") if flags else []:
            if flag not in _SHEBANG_FLAGS:
                raise ScriptError(f"ERR Unexpected flag in script shebang: {flag}")
            read_only = read_only or flag == "no-writes"
    return newline + rest, read_only


@dataclass
class ScriptStats:
    """What the operator's metrics show of a tenant's scripts."""

    runs: int = 0
    stopped: int = 0  # past the time limit
    out_of_memory: int = 0
    refused: int = 0  # EVALs and compiles refused while the tenant's script time budget was spent


class Script:
    """A compiled script and what its shebang declared."""

    __slots__ = ("function", "read_only", "sha")

    def __init__(self, sha: str, function: Any, read_only: bool) -> None:
        self.sha, self.function, self.read_only = sha, function, read_only


class CommandError(Exception):
    """A redis.call that failed, raised into the script. Its `text` is the error as the script sees it."""

    def __init__(self, text: bytes) -> None:
        super().__init__(text.decode("utf-8", "replace"))
        self.text = text


def error_text(line: bytes) -> bytes:
    """Redis's luaPushErrorBuff: a reply's "-CODE message" (or a bare message, which gets ERR) as a script sees it."""
    code, message = b"ERR", line
    if line.startswith(b"-"):
        first, space, rest = line[1:].partition(b" ")
        code, message = (first, rest) if space else (b"ERR", line[1:])
    return code + b" " + message.strip(b"\r\n")


def _sha1hex(*args: Any) -> bytes:
    """redis.sha1hex: of a string, or of a number as Lua writes it (%.14g)."""
    if len(args) != 1:
        raise CommandError(b"ERR wrong number of arguments")
    value = args[0]
    text = value if type(value) is bytes else b"%.14g" % value if type(value) in (int, float) else b""
    return sha1hex(text).encode()


def _error_of(exc: BaseException) -> bytes:
    return exc.text if isinstance(exc, CommandError) else f"ERR {exc}".encode()


# What a script's call runs: the command's arguments and the script's protocol in, (Lua value, None) or
# (None, error line) out.
Dispatch = Callable[[list[bytes], int], tuple[Any, bytes | None]]


class ScriptEngine:
    """One tenant's Lua runtime and script cache. `run` is synchronous: `dispatch` answers each redis.call from the
    cache alone (the caller read the declared keys through before)."""

    def __init__(self, time_limit_s: float, memory_bytes: int, budget: ScriptBudget | None = None) -> None:
        """`budget`: the tenant's share of the loop for its scripts (None: no such bound, one tenant alone)."""
        self.time_limit_s = time_limit_s
        self.memory_bytes = memory_bytes
        self._lua = lua51.LuaRuntime(encoding=None, register_eval=False, register_builtins=False,
                                     unpack_returned_tuples=True, max_memory=memory_bytes)
        self._dispatch: Dispatch | None = None
        self._resp = 2
        self.stats = ScriptStats()
        self.budget = budget
        self._run, self._compile, self._reclaim = self._lua.execute(
            _SANDBOX, self._call, self._pcall, error_text, _error_of, self._set_resp, _sha1hex, time.monotonic,
            _CJSON, _PATTERNS,
        )
        self._loaded: dict[str, Script] = {}  # SCRIPT LOAD: kept until SCRIPT FLUSH
        self._evaluated: OrderedDict[str, Script] = OrderedDict()  # EVAL: the least recently run go first

    def __len__(self) -> int:
        return len(self._loaded.keys() | self._evaluated.keys())

    @property
    def memory_used(self) -> int:
        return int(self._lua.get_memory_used() or 0)

    def load(self, body: bytes, *, keep: bool) -> Script:
        """Compile (or find) a script; `keep` for SCRIPT LOAD, which the EVAL cache's eviction never drops.
        Raises ScriptError with Redis's compile error, or BUSY while the budget is spent (compiling holds the loop
        too: a tenant could otherwise spend it on scripts it never runs)."""
        sha = sha1hex(body)
        script = self.find(sha)
        if script is None:
            started = time.monotonic()
            refused = self.refusal(started)
            if refused is not None:
                raise ScriptError(refused)
            source, read_only = read_shebang(body)
            try:
                function, err = self._compile(source)
            except lua51.LuaMemoryError:
                raise ScriptError("ERR Error compiling script: the tenant's script memory is full") from None
            finally:
                if self.budget is not None:
                    self.budget.charge(started, time.monotonic())
            if function is None:
                raise ScriptError(f"ERR Error compiling script (new function): {err.decode('utf-8', 'replace')}")
            script = Script(sha, function, read_only)
        if keep:
            self._loaded[sha] = script
        elif sha not in self._loaded:
            self._evaluated[sha] = script
            self._evaluated.move_to_end(sha)
            while len(self._evaluated) > EVAL_SCRIPTS_KEPT:
                self._evaluated.popitem(last=False)
        return script

    def find(self, sha: str) -> Script | None:
        return self._loaded.get(sha) or self._evaluated.get(sha)

    def flush(self) -> None:
        self._loaded.clear()
        self._evaluated.clear()
        self._reclaim()

    def run(self, script: Script, keys: list[bytes], argv: list[bytes], null: bytes,
            dispatch: Dispatch) -> tuple[bytes, bool]:
        """Run a script to its reply, in the protocol whose null is `null`, and whether the time limit stopped it
        (the caller then undoes its writes, as the reply says). While the tenant's budget is spent the reply is
        BUSY and nothing runs; otherwise the run, its calls and any cleanup are charged to the budget."""
        started = time.monotonic()
        refused = self.refusal(started)
        if refused is not None:
            return r.error(refused), False
        try:
            return self._run_admitted(script, keys, argv, null, dispatch, started + self.time_limit_s)
        finally:
            if self.budget is not None:
                self.budget.charge(started, time.monotonic())

    def refusal(self, now: float | None = None) -> str | None:
        """BUSY's line while the tenant's budget is spent (counted as a refusal), else None: asked before anything
        runs, compiles or reads its keys through from the origin."""
        if self.budget is None:
            return None
        refused = self.budget.refusal(time.monotonic() if now is None else now)
        if refused is not None:
            self.stats.refused += 1
        return refused

    def _run_admitted(self, script: Script, keys: list[bytes], argv: list[bytes], null: bytes, dispatch: Dispatch,
                      deadline: float) -> tuple[bytes, bool]:
        self._dispatch, self._resp = dispatch, 2
        self.stats.runs += 1
        try:
            reply, stopped = self._run(script.function, script.sha.encode(), null, deadline, self.time_limit_s,
                                       self.table(keys), self.table(argv))
        except lua51.LuaMemoryError:
            reply, stopped = None, False
        finally:
            self._dispatch = None
        if stopped:
            self.stats.stopped += 1
        if reply is None:
            self.stats.out_of_memory += 1
            self._reclaim()
            return b"-ERR script ran out of memory: the tenant's scripts may use %d bytes script: %b.\r\n" % (
                self.memory_bytes, script.sha.encode()), False
        return reply, stopped

    def table(self, items: list[Any] | dict[bytes, Any]) -> Any:
        return self._lua.table_from(items)

    # what the sandbox calls ----------------------------------------------------------------------------------
    def _set_resp(self, version: int) -> None:
        self._resp = version

    def _command(self, args: tuple[Any, ...]) -> tuple[Any, bytes | None]:
        if not args:
            return None, b"Please specify at least one argument for this redis lib call"
        argv: list[bytes] = []
        for arg in args:
            if type(arg) is bytes:
                argv.append(arg)
            elif type(arg) in (int, float):
                argv.append(b"%.17g" % arg)  # Lua numbers are doubles; Redis formats them so
            else:
                return None, b"Lua redis lib command arguments must be strings or integers"
        assert self._dispatch is not None, "redis.call outside a script run"
        return self._dispatch(argv, self._resp)

    def _call(self, *args: Any) -> Any:
        value, err = self._command(args)
        if err is not None:
            raise CommandError(error_text(err))
        return value

    def _pcall(self, *args: Any) -> Any:
        value, err = self._command(args)
        return self.table({b"err": error_text(err)}) if err is not None else value
