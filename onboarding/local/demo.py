"""The demo: a directory origin of objects for the demo tenant, and a short workload over RESP+TLS whose
report shows hit ratio, read latency and what the prefetcher did.

Each `Phase` replays the same trace as one tenant from a cold cache (its keys deleted first), reading the
tenant's INFO counters and the service's prefetch metrics around it. Which prefetcher a tenant runs is the
service's choice (`FORESIGHT_PREFETCHER`, default learned); a with/without comparison is a second phase as a
tenant whose prefetcher is off, and the report grows a row.
"""

from __future__ import annotations

import random
import re
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hiredis
import requests

from service.resp import framing

DEMO_OBJECTS = 256
TRACE_LENGTH = 800


GREETING = b"hello from the demo origin: read through once, now served from the cache\n"


def seed_origin(origin: Path, tenant: str, count: int = DEMO_OBJECTS) -> list[str]:
    """`count` objects under `<origin>/<tenant>/objects/` (written once), and the `greeting` the connection
    snippet reads; returns the objects' keys."""
    (origin / tenant).mkdir(parents=True, exist_ok=True)
    (origin / tenant / "greeting").write_bytes(GREETING)
    folder = origin / tenant / "objects"
    keys = [f"objects/{i:05d}" for i in range(count)]
    if not folder.is_dir() or len(list(folder.iterdir())) < count:
        folder.mkdir(parents=True, exist_ok=True)
        rng = random.Random(count)
        for key in keys:
            (origin / tenant / key).write_bytes(rng.randbytes(rng.randint(1024, 8192)))
    return keys


def demo_trace(keys: Sequence[str], length: int = TRACE_LENGTH, seed: int = 7) -> list[str]:
    """Sessions that scan runs of consecutive objects, mixed with re-reads of a small hot set: the shape a
    prefetcher learns (the next object of a scan) and a cache serves (the hot set)."""
    rng = random.Random(seed)
    hot = keys[: max(1, len(keys) // 16)]
    trace: list[str] = []
    while len(trace) < length:
        if rng.random() < 0.6:
            start = rng.randrange(len(keys))
            trace.extend(keys[(start + i) % len(keys)] for i in range(rng.randint(4, 16)))
        else:
            trace.extend(rng.choice(hot) for _ in range(rng.randint(2, 6)))
    return trace[:length]


class RespClient:
    """Just enough of a Redis client for the demo (the CLI does not depend on redis-py): TLS, AUTH, commands."""

    def __init__(self, host: str, port: int, ca_cert: Path, api_key: str, timeout: float = 10.0) -> None:
        context = ssl.create_default_context(cafile=str(ca_cert))
        raw = socket.create_connection((host, port), timeout=timeout)
        self._sock = context.wrap_socket(raw, server_hostname=host)
        self._reader = hiredis.Reader()
        self.command("AUTH", api_key)

    def command(self, *args: str | bytes) -> Any:
        self._sock.sendall(framing.encode([a if isinstance(a, bytes) else a.encode() for a in args]))
        while (reply := self._reader.gets()) is False:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._reader.feed(chunk)
        if isinstance(reply, hiredis.ReplyError):
            raise RuntimeError(f"server error: {reply}")
        return reply

    def stats(self) -> dict[str, int]:
        text = self.command("INFO", "stats")
        text = text.decode() if isinstance(text, bytes) else str(text)
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {k: int(v) for k, v in pairs if v.strip().lstrip("-").isdigit()}

    def close(self) -> None:
        self._sock.close()


@dataclass(frozen=True)
class Target:
    """Where the demo connects: RESP for the workload, HTTPS for the prefetch metrics."""

    host: str
    port: int
    http_url: str
    ca_cert: Path


@dataclass(frozen=True)
class Phase:
    tenant: str
    api_key: str
    prepare: Callable[[RespClient], None] | None = None
    prefetched: bool = False  # the tenant should have a prefetch engine: wait for it before replaying


# A first start builds the learned prefetcher in a new process that imports torch: seconds on a cold machine.
PREFETCH_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PhaseResult:
    name: str
    tenant: str
    prefetcher: str | None
    requests: int
    hits: int
    misses: int
    origin_fetches: int
    prefetch_issued: int
    prefetch_used: int
    hit_ratio: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prefetch_counters(target: Target, tenant: str) -> tuple[str | None, dict[str, int]]:
    """The tenant's prefetcher (its A/B arm) and prefetch counters, from the service's /metrics."""
    try:
        reply = requests.get(f"{target.http_url}/metrics", verify=str(target.ca_cert), timeout=5)
    except requests.RequestException:
        return None, {}
    arm, counters = None, {}
    pattern = re.compile(r'^foresight_prefetch_(\w+)_total\{([^}]*)\} ([0-9.e+]+)$')
    for line in reply.text.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        if labels.get("tenant") == tenant:
            counters[match.group(1)] = int(float(match.group(3)))
            arm = labels.get("arm", arm)
    return arm, counters


def wait_for_prefetcher(target: Target, tenant: str, timeout_s: float = PREFETCH_START_TIMEOUT_S) -> None:
    """Until the tenant's prefetch engine runs (its counters are in /metrics), or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while prefetch_counters(target, tenant)[0] is None and time.monotonic() < deadline:
        time.sleep(0.2)


def run_phase(target: Target, phase: Phase, trace: Sequence[str]) -> PhaseResult:
    if phase.prefetched:
        wait_for_prefetcher(target, phase.tenant)  # if it never comes, the row says "no prefetch"
    client = RespClient(target.host, target.port, target.ca_cert, phase.api_key)
    try:
        unique = sorted(set(trace))
        for i in range(0, len(unique), 128):
            client.command("DEL", *unique[i : i + 128])
        if phase.prepare is not None:
            phase.prepare(client)
        before, (_, prefetch_before) = client.stats(), prefetch_counters(target, phase.tenant)
        latencies = []
        for key in trace:
            start = time.perf_counter()
            client.command("GET", key)
            latencies.append((time.perf_counter() - start) * 1000)
        after, (arm, prefetch_after) = client.stats(), prefetch_counters(target, phase.tenant)
    finally:
        client.close()
    hits = after.get("keyspace_hits", 0) - before.get("keyspace_hits", 0)
    misses = after.get("keyspace_misses", 0) - before.get("keyspace_misses", 0)
    return PhaseResult(
        name=f"{arm} prefetch" if arm else "no prefetch",
        tenant=phase.tenant,
        prefetcher=arm,
        requests=len(trace),
        hits=hits,
        misses=misses,
        origin_fetches=after.get("origin_fetches", 0) - before.get("origin_fetches", 0),
        prefetch_issued=prefetch_after.get("issued", 0) - prefetch_before.get("issued", 0),
        prefetch_used=prefetch_after.get("used", 0) - prefetch_before.get("used", 0),
        hit_ratio=hits / max(1, hits + misses),
        p50_ms=statistics.median(latencies),
        p99_ms=statistics.quantiles(latencies, n=100)[98],
    )


def run_demo(target: Target, phases: Sequence[Phase], keys: Sequence[str]) -> list[PhaseResult]:
    """Each phase replays the same trace over the same objects (each tenant has its copy in the origin)."""
    trace = demo_trace(keys)
    return [run_phase(target, phase, trace) for phase in phases]
