"""The demo: a directory origin of objects for the demo tenant, and a short workload over RESP+TLS whose
report shows hit ratio and read latency.

Each `Phase` replays the same trace from a cold cache (its keys deleted first) and reads the tenant's INFO
counters around it. Today there is one phase, plain read-through; a phase with the prefetcher on is one more
`Phase` whose `prepare` turns it on for the tenant, and the report grows a row.
"""

from __future__ import annotations

import random
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hiredis

DEMO_OBJECTS = 256
TRACE_LENGTH = 800


def seed_origin(origin: Path, tenant: str, count: int = DEMO_OBJECTS) -> list[str]:
    """`count` objects under `<origin>/<tenant>/objects/` (written once); returns their keys."""
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
        parts = [a if isinstance(a, bytes) else a.encode() for a in args]
        self._sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts))
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
class Phase:
    name: str
    prepare: Callable[[RespClient], None] | None = None


@dataclass(frozen=True)
class PhaseResult:
    name: str
    requests: int
    hits: int
    misses: int
    origin_fetches: int
    hit_ratio: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PHASES = (Phase("read-through, no prefetch"),)


def run_phase(client: RespClient, phase: Phase, trace: Sequence[str]) -> PhaseResult:
    unique = sorted(set(trace))
    for i in range(0, len(unique), 128):
        client.command("DEL", *unique[i : i + 128])
    if phase.prepare is not None:
        phase.prepare(client)
    before = client.stats()
    latencies = []
    for key in trace:
        start = time.perf_counter()
        client.command("GET", key)
        latencies.append((time.perf_counter() - start) * 1000)
    after = client.stats()
    hits = after.get("keyspace_hits", 0) - before.get("keyspace_hits", 0)
    misses = after.get("keyspace_misses", 0) - before.get("keyspace_misses", 0)
    cuts = statistics.quantiles(latencies, n=100)
    return PhaseResult(
        name=phase.name,
        requests=len(trace),
        hits=hits,
        misses=misses,
        origin_fetches=after.get("origin_fetches", 0) - before.get("origin_fetches", 0),
        hit_ratio=hits / max(1, hits + misses),
        p50_ms=statistics.median(latencies),
        p99_ms=cuts[98],
    )


def run_demo(
    host: str, port: int, ca_cert: Path, api_key: str, keys: Sequence[str], phases: Sequence[Phase] = PHASES
) -> list[PhaseResult]:
    trace = demo_trace(keys)
    client = RespClient(host, port, ca_cert, api_key)
    try:
        return [run_phase(client, phase, trace) for phase in phases]
    finally:
        client.close()
