"""Redis's model: one command table of (name, arity, flags, handler); the connection consults nothing else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.resp import replies as r

if TYPE_CHECKING:
    from service.resp.connection import RespConnection

Reply = bytes | Awaitable[bytes]
_LOADS_OR_OVERWRITES = frozenset({"get", "mget", "getex", "getrange", "substr", "getbit", "bitcount", "bitpos", "lcs",
                                  "set", "mset", "setex", "psetex"})
Handler = Callable[["RespConnection", list[bytes]], Reply]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    arity: int  # Redis convention: N exactly N arguments (name included), -N at least N
    flags: frozenset[str]
    handler: Handler
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    group: str = "generic"
    summary: str = ""
    since: str = "1.0.0"
    subcommands: dict[bytes, Command] = field(default_factory=dict)
    # The API key scope it needs, as Redis's ACL categories go: @read commands "read", @write ones "write"
    # (those that also return a value, GETSET or GETDEL, included). Derived from the flags unless given.
    scope: str | None = None

    no_auth: bool = field(init=False)
    touches_data: bool = field(init=False)  # charged against the tenant's rate quota
    # With a shared tier: whether the keys it names must be in memory before it runs (it reads, tests or changes
    # what is there). Not for commands that load their own keys (GET, MGET, GETEX, GETRANGE, GETBIT, BITCOUNT,
    # BITPOS, LCS, scripts) or that only overwrite (SET without options, MSET, SETEX, PSETEX).
    needs_keys: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "no_auth", "no_auth" in self.flags)
        object.__setattr__(self, "touches_data", "connection" not in self.flags)
        object.__setattr__(self, "needs_keys", self.first_key > 0 and self.name not in _LOADS_OR_OVERWRITES)
        if self.scope is None:
            derived = "write" if "write" in self.flags else "read" if "readonly" in self.flags else None
            object.__setattr__(self, "scope", derived)

    def arity_ok(self, argc: int) -> bool:
        return argc == self.arity if self.arity > 0 else argc >= -self.arity

    def keys(self, args: list[bytes]) -> list[bytes]:
        """The key arguments, by Redis's (first, last, step) convention (step 0: the command names no key)."""
        if not self.step:
            return []
        last = len(args) + self.last_key if self.last_key < 0 else self.last_key
        return args[self.first_key : last + 1 : self.step]

    def keys_to_load(self, args: list[bytes]) -> bool:
        """Whether this call needs its keys in memory first (SET with options tests the key; plain SET does not)."""
        return self.needs_keys or (self.name == "set" and len(args) > 3)


def find_subcommand(container: str, table: dict[bytes, Command], args: list[bytes]) -> Command | bytes:
    """The subcommand args[1] names, or Redis's error for an unknown one or one with the wrong arity."""
    sub = table.get(args[1].lower())
    if sub is None:
        return r.unknown_subcommand(container, args[1])
    if not sub.arity_ok(len(args)):
        return r.wrong_arity(sub.name)
    return sub


def checked_subcommand(conn: RespConnection, container: str, table: dict[bytes, Command],
                       args: list[bytes]) -> Command | bytes:
    """The subcommand args[1] names once its arity and the key's scope allow it, else Redis's error: what running
    one checks, and MULTI when it queues one."""
    sub = find_subcommand(container, table, args)
    return sub if isinstance(sub, bytes) else conn.lacks_scope(sub) or sub


def run_subcommand(container: str, table: dict[bytes, Command], conn: RespConnection, args: list[bytes]) -> Reply:
    sub = checked_subcommand(conn, container, table, args)
    return sub if isinstance(sub, bytes) else sub.handler(conn, args)


def build_table() -> dict[bytes, Command]:
    from service.resp.commands import bits, connection, keyspace, scripting, server, strings, transactions

    table: dict[bytes, Command] = {}
    for module in (bits, connection, keyspace, scripting, server, strings, transactions):
        for command in module.COMMANDS:
            table[command.name.encode()] = command
    return table
