"""Malformed and unusual request bytes: Foresight must answer as Debian's redis-server (7.0) does, byte for byte, and
close the connection, or keep it open waiting for more, where Redis does.

Each case is sent in one write on a fresh connection to both servers; what comes back until the server closes or
goes quiet is compared, with whether it closed. The few places where Foresight keeps a limit of its own are tested
beside them, against Redis's words.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.service.harness import RawClient

PING = RawClient.encode("PING")
QUIET_S = 0.3  # no byte for this long and still open: the server waits for more


def exchange(port: int, sent: bytes) -> tuple[bytes, bool]:
    """What the server answers to `sent`, and whether it closed the connection."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=QUIET_S)
    try:
        sock.sendall(sent)
        received = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, False
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
        return received, False
    finally:
        sock.close()


CASES: dict[str, bytes] = {
    # 1. arguments that are not bulk strings: refused with the byte Redis saw, and the connection closes
    "simple_string_argument": b"*2\r\n$3\r\nGET\r\n+foo\r\n" + PING,
    "integer_argument": b"*2\r\n$3\r\nGET\r\n:1\r\n",
    "error_argument": b"*2\r\n$4\r\nECHO\r\n-err\r\n",
    "resp3_null_argument": b"*2\r\n$4\r\nECHO\r\n_\r\n",
    "double_argument": b"*2\r\n$4\r\nECHO\r\n,1.5\r\n",
    "boolean_argument": b"*2\r\n$4\r\nECHO\r\n#t\r\n",
    "blob_error_argument": b"*2\r\n$4\r\nECHO\r\n!3\r\nabc\r\n",
    "nested_array_header_only": b"*2\r\n$4\r\nECHO\r\n*1\r\n",
    "nested_array_whole": b"*2\r\n$4\r\nECHO\r\n*1\r\n$1\r\nx\r\n" + PING,
    "map_header_only": b"*2\r\n$4\r\nECHO\r\n%1\r\n",
    "set_header_only": b"*2\r\n$4\r\nECHO\r\n~1\r\n",
    "push_header_only": b"*2\r\n$4\r\nECHO\r\n>1\r\n",
    "attribute_header_only": b"*2\r\n$4\r\nECHO\r\n|1\r\n",
    "letter_argument": b"*2\r\n$4\r\nECHO\r\nx\r\n",
    "newline_argument": b"*1\r\n\n\r\n",
    "control_byte_argument": b"*1\r\n\x01x\r\n",
    "high_byte_argument": b"*1\r\n\xffx\r\n",
    "nul_argument_waits": b"*1\r\n\x00x\r\n",
    "simple_string_argument_line_unfinished": b"*2\r\n$4\r\nECHO\r\n+fo",
    # 2. multibulk counts
    "count_minus_five_is_skipped": b"*-5\r\n" + PING,
    "count_minus_one_is_skipped": b"*-1\r\n" + PING,
    "count_zero_is_skipped": b"*0\r\n" + PING,
    "count_least_long_long_is_skipped": b"*-9223372036854775808\r\n" + PING,
    "count_letters": b"*abc\r\n",
    "count_leading_space": b"* 3\r\n",
    "count_trailing_space": b"*3 \r\n",
    "count_empty": b"*\r\n",
    "count_plus_sign": b"*+3\r\n",
    "count_leading_zero": b"*03\r\n$4\r\nECHO\r\n$1\r\na\r\n",
    "count_minus_zero": b"*-0\r\n" + PING,
    "count_over_int_max": b"*2147483648\r\n",
    "count_over_long_long": b"*99999999999999999999\r\n",
    "count_with_nul_waits": b"*1\x00\r\n",
    "count_ended_by_cr_alone": b"*1\rX" + PING[3:],
    # 3. bulk lengths
    "bulk_over_proto_max_bulk_len": b"*1\r\n$600000000\r\n",
    "bulk_one_over_proto_max_bulk_len": b"*2\r\n$4\r\nECHO\r\n$536870913\r\n",
    "bulk_minus_five": b"*1\r\n$-5\r\n",
    "bulk_minus_one": b"*1\r\n$-1\r\n",
    "bulk_letters": b"*1\r\n$abc\r\n",
    "bulk_minus_zero": b"*1\r\n$-0\r\n\r\n",
    "bulk_leading_space": b"*1\r\n$ 3\r\n",
    "bulk_empty": b"*1\r\n$\r\n",
    "bulk_leading_zero": b"*1\r\n$03\r\nGET\r\n",
    "bulk_ended_by_cr_alone": b"*1\r\n$4\rXPING\r\n",
    # 4. data longer than its length: the two bytes after it are skipped unread, the rest is the next request
    "data_one_byte_long": b"*1\r\n$3\r\nGETX\r\n",
    "data_one_byte_long_then_array": b"*1\r\n$4\r\nPINGX\r\n" + PING,
    "data_two_bytes_long": b"*2\r\n$4\r\nECHO\r\n$1\r\nabc\r\n",
    "data_three_bytes_long": b"*1\r\n$4\r\nPINGXYZ\r\n",
    "data_followed_by_other_bytes": b"*1\r\n$4\r\nPINGab" + PING,
    "data_short_waits": b"*1\r\n$4\r\nPI\r\n",
    # 5. inline requests, and RESP values where a request starts (Redis reads them as inline requests)
    "inline_quotes": b'ECHO "a b" c\r\nECHO "x\\x41\\n"\r\n' + b"ECHO 'it\\'s'\r\n",
    "inline_quote_not_ending_argument": b'ECHO "a"b\r\n',
    "inline_single_quote_not_ending_argument": b"ECHO 'a'b\r\n",
    "inline_unbalanced_quotes": b'ECHO "abc\r\n' + PING,
    "inline_blank_lines": b"\r\n\r\n\n\n   \r\nPING\r\n",
    "inline_cr_inside": b"PING\rPING\r\n",
    "inline_long_line_with_newline": b"ECHO " + b"x" * 70_000 + b"\r\n",
    "inline_too_big": b"ECHO " + b"x" * 70_000,
    "inline_under_the_limit_waits": b"ECHO " + b"x" * 65_530,
    "inline_too_big_behind_an_array": PING + b"ECHO " + b"x" * 70_000,
    "inline_nul_waits": b"ECHO a\x00b\r\nPING\r\n",
    "top_level_simple_string": b"+PING\r\n",
    "top_level_bulk_string": b"$4\r\nPING\r\n",
    "integer_behind_an_array": PING + b":1\r\n",
    "bulk_string_behind_an_array": PING + b"$4\r\nPING\r\n",
    "inline_behind_an_array": PING + b"ECHO 'y z'\r\n" + PING,
    # 6. the largest count Redis and Foresight both take, waiting for its arguments
    "count_at_max_request_args_waits": b"*1048576\r\n",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_requests_are_answered_as_redis_does(case: str, reference: int, foresight: int) -> None:
    sent = CASES[case]
    want, got = exchange(reference, sent), exchange(foresight, sent)
    assert got == want, f"{case}: redis {want!r}, foresight {got!r}"


def test_a_count_over_max_request_args_is_refused_at_once_where_redis_waits(reference: int, foresight: int) -> None:
    """Foresight's own limit (Settings.max_request_args, 1,048,576; Redis takes up to 2^31 - 1): hiredis makes a list
    as long as the count announced. It is refused in Redis's words for a count Redis refuses."""
    assert exchange(reference, b"*1048577\r\n") == (b"", False)
    assert exchange(reference, b"*2147483648\r\n") == exchange(foresight, b"*1048577\r\n") == (
        b"-ERR Protocol error: invalid multibulk length\r\n", True)


def test_an_argument_split_across_reads_is_checked_as_it_arrives(foresight: int) -> None:
    """A read that goes on with a request begun in an earlier one: what hiredis is still reading is refused as soon
    as Redis would refuse it."""
    for first, second, answer in [
        (b"*2\r\n$4\r\nECHO\r\n", b"*1\r\n", b"-ERR Protocol error: expected '$', got '*'\r\n"),
        (b"*2\r\n$4\r\nECHO\r\n", b"$600000000\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*2\r\n$4\r\nECHO\r\n$3\r\nab", b"c\r\n", b"$3\r\nabc\r\n"),
    ]:
        sock = socket.create_connection(("127.0.0.1", foresight), timeout=5)
        sock.sendall(first)
        time.sleep(0.1)  # two reads on the server
        sock.sendall(second)
        assert sock.recv(100) == answer
        sock.close()
