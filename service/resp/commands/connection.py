"""Connection commands: AUTH, HELLO, PING, ECHO, SELECT, QUIT and CLIENT."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.resp import replies as r
from service.resp.commands import Command, Reply, checked_subcommand
from service.resp.commands.strings import parse_int
from service.state import REDIS_COMPAT_VERSION

if TYPE_CHECKING:
    from service.resp.connection import RespConnection

_NO_PASSWORD = r.error(
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)
_HELLO_NOAUTH = r.error(
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH "
    "<user> <pass> option can be used to authenticate the client and select the RESP protocol version at "
    "the same time"
)


def auth(conn: RespConnection, args: list[bytes]) -> Reply:
    if len(args) > 3:
        return r.SYNTAX
    if not conn.state.auth_required:
        # Redis's passwordless default user: AUTH <pass> is a misconfiguration, AUTH default <any> succeeds.
        if len(args) == 2:
            return _NO_PASSWORD
        return r.OK if args[1] == b"default" else r.WRONGPASS
    return conn.login(args[1] if len(args) == 3 else None, args[-1])


def ping(conn: RespConnection, args: list[bytes]) -> Reply:
    if len(args) > 2:
        return r.wrong_arity("ping")
    return r.PONG if len(args) == 1 else r.bulk(args[1])


def echo(conn: RespConnection, args: list[bytes]) -> Reply:
    return r.bulk(args[1])


def select(conn: RespConnection, args: list[bytes]) -> Reply:
    index = parse_int(args[1])
    if index is None:
        return r.NOT_INTEGER
    if not -(2**31) <= index < 2**31:
        return r.NOT_INT32
    return r.OK if index == 0 else r.error("ERR DB index is out of range")


def quit_(conn: RespConnection, args: list[bytes]) -> Reply:
    conn.close_after_reply = True
    return r.OK


async def _hello(conn: RespConnection, version: int, user: bytes | None, password: bytes | None,
                 name: bytes | None) -> bytes:
    if password is not None and conn.state.auth_required:
        failed = await conn.login(user, password)
        if failed != r.OK:
            return failed
    return _hello_reply(conn, version, name)


def _hello_reply(conn: RespConnection, version: int, name: bytes | None) -> bytes:
    if conn.tenant is None:
        return _HELLO_NOAUTH
    if name is not None:
        problem = conn.set_name(name)
        if problem:
            return problem
    if version:
        conn.set_protocol(version)
    fields = [
        (b"server", r.bulk(b"redis")),
        (b"version", r.bulk(REDIS_COMPAT_VERSION.encode())),
        (b"proto", r.integer(conn.protocol)),
        (b"id", r.integer(conn.client_id)),
        (b"mode", r.bulk(b"standalone")),
        (b"role", r.bulk(b"master")),
        (b"modules", r.EMPTY_ARRAY),
    ]
    return r.mapping([(r.bulk(k), v) for k, v in fields], conn.protocol == 3)


def hello(conn: RespConnection, args: list[bytes]) -> Reply:
    version = 0
    i = 1
    if len(args) >= 2:
        parsed = parse_int(args[1])
        if parsed is None:
            return r.error("ERR Protocol version is not an integer or out of range")
        if parsed not in (2, 3):
            return r.error("NOPROTO unsupported protocol version")
        version, i = parsed, 2
    user = password = name = None
    while i < len(args):
        opt, more = args[i].upper(), len(args) - 1 - i
        if opt == b"AUTH" and more >= 2:
            user, password = args[i + 1], args[i + 2]
            i += 3
        elif opt == b"SETNAME" and more >= 1:
            name = args[i + 1]
            i += 2
        else:
            return r.error(f"ERR Syntax error in HELLO option '{args[i].decode('utf-8', 'replace')}'")
    if password is not None and conn.state.auth_required:
        return _hello(conn, version, user, password, name)
    return _hello_reply(conn, version, name)


def _client_setname(conn: RespConnection, args: list[bytes]) -> Reply:
    return conn.set_name(args[2]) or r.OK


def _client_getname(conn: RespConnection, args: list[bytes]) -> Reply:
    return r.bulk(conn.name) if conn.name else conn.null


def _client_id(conn: RespConnection, args: list[bytes]) -> Reply:
    return r.integer(conn.client_id)


def _client_setinfo(conn: RespConnection, args: list[bytes]) -> Reply:
    attr = args[2].upper()
    if attr not in (b"LIB-NAME", b"LIB-VER"):
        return r.error(f"ERR Unrecognized option '{args[2].decode('utf-8', 'replace')}'")
    if any(c < 0x21 or c > 0x7E for c in args[3]):
        return r.error(f"ERR {attr.decode().lower()} cannot contain spaces, newlines or special characters.")
    conn.lib_info[attr.decode().lower()] = args[3].decode()
    return r.OK


def _tenant_clients(conn: RespConnection) -> list[RespConnection]:
    """The caller's tenant's live connections, oldest first: CLIENT never shows or touches another tenant's. A
    killed one is left out at once, as Redis frees it at once: its connection_lost comes loop turns later, and a
    LIST pipelined behind the KILL would still show it."""
    return sorted((c for c in conn.state.resp_clients if c.tenant is conn.tenant and not c.killed),
                  key=lambda c: (c.connected_at, c.client_id))


_CLIENT_TYPES = (b"normal", b"master", b"replica", b"slave", b"pubsub")


def _unknown_type(raw: bytes) -> bytes:
    return r.error(f"ERR Unknown client type '{raw.decode('utf-8', 'replace')}'")


def _client_list(conn: RespConnection, args: list[bytes]) -> Reply:
    clients = _tenant_clients(conn)
    if len(args) == 4 and args[2].lower() == b"type":
        if args[3].lower() not in _CLIENT_TYPES:
            return _unknown_type(args[3])
        clients = clients if args[3].lower() == b"normal" else []
    elif len(args) > 3 and args[2].lower() == b"id":
        ids = [parse_int(raw) for raw in args[3:]]
        if None in ids:
            return r.error("ERR Invalid client ID")
        clients = [c for c in clients if c.client_id in ids]
    elif len(args) != 2:
        return r.SYNTAX
    return r.verbatim("".join(c.describe() + "\n" for c in clients), conn.protocol == 3)


def _client_info(conn: RespConnection, args: list[bytes]) -> Reply:
    return r.verbatim(conn.describe() + "\n", conn.protocol == 3)


def _client_kill(conn: RespConnection, args: list[bytes]) -> Reply:
    """Redis's two forms: `CLIENT KILL addr` (OK, may kill the caller) and filters (a count, SKIPME yes by
    default). Only the caller's tenant's connections match, and a USER other than the tenant is no user."""
    old_form = len(args) == 3
    filters: dict[bytes, bytes] = {b"addr": args[2]} if old_form else {}
    skip_me = not old_form
    for i in range(2, len(args) if not old_form else 2, 2):
        opt = args[i].lower()
        if i + 1 >= len(args) or opt not in (b"id", b"type", b"addr", b"laddr", b"user", b"skipme"):
            return r.SYNTAX
        value = args[i + 1]
        if opt == b"id" and ((n := parse_int(value)) is None or n < 1):
            return r.error("ERR client-id should be greater than 0")
        if opt == b"type" and value.lower() not in _CLIENT_TYPES:
            return _unknown_type(value)
        if opt == b"user" and value != conn.tenant.name.encode():
            return r.error(f"ERR No such user '{value.decode('utf-8', 'replace')}'")
        if opt == b"skipme":
            if value.lower() not in (b"yes", b"no"):
                return r.SYNTAX
            skip_me = value.lower() == b"yes"
        filters[opt] = value
    killed = 0
    for client in _tenant_clients(conn):
        if (client is conn and skip_me) or not _matches(client, filters):
            continue
        killed += 1
        if client is conn:
            conn.close_after_reply = True
        else:
            client.kill()
    if old_form:
        return r.OK if killed else r.error("ERR No such client")
    return r.integer(killed)


def _matches(client: RespConnection, filters: dict[bytes, bytes]) -> bool:
    return all((
        b"id" not in filters or filters[b"id"] == b"%d" % client.client_id,
        b"type" not in filters or filters[b"type"].lower() == b"normal",
        b"addr" not in filters or filters[b"addr"] == client.peer.encode(),
        b"laddr" not in filters or filters[b"laddr"] == client.local_addr.encode(),
    ))


def _sub(name: str, arity: int, handler, summary: str, since: str, scope: str | None = None) -> Command:
    return Command(f"client|{name}", arity, frozenset({"connection"}), handler, group="connection",
                   summary=summary, since=since, scope=scope)


CLIENT_SUBCOMMANDS = {
    b"setname": _sub("setname", 3, _client_setname, "Sets the connection name.", "2.6.9"),
    b"getname": _sub("getname", 2, _client_getname, "Returns the name of the connection.", "2.6.9"),
    b"id": _sub("id", 2, _client_id, "Returns the unique client ID of the connection.", "5.0.0"),
    b"setinfo": _sub("setinfo", 4, _client_setinfo, "Sets information specific to the client or connection.",
                     "7.2.0"),
    b"list": _sub("list", -2, _client_list, "Lists open connections (the tenant's own).", "2.4.0", "admin"),
    b"info": _sub("info", 2, _client_info, "Returns information about the connection.", "6.2.0"),
    b"kill": _sub("kill", -3, _client_kill, "Terminates open connections (the tenant's own).", "2.4.0", "admin"),
}


def client(conn: RespConnection, args: list[bytes]) -> Reply:
    sub = checked_subcommand(conn, "client", CLIENT_SUBCOMMANDS, args)  # no scope to lack before AUTH
    if isinstance(sub, bytes):
        return sub
    if conn.tenant is None:  # checked after the subcommand's arity, in Redis's order
        return r.NOAUTH
    conn.last_command = sub.name.encode()  # Redis names the subcommand; the read's own note comes after
    return sub.handler(conn, args)


def _cmd(name: str, arity: int, flags: str, handler, summary: str, since: str = "1.0.0",
         subcommands: dict[bytes, Command] | None = None) -> Command:
    return Command(name, arity, frozenset(flags.split()) | {"connection"}, handler, group="connection",
                   summary=summary, since=since, subcommands=subcommands or {})


COMMANDS = [
    _cmd("auth", -2, "noscript no_auth fast", auth, "Authenticates the connection."),
    _cmd("hello", -1, "noscript no_auth fast", hello, "Handshakes with the Redis server.", "6.0.0"),
    _cmd("ping", -1, "fast", ping, "Returns the server's liveliness response."),
    _cmd("echo", 2, "fast", echo, "Returns the given string."),
    _cmd("select", 2, "fast", select, "Changes the selected database."),
    _cmd("quit", -1, "noscript no_auth fast", quit_, "Closes the connection."),
    _cmd("client", -2, "noscript no_auth", client, "A container for client connection commands.", "2.4.0",
         CLIENT_SUBCOMMANDS),
]
