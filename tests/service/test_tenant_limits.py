"""What one tenant can hold of the shared process, found by a security audit and bounded since: its requests still
arriving (over all its RESP connections, MULTI queues and HTTP bodies) within its memory budget, its logged-in
connections within resp_max_clients_per_tenant, and logins on a logged-in connection within its rate quota."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from service.security.apikeys import IssuedKey
from tests.service.harness import RawClient, RunningService, running_service, write_tenants_file
from tests.tlsutil import PKI

BUDGET = 1 << 20  # the small tenant's memory budget
RATE = 20  # the limited tenant's requests per second


@dataclass
class Deployment:
    svc: RunningService
    keys: dict[str, IssuedKey]
    pki: PKI
    audit_log: Path

    def raw(self, tenant: str) -> RawClient:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", self.svc.resp_port), timeout=10),
                                   server_hostname="localhost")
        client = RawClient(self.svc.resp_port, sock)
        assert client.send(("AUTH", self.keys[tenant].secret)) == b"+OK\r\n"
        return client

    def redis(self, tenant: str) -> redis.Redis:
        return redis.Redis(port=self.svc.resp_port, ssl=True, ssl_ca_certs=str(self.pki.ca_cert),
                           password=self.keys[tenant].secret)

    def held(self, tenant: str) -> int:
        cache = self.svc.state.tenants.get(tenant)
        assert cache is not None
        return int(cache.requests_held)


@pytest.fixture
def deployment(tmp_path: Path, pki: PKI) -> Iterator[Deployment]:
    tenants_file = tmp_path / "tenants.json"
    keys = write_tenants_file(tenants_file, {
        "small": {"memory_bytes": BUDGET}, "limited": {"requests_per_second": RATE}, "other": {}})
    audit_log = tmp_path / "audit" / "audit.log"
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants_file,
                         resp_max_clients_per_tenant=3, audit_log=audit_log) as svc:
        yield Deployment(svc, keys, pki, audit_log)


def _eventually(check, what: str, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _partial_set(value_bytes: int, sent: int) -> bytes:
    """A SET announcing a value of `value_bytes` and sending `sent` of them: a request that never ends."""
    return b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % value_bytes + b"x" * sent


def test_requests_in_flight_over_all_connections_stay_within_the_tenants_budget(deployment: Deployment) -> None:
    first, second = deployment.raw("small"), deployment.raw("small")
    first.sock.sendall(_partial_set(BUDGET, 600 * 1024))
    _eventually(lambda: deployment.held("small") >= 600 * 1024, "the first request counted")
    second.sock.sendall(_partial_set(BUDGET, 600 * 1024))
    refusal = second.sock.recv(4096)
    assert refusal.startswith(b"-ERR Protocol error: tenant 'small' has more request bytes in flight than its memory")
    assert second.sock.recv(4096) == b""  # and the connection closed
    arriving = len(_partial_set(BUDGET, 600 * 1024))  # and up to 1 KiB hiredis parsed but has not dropped yet
    _eventually(lambda: arriving <= deployment.held("small") < arriving + 1024, "the refused request let go")
    assert deployment.redis("other").set("k", "x" * (600 * 1024))  # another tenant's requests are its own
    first.close()
    _eventually(lambda: deployment.held("small") == 0, "the abandoned request let go")
    assert deployment.redis("small").set("k", "v")  # small requests go on as before


def test_a_single_value_larger_than_the_budget_is_refused_as_it_arrives(deployment: Deployment) -> None:
    client = deployment.raw("small")
    client.sock.sendall(_partial_set(200 << 20, 0))
    for _ in range(3):
        client.sock.sendall(b"x" * (512 * 1024))
    reply = client.sock.recv(4096)
    assert b"more request bytes in flight than its memory budget" in reply
    _eventually(lambda: deployment.held("small") == 0, "the refused request let go")


def test_a_multi_queue_counts_with_the_tenants_requests_and_is_let_go_at_exec(deployment: Deployment) -> None:
    """Thousands of small commands queued: their bytes on the wire are few, the queue's memory is what counts."""
    client = deployment.raw("small")
    assert client.send(("MULTI",)) == b"+OK\r\n"
    replies = client.send(*[("SET", f"k{i}", "v") for i in range(6000)])
    assert replies.count(b"+QUEUED\r\n") < 6000
    assert b"-ERR transaction over tenant 'small''s memory budget" in replies
    assert BUDGET - 1024 < deployment.held("small") <= BUDGET  # a refused command is not queued
    assert client.send(("EXEC",)).startswith(b"-EXECABORT")
    assert deployment.held("small") < 1024
    assert client.send(("MULTI",)) == b"+OK\r\n" and client.send(("SET", "a", "1")) == b"+QUEUED\r\n"
    assert deployment.held("small") > 0
    assert client.send(("DISCARD",)) == b"+OK\r\n" and deployment.held("small") < 1024


def test_a_queue_and_a_request_over_the_budget_together_close_the_connection(deployment: Deployment) -> None:
    client = deployment.raw("small")
    assert client.send(("MULTI",)) == b"+OK\r\n"
    assert [client.send(("SET", f"k{i}", "x" * (100 * 1024))) for i in range(10)] == [b"+QUEUED\r\n"] * 10
    client.sock.sendall(_partial_set(200 * 1024, 150 * 1024))  # 1 MiB queued and 150 KiB arriving: over 1 MiB
    assert client.sock.recv(4096).startswith(b"-ERR Protocol error: tenant 'small' has more request bytes in flight")
    assert deployment.held("small") == 0  # the queue and the request went with the refusal, not at the TLS close


def test_a_pipeline_far_larger_than_the_budget_is_no_request_in_flight(deployment: Deployment) -> None:
    """Each read of a long pipeline may hold more than the budget, in complete requests answered at once: only what
    stays of a request not yet complete counts."""
    client = deployment.redis("small")
    pipe = client.pipeline(transaction=False)
    for i in range(5000):
        pipe.set(f"cold{i}", "y" * 200)
    assert all(pipe.execute())
    assert deployment.held("small") < 1024


def test_http_bodies_count_with_the_tenants_requests(deployment: Deployment) -> None:
    url = f"{deployment.svc.endpoints.http_url}/v1/keys/big"
    headers = {"Authorization": f"Bearer {deployment.keys['small'].secret}"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as it arrives, not by its declared size
        for _ in range(24):
            yield b"x" * (64 * 1024)

    with httpx.Client(verify=ssl.create_default_context(cafile=str(deployment.pki.ca_cert))) as http:
        answer = http.put(url, content=chunks(), headers=headers)
        assert answer.status_code == 413 and "in flight than its memory budget" in answer.json()["detail"]
        assert deployment.held("small") == 0
        assert http.put(url, content=b"fits", headers=headers).status_code == 204


def test_a_tenant_holds_at_most_its_share_of_connections(deployment: Deployment) -> None:
    held = [deployment.raw("small") for _ in range(3)]
    extra = RawClient(0, ssl.create_default_context(cafile=str(deployment.pki.ca_cert)).wrap_socket(
        socket.create_connection(("127.0.0.1", deployment.svc.resp_port), timeout=10), server_hostname="localhost"))
    refused = extra.send(("AUTH", deployment.keys["small"].secret))
    assert refused.startswith(b"-ERR max number of clients reached: tenant 'small' holds 3 connections")
    assert deployment.redis("other").ping()  # the others still get in
    assert held[0].send(("AUTH", deployment.keys["small"].secret)) == b"+OK\r\n"  # one it holds logs in again
    held.pop().close()
    _eventually(lambda: extra.send(("AUTH", deployment.keys["small"].secret)) == b"+OK\r\n", "a slot freed")


def test_logins_on_a_logged_in_connection_are_charged_to_its_rate_quota(deployment: Deployment) -> None:
    client = deployment.raw("limited")
    time.sleep(1.2)  # a full bucket
    lines_before = len(deployment.audit_log.read_text().splitlines())
    replies = client.send(*[("AUTH", deployment.keys["limited"].secret)] * 200)
    accepted = replies.count(b"+OK\r\n")
    assert replies.count(b"-ERR rate limit exceeded: tenant 'limited'") == 200 - accepted
    assert accepted <= RATE + 5  # a second's burst, and what refilled meanwhile
    audited = len(deployment.audit_log.read_text().splitlines()) - lines_before
    assert audited <= accepted + 1  # refused before the key is checked: no audit line each
