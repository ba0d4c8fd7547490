"""What one RESP client may hold: connection slots, time to log in, malformed requests (real service, real sockets)."""

from __future__ import annotations

import logging
import resource
import socket
import ssl
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import hiredis
import pytest
import redis

from service.net import raise_nofile_limit
from service.resp import reader
from service.resp import replies as r
from service.resp.commands import strings
from service.store import MemoryStore
from tests.servers import wait_until
from tests.service.conftest import ProductionService
from tests.service.harness import RawClient, RunningService, running_service, write_tenants_file
from tests.tlsutil import PKI


def _tls(port: int, pki: PKI) -> socket.socket:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return received
        if not chunk:
            return received
        received += chunk


def _clients(svc: RunningService, count: int) -> None:
    wait_until(lambda: len(svc.state.resp_clients) == count, f"{count} RESP connections on the server")


def test_a_connection_over_resp_max_clients_is_told_so_and_closed() -> None:
    with running_service(dev=True, resp_max_clients=2) as svc:
        first, second = RawClient(svc.resp_port), RawClient(svc.resp_port)
        assert first.send(("PING",)) == second.send(("PING",)) == b"+PONG\r\n"
        third = RawClient(svc.resp_port)
        assert _until_closed(third.sock) == b"-ERR max number of clients reached\r\n"
        first.close()
        _clients(svc, 1)
        assert RawClient(svc.resp_port).send(("PING",)) == b"+PONG\r\n"


def test_one_address_may_hold_only_so_many_connections_before_logging_in(tmp_path: Path, pki: PKI) -> None:
    keys = write_tenants_file(tmp_path / "tenants.json", {"acme": {}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tmp_path / "tenants.json",
                         resp_max_unauthenticated_per_source=2) as svc:
        waiting = [_tls(svc.resp_port, pki) for _ in range(2)]
        _clients(svc, 2)
        assert _until_closed(_tls(svc.resp_port, pki)) == b"-ERR max number of clients reached\r\n"
        assert RawClient(svc.resp_port, waiting[0]).send(("AUTH", keys["acme"].secret)) == b"+OK\r\n"
        # Logged in, it no longer counts against the address: another may connect, and the first keeps working.
        newcomer = RawClient(svc.resp_port, _tls(svc.resp_port, pki))
        assert newcomer.send(("AUTH", keys["acme"].secret)) == b"+OK\r\n"
        assert RawClient(svc.resp_port, waiting[0]).send(("PING",)) == b"+PONG\r\n"


def test_a_connection_that_does_not_log_in_in_time_is_closed(tmp_path: Path, pki: PKI) -> None:
    keys = write_tenants_file(tmp_path / "tenants.json", {"acme": {}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tmp_path / "tenants.json",
                         resp_auth_timeout_s=2) as svc:
        logged_in = RawClient(svc.resp_port, _tls(svc.resp_port, pki))
        assert logged_in.send(("AUTH", keys["acme"].secret)) == b"+OK\r\n"
        silent = _tls(svc.resp_port, pki)
        assert _until_closed(silent) == b"-ERR no AUTH within 2 s of connecting: closing the connection\r\n"
        assert logged_in.send(("PING",)) == b"+PONG\r\n"  # its deadline was cancelled by AUTH


def test_dev_mode_needs_no_login_and_has_no_deadline() -> None:
    with running_service(dev=True, resp_auth_timeout_s=0.2) as svc:
        client = RawClient(svc.resp_port)
        assert client.send(("PING",)) == b"+PONG\r\n"
        time.sleep(0.5)
        assert client.send(("PING",)) == b"+PONG\r\n"


def test_raise_nofile_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert raise_nofile_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(("request_", "error"), [
    (b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n*1\r\n$1\r\nx\r\n", b"-ERR Protocol error: expected '$', got '*'\r\n"),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$-1\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*4000000000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    # Under hiredis's own limit, over max_request_args: refused at the header, before a billion-slot list is made
    # (a list hiredis can make: freeing it held the event loop for 4 s once the client left, 3 billion 10-16 s).
    (b"*1000000000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    # hiredis's words were passed on ("Bad multi-bulk length"...); these are Redis 7.0's for the same bytes.
    (b"*a\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n$a\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\n$-2\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\n$-1\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
])
def test_a_request_that_is_not_bulk_strings_is_a_protocol_error_and_nothing_after_it_runs(
        dev_service: RunningService, caplog: pytest.LogCaptureFixture, request_: bytes, error: bytes) -> None:
    client = RawClient(dev_service.resp_port)
    client.sock.sendall(RawClient.encode("SET", "a", "1") + request_ + RawClient.encode("SET", "c", "1"))
    assert _until_closed(client.sock) == b"+OK\r\n" + error
    assert redis.Redis(port=dev_service.resp_port).exists("a", "b", "c") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_reader_limit_is_set_through_this_hiredis_layout() -> None:
    assert reader.limited()  # else the service runs without max_request_args (and says so at start)
    limited = reader.new_reader(3)
    limited.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*1\r\n*4\r\n")
    assert limited.gets() == [b"SET", b"k", b"v"]
    with pytest.raises(hiredis.ProtocolError, match="Multi-bulk length out of range"):
        limited.gets()  # a nested array's count is held to the limit too
    plain = reader.new_reader(2**31 - 1)
    plain.feed(b"*4\r\n")
    assert plain.gets() is False


def test_max_request_args_refuses_a_longer_request_at_its_header() -> None:
    with running_service(dev=True, max_request_args=5) as svc:
        client = RawClient(svc.resp_port)
        assert client.send(("MSET", "a", "1", "b", "2")) == b"+OK\r\n"
        client.sock.sendall(b"*6\r\n$4\r\nMSET\r\n")  # the rest never needs to arrive
        assert _until_closed(client.sock) == b"-ERR Protocol error: invalid multibulk length\r\n"
        assert redis.Redis(port=svc.resp_port).mget("a", "b") == [b"1", b"2"]


def test_malformed_requests_before_auth_are_refused_once_and_log_nothing(
        prod_service: ProductionService, caplog: pytest.LogCaptureFixture) -> None:
    """An unauthenticated client cannot turn small requests into tracebacks in the log."""
    svc = prod_service.svc
    for request_, error in [(b"*2\r\n$5\r\nHELLO\r\n:3\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
                            # Redis refuses a nested array at its '*', before reading its count
                            (b"*1\r\n*4000000000\r\n", b"-ERR Protocol error: expected '$', got '*'\r\n")]:
        sock = _tls(svc.resp_port, prod_service.pki)
        sock.sendall(request_ * 20)
        assert _until_closed(sock) == error
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("service")]


def _received(client: RawClient, size: int) -> bytes:
    received = b""
    while len(received) < size:
        chunk = client.sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


@pytest.mark.parametrize(("sent", "answer"), [
    (b"PING\r\n", b"+PONG\r\n"),
    (b"PING\n", b"+PONG\r\n"),
    (b"\r\n\r\n*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
    (b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
    (b"SET k \"a \\x41\\n\" \r\nGET k\r\nECHO 'it\\'s'\r\n", b"+OK\r\n$4\r\na A\n\r\n$4\r\nit's\r\n"),
    (b"PING\r\n" * 1000, b"+PONG\r\n" * 1000),
])
def test_inline_commands_blank_lines_and_empty_arrays_are_served_as_redis_does(
        dev_service: RunningService, sent: bytes, answer: bytes) -> None:
    """What telnet, `nc`, HAProxy checks and redis-benchmark's ping_inline send."""
    client = RawClient(dev_service.resp_port)
    client.sock.sendall(sent)
    assert _received(client, len(answer)) == answer
    assert client.send(("PING",)) == b"+PONG\r\n"  # the connection goes on


def test_inline_and_array_requests_take_turns_on_one_connection(dev_service: RunningService) -> None:
    """redis-benchmark's ping_inline: its setup commands are arrays, then come inline lines."""
    client = RawClient(dev_service.resp_port)
    for _ in range(3):
        assert client.send(("PING",)) == b"+PONG\r\n"
        client.sock.sendall(b"ECHO inline\r\n")
        assert client.sock.recv(100) == b"$6\r\ninline\r\n"


def test_an_inline_line_may_arrive_in_pieces_and_bad_quotes_end_the_connection(dev_service: RunningService) -> None:
    client = RawClient(dev_service.resp_port)
    client.sock.sendall(b"EC")
    time.sleep(0.1)  # two reads on the server
    client.sock.sendall(b"HO hi\r\nECHO \"unclosed\r\nPING\r\n")
    assert _until_closed(client.sock) == b"$2\r\nhi\r\n-ERR Protocol error: unbalanced quotes in request\r\n"


@pytest.mark.parametrize("past", [0, 1], ids=["between_arguments", "past_a_type_byte"])
def test_a_long_request_read_in_pieces_is_never_taken_for_inline(dev_service: RunningService, past: int) -> None:
    """hiredis holds nothing unparsed inside a long request, between two arguments or just past one's '$': the
    read that goes on with it must not look like the start of an inline request."""
    args = ["MSET"] + [f"key{i:04d}" if j == 0 else f"v{i}" for i in range(200) for j in range(2)]
    request = RawClient.encode(*args)
    cut = request.index(b"$7\r\nkey0100") + past  # well past hiredis's 1 KiB discard
    client = RawClient(dev_service.resp_port)
    client.sock.sendall(request[:cut])
    time.sleep(0.1)
    client.sock.sendall(request[cut:])
    assert client.sock.recv(100) == b"+OK\r\n"
    assert redis.Redis(port=dev_service.resp_port).mget("key0000", "key0199") == [b"v0", b"v199"]


PING = RawClient.encode("PING")


@pytest.mark.parametrize(("sent", "answer"), [
    (PING + b"PING\r\n", b"+PONG\r\n+PONG\r\n"),
    (RawClient.encode("SET", "k", "v") + b"GET k\r\n" + RawClient.encode("ECHO", "x") + b"ECHO 'y z'\r\n" + PING,
     b"+OK\r\n$1\r\nv\r\n$1\r\nx\r\n$3\r\ny z\r\n+PONG\r\n"),
    (PING + b"\r\n\r\n\"PING\"\r\n", b"+PONG\r\n+PONG\r\n"),  # blank lines, then a quote starts it
    (RawClient.encode("ECHO", "PING\r\nPING") + b"PING\r\n", b"$10\r\nPING\r\nPING\r\n+PONG\r\n"),
    ((PING + b"PING\r\n") * 500, b"+PONG\r\n" * 1000),
    (RawClient.encode("SET", "k", PING + b"PING") + PING + b"PING\r\n", b"+OK\r\n+PONG\r\n+PONG\r\n"),
    (b"PING\r\n" + PING + b"ECHO a\r\n" + PING, b"+PONG\r\n+PONG\r\n$1\r\na\r\n+PONG\r\n"),
], ids=["one", "mixed", "blank-lines", "value-like-a-request", "many", "value-holding-the-same-bytes",
        "inline-first"])
def test_an_inline_request_right_behind_an_array_in_one_read_is_served(
        dev_service: RunningService, sent: bytes, answer: bytes) -> None:
    """Redis reads a request that does not start with '*' as an inline one wherever a request may start."""
    client = RawClient(dev_service.resp_port)
    client.sock.sendall(sent)
    assert _received(client, len(answer)) == answer
    assert client.send(("PING",)) == b"+PONG\r\n"


def test_an_inline_request_behind_a_pipeline_finished_in_a_task_is_served(dev_service: RunningService) -> None:
    """Replies past one turn's bytes finish in a task, which takes the requests after from the reader itself."""
    client = RawClient(dev_service.resp_port)
    value = b"x" * 70_000  # one reply past the turn: the second GET and the PING are the task's
    assert client.send(("SET", "big", value)) == b"+OK\r\n"
    client.sock.sendall(RawClient.encode("GET", "big") * 2 + b"PING\r\n")
    answer = (b"$70000\r\n" + value + b"\r\n") * 2 + b"+PONG\r\n"
    assert _received(client, len(answer)) == answer


def test_an_inline_request_behind_an_array_begun_in_an_earlier_read_is_served(dev_service: RunningService) -> None:
    """The read does not start where a request does: the one place the last array's encoding ends is found."""
    client = RawClient(dev_service.resp_port)
    request = RawClient.encode("SET", "k", b"v" * 5000)
    client.sock.sendall(request[:2000])
    time.sleep(0.1)  # two reads on the server
    client.sock.sendall(request[2000:] + PING + b"ECHO hi\r\n")
    answer = b"+OK\r\n+PONG\r\n$2\r\nhi\r\n"
    assert _received(client, len(answer)) == answer



def test_an_array_behind_an_inline_request_may_arrive_in_pieces(dev_service: RunningService) -> None:
    client = RawClient(dev_service.resp_port)
    client.sock.sendall(b"PING\r\n" + PING[:10])
    time.sleep(0.1)  # two reads on the server
    client.sock.sendall(PING[10:] + b"ECHO a\r\n")
    answer = b"+PONG\r\n+PONG\r\n$1\r\na\r\n"
    assert _received(client, len(answer)) == answer


@pytest.mark.parametrize(("parts", "answer"), [
    # Inside an array: an argument, not a request, so Redis's error.
    ((PING + b"*2\r\n$4\r\nECHO\r\nPING\r\n" + PING,), b"+PONG\r\n-ERR Protocol error: expected '$', got 'P'\r\n"),
    # Behind an inline request, an array hiredis must refuse: still refused, after the requests in front.
    ((b"PING\r\n*2\r\n$4\r\nECHO\r\nPING\r\n" + PING,), b"+PONG\r\n-ERR Protocol error: expected '$', got 'P'\r\n"),
    # A read that goes on with a value holding the last array and the same byte: which one ends here is not guessed.
    ((b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$22\r\nPIN", b"G" + PING + b"PING\r\n" + PING + b"PING\r\n"),
     b"+OK\r\n+PONG\r\n-ERR Protocol error: expected '$', got 'P'\r\n"),
], ids=["inside-an-array", "inside-an-array-behind-inline", "ambiguous"])
def test_a_byte_that_cannot_be_an_inline_requests_start_is_still_a_protocol_error(
        dev_service: RunningService, parts: tuple[bytes, ...], answer: bytes) -> None:
    client = RawClient(dev_service.resp_port)
    for part in parts:
        client.sock.sendall(part)
        time.sleep(0.1)  # one read each on the server
    assert _until_closed(client.sock) == answer


@pytest.mark.parametrize("first", [b"PING\r\n", PING], ids=["inline", "array"])
def test_an_inline_auth_logs_in(prod_service: ProductionService, first: bytes) -> None:
    sock = _tls(prod_service.svc.resp_port, prod_service.pki)
    sock.sendall(first + b"AUTH " + prod_service.keys["acme"].secret.encode() + b"\r\n" + PING)
    expected = b"-NOAUTH Authentication required.\r\n+OK\r\n+PONG\r\n"
    received = b""
    while len(received) < len(expected) and (chunk := sock.recv(65536)):
        received += chunk
    assert received == expected


def test_setrange_far_past_the_budget_is_refused_before_its_padding_is_built() -> None:
    """`SETRANGE k 536870000 x` (30 bytes) had the event loop build a 512 MB value, twice over, for the store
    to refuse it."""
    store = MemoryStore(1 << 20)
    conn = SimpleNamespace(tenant=SimpleNamespace(store=store))
    tracemalloc.start()
    try:
        reply = strings.setrange(conn, [b"SETRANGE", b"k", b"100000000", b"x"])  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply == r.OOM and store.entry(b"k") is None
    assert peak < 1 << 20  # the 100 MB padding was never made
    assert strings.setrange(conn, [b"SETRANGE", b"k", b"1000", b"x"]) == r.integer(1001)  # type: ignore[arg-type]
