"""`foresight bench access-log`: what recording reads for the prefetcher costs on the GET path.

Two measurements in one run. In process: the RESP dispatch of pipelined GETs (parse, look up, reply) on a
connection whose tenant records reads, and on one whose tenant does not, alternating rounds; the difference
is the recorder's cost per GET, once with the log drained as the worker drains it and once with the ring full
(every append also frees the entry it pushes out, and more live request keys cost memory locality). Served:
`redis-benchmark` GETs against `foresight serve --dev`, whose reciprocal throughput is what one served GET
costs the single-threaded server. The overhead is the first over the second, drained: the share of a served
GET that the access log adds. The ring is not full in service: a worker that is behind stops the recording
between its windows instead of letting it overflow (`service/prefetch/windows.py`), and
`foresight_prefetch_log_overflows_total` counts the drains that found it full anyway.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from service.config import Settings
from service.prefetch.access_log import AccessLog
from service.resp import framing
from service.resp.connection import RespConnection
from service.state import DEV_TENANT, ServiceState
from service.tenancy import TenantQuota, TenantSpec


class NullTransport:
    """What a RESP connection needs of a transport, writing nowhere: dispatch measured without the socket."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 0)

    def set_write_buffer_limits(self, high: int) -> None:
        pass


@dataclass(frozen=True)
class AccessLogCost:
    dispatch_ns: float  # in-process RESP dispatch of one pipelined GET, reads not recorded
    # What recording adds per GET: "drained" while the worker keeps up, "full" once it fell behind.
    added_ns: dict[str, float]
    served_get_us: dict[int, float]  # pipeline depth -> server time per served GET (1 / redis-benchmark rps)

    def overhead(self, pipeline: int, regime: str = "drained") -> float:
        """The recorder's share of one served GET at this pipeline depth."""
        return self.added_ns[regime] / (self.served_get_us[pipeline] * 1000)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "overhead": {str(p): self.overhead(p) for p in self.served_get_us},
                "overhead_full_ring": {str(p): self.overhead(p, "full") for p in self.served_get_us}}


def dispatch_cost(
    rounds: int = 121, batches: int = 1024, keys: int = 10_000, drain_every: int | None = 128
) -> tuple[float, float]:
    """Median ns per pipelined GET without the access log, and the median of the per-round differences with it
    recording (rounds alternate, so a pair shares the machine's state of the moment).

    `drain_every`: batches of 16 GETs between drains, outside the timed spans (draining is the worker's work,
    not the GET path's); 128 is 2048 GETs, about the 2 ms the service's idle worker waits. None: never drained,
    the ring full from the start, so every append also drops the oldest entry (the worker fell behind).
    """
    state = ServiceState(Settings(dev=True), None)
    state.tenants.sync([TenantSpec(name=DEV_TENANT, quota=TenantQuota(memory_bytes=1 << 30))])
    tenant = state.tenants.get(DEV_TENANT)
    assert tenant is not None
    for i in range(keys):
        tenant.store.set(b"key:%08d" % i, b"x" * 64)
    connection = RespConnection(state)
    connection.connection_made(NullTransport())  # type: ignore[arg-type]
    rng = random.Random(7)
    chunk = b"".join(framing.encode([b"GET", b"key:%08d" % rng.randrange(keys)]) for _ in range(16))
    log = AccessLog()
    if drain_every is None:
        record_hit = log.recorders()[0]
        for i in range(log.capacity):
            record_hit(b"key:%08d" % (i % keys))  # a fresh key object per entry, as parsed requests give
    span = drain_every or batches
    samples: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for recorded in (False, True):
            tenant.record_hit, tenant.record_miss = log.recorders() if recorded else (None, None)
            elapsed = 0.0
            for _ in range(batches // span):
                start = time.perf_counter()
                for _ in range(span):
                    connection.data_received(chunk)
                elapsed += time.perf_counter() - start
                if drain_every is not None:
                    log.drain()
            samples[recorded].append(elapsed / (batches // span * span * 16) * 1e9)
    added = statistics.median(r - p for p, r in zip(samples[False], samples[True], strict=True))
    return statistics.median(samples[False]), added


def measure(requests: int = 200_000, pipelines: tuple[int, ...] = (1, 16)) -> AccessLogCost:
    from service.bench.resp import measure as resp_measure

    plain, drained = dispatch_cost()
    _, full = dispatch_cost(drain_every=None)
    # SET first, so the GETs find values (a GET of a missing key is cheaper and would flatter the ratio).
    figures = [f for f in resp_measure(requests, 50, list(pipelines), 1, ["set", "get"]) if f.test == "get"]
    served = {f.pipeline: 1e6 / f.rps for f in figures if f.server == "foresight"}
    return AccessLogCost(plain, {"drained": drained, "full": full}, served)
