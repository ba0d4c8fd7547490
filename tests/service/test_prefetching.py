"""Prefetching in the running service: reads feed the engine, prefetches land as hits, A/B arms are stable,
learned models are checkpointed encrypted, judged on their own prefetches, restored (also into a restarted
prefetch child) and deleted with their tenant, and no prefetcher holds up the service's start."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch

from service.cache import TenantRegistry
from service.config import Settings
from service.prefetch.answers import FAST, MODEL, AnswerSources
from service.prefetch.base import Prediction, Predictions, Prefetcher
from service.prefetch.engine import PrefetchEngine
from service.prefetch.isolated import PrefetcherProcessError
from service.prefetch.mlops.ab import ABAssignment
from service.prefetch.mlops.checkpoints import CheckpointRegistry
from service.prefetching import PrefetchManager, TenantPrefetch
from service.tenancy import TenantQuota, TenantSpec
from tests.prefetch.test_answers import SyncCache
from tests.prefetch.test_isolated import hang_new_children
from tests.prefetch.test_mlops import XorCipher
from tests.service.harness import RunningService, running_service, write_tenants_file
from tests.tlsutil import PKI


def _prefetching(svc: RunningService, timeout: float = 120) -> dict[str, Any]:
    """The tenants' prefetch engines (`TenantPrefetch`), once the sync the service starts in the background after
    it listens has built them (a learned one's child imports torch: seconds)."""
    prefetch = svc.state.prefetch
    asyncio.run_coroutine_threadsafe(prefetch.sync(svc.state.tenants), svc.loop).result(timeout)
    return dict(prefetch.running)


def _credit_the_model(svc: RunningService, running: Any, issued: int = 10, used: int = 5) -> None:
    """Count prefetches as the model's own, on the service's loop (a short scan is served by stride answers, which
    say nothing of the model, so its checkpoint would have no evidence to save)."""

    async def credit() -> None:
        running.engine.network.issued += issued
        running.engine.network.used += used

    svc.call(credit())


@pytest.fixture
def sequential_origin(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    (root / "default").mkdir(parents=True)
    for i in range(400):
        (root / "default" / f"item:{i:05d}").write_bytes(b"v%d" % i)
    return root / "default"


def _scan(port: int, n: int, pause: float = 0.004) -> int:
    """Read item:00000.. in order, pausing like a client doing work; returns how many were already cached."""
    client = redis.Redis(port=port)
    hits_before = client.info("stats")["keyspace_hits"]
    for i in range(n):
        assert client.get(f"item:{i:05d}") == b"v%d" % i
        time.sleep(pause)
    return int(client.info("stats")["keyspace_hits"]) - int(hits_before)


def test_stride_prefetch_turns_a_sequential_scan_into_hits(sequential_origin: Path) -> None:
    with running_service(dev=True, origin=str(sequential_origin), prefetcher="none") as svc:
        cold = _scan(svc.resp_port, 200)
        unprefetched = redis.Redis(port=svc.resp_port).info("prefetch")
    with running_service(dev=True, origin=str(sequential_origin), prefetcher="stride") as svc:
        _prefetching(svc)
        warm = _scan(svc.resp_port, 200)
        engine = svc.state.prefetch.running["default"].engine
        stats = engine.coordinator.stats
        assert engine.prefetcher.name == "stride"  # auto: in the thread
        assert engine.tuner is not None  # its lead is tuned live by default
        info = redis.Redis(port=svc.resp_port).info("prefetch")
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            metrics = http.get("/metrics").text
            shown = http.get("/v1/stats").json()["prefetch"]
    assert cold == 0
    # What the tenant itself sees (RESP INFO, HTTP /v1/stats): the same books under the same names.
    assert unprefetched == {"prefetcher": "none", "prefetched_inserted": 0, "prefetched_hits": 0,
                            "prefetched_evicted_unused": 0}
    assert info["prefetcher"] == info["prefetch_serving_arm"] == "stride"
    assert isinstance(info["prefetch_stride_lead"], int)
    assert info["prefetch_issued"] >= info["prefetch_used"] >= 150 and info["prefetched_hits"] >= 150
    assert set(shown) == set(info) and shown["prefetch_used"] >= info["prefetch_used"]  # counters only grow
    assert warm >= 150, f"only {warm} of 200 sequential reads were prefetched"
    assert stats.issued >= warm and stats.used >= 150
    assert 'foresight_prefetch_used_total{arm="stride",tenant="default"}' in metrics
    assert 'foresight_cache_prefetch_hits_total{tenant="default"}' in metrics
    assert 'foresight_prefetch_unpredicted_total{arm="stride",tenant="default"} 0.0' in metrics  # a slow scan
    # A prefetcher without arms is issued as it is: the engine runs no stride of its own beside it.
    assert 'foresight_prefetch_fast_answered_total{arm="stride",tenant="default"} 0.0' in metrics
    assert re.search(r'^foresight_prefetch_stride_lead\{arm="stride",tenant="default"\} \d+\.0$', metrics, re.M)
    predicted = re.search(r'^foresight_prefetch_predicted_total\{arm="stride",tenant="default"\} (\S+)$', metrics, re.M)
    assert predicted is not None and float(predicted.group(1)) >= 190  # all 200 reads, the last few perhaps not yet
    logged = re.search(r'^foresight_prefetch_logged_total\{arm="stride",tenant="default"\} (\S+)$', metrics, re.M)
    assert logged is not None and float(logged.group(1)) >= float(predicted.group(1))  # kept up: every read logged
    lag = re.search(r'^foresight_prefetch_issue_lag_reads_total\{arm="stride",tenant="default"\} (\S+)$', metrics, re.M)
    assert lag is not None
    assert float(lag.group(1)) < float(predicted.group(1))  # a slow scan: proposals out before the next read, mostly
    families = [line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE ")]
    assert len(families) == len(set(families)), "a metric family is exposed twice: Prometheus rejects the scrape"


@pytest.mark.parametrize("isolation", ["auto", "thread"])
def test_learned_prefetcher_runs_on_cpu_in_the_service(sequential_origin: Path, isolation: str) -> None:
    with running_service(dev=True, origin=str(sequential_origin), prefetcher="learned", prefetch_device="cpu",
                         prefetch_isolation=isolation) as svc:
        _prefetching(svc)
        warm = _scan(svc.resp_port, 200)
        running = svc.state.prefetch.running["default"]
        assert running.arm == "learned"
        assert running.engine.steps > 0 and running.engine.step_seconds > 0
        assert running.engine.sources is not None  # it serves one of its arms: its own stride answers beside it
        info = redis.Redis(port=svc.resp_port).info("prefetch")
        assert info["prefetcher"] == "learned"
        assert info["prefetch_serving_arm"] in {"stride", "markov", "network", "none"}
        assert info["prefetch_reads_predicted"] > 0 and info["prefetch_mean_lag_reads"] >= 0
        host = getattr(running.engine.prefetcher, "host", None)
        child = host.pid if host is not None else None
        assert (child is not None and child != os.getpid()) == (isolation == "auto")  # auto: learned in the process
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            metrics = http.get("/metrics").text
    resident = re.search(r'^foresight_prefetch_process_resident_bytes\{process="0"\} (\S+)$', metrics, re.M)
    if child is not None:  # the child imported torch: well over 100 MB, and it serves the one tenant
        assert resident is not None and float(resident.group(1)) > 100e6
        assert 'foresight_prefetch_process_tenants{process="0"} 1.0' in metrics
    else:
        assert resident is None and "foresight_prefetch_process_tenants{" not in metrics
    assert warm >= 100
    if child is not None:
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)  # stopping the service stopped and reaped the tenant's prefetcher process


def test_a_killed_prefetcher_process_costs_one_step_and_prefetching_resumes(sequential_origin: Path) -> None:
    with running_service(dev=True, origin=str(sequential_origin), prefetcher="learned", prefetch_device="cpu") as svc:
        engine = _prefetching(svc)["default"].engine
        _scan(svc.resp_port, 50)
        host = engine.prefetcher.host  # type: ignore[attr-defined]
        first, steps = host.pid, engine.steps
        os.kill(first, signal.SIGKILL)
        client = redis.Redis(port=svc.resp_port)
        deadline = time.monotonic() + 60  # the new child imports torch: seconds
        i = 50
        while time.monotonic() < deadline and not (host.starts == 2 and engine.steps > steps + 5):
            assert client.get(f"item:{i % 400:05d}") == b"v%d" % (i % 400)  # reads are served all along
            time.sleep(0.004)
            i += 1
        second = host.pid
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            metrics = http.get("/metrics").text
    assert engine.failures == 1 and host.starts == 2 and second not in (None, first)
    assert engine.steps > steps + 5  # predicting again, in the new child
    assert 'foresight_prefetch_failures_total{arm="learned",tenant="default"} 1.0' in metrics


def test_the_keys_a_prefetcher_remembers_are_configured(sequential_origin: Path) -> None:
    with running_service(dev=True, origin=str(sequential_origin), prefetcher="markov", prefetch_max_keys=4096) as svc:
        assert _prefetching(svc)["default"].engine.prefetcher.table.max_keys == 4096


def test_a_tenants_quota_bounds_the_keys_its_prefetcher_remembers(tmp_path: Path, pki: PKI) -> None:
    origin = tmp_path / "origin"
    for name in ("small", "plain"):
        (origin / name).mkdir(parents=True)
    tenants = tmp_path / "tenants.json"
    write_tenants_file(tenants, {"small": {"prefetch_max_keys": 4096}, "plain": {}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants, origin=str(origin),
                         prefetcher="markov", prefetch_max_keys=8192) as svc:
        state = svc.state
        _prefetching(svc)

        def bounds() -> dict[str, int]:
            return {name: running.engine.prefetcher.table.max_keys for name, running in state.prefetch.running.items()}

        assert bounds() == {"small": 4096, "plain": 8192}  # the deployment's bound where the quota sets none
        small = state.prefetch.running["small"]
        spec = TenantSpec(name="small", quota=TenantQuota(prefetch_max_keys=2048))
        svc.call(state.reload_tenant("small", lambda _: spec))
        svc.call(state.prefetch.sync(state.tenants))  # after the sync the change started in the background
        assert bounds() == {"small": 2048, "plain": 8192}
        assert state.prefetch.running["small"] is not small and small.engine._stopped.is_set()


def test_a_fixed_lead_is_configured_and_only_stride_answers_have_one_to_tune(sequential_origin: Path) -> None:
    with running_service(dev=True, origin=str(sequential_origin), prefetcher="stride", prefetch_lead=6,
                         prefetch_tune_lead=False) as svc:
        engine = _prefetching(svc)["default"].engine
        _scan(svc.resp_port, 50, pause=0)
        assert engine.tuner is None and engine.stride_lead == 6 and engine.prefetcher.distance == 7
    with running_service(dev=True, origin=str(sequential_origin), prefetcher="markov") as svc:
        assert _prefetching(svc)["default"].engine.stride_lead is None
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            assert "foresight_prefetch_stride_lead{" not in http.get("/metrics").text


def test_tenants_without_origin_get_no_engine() -> None:
    with running_service(dev=True, prefetcher="stride") as svc:
        assert _prefetching(svc) == {}
        assert svc.state.tenants.get("default").record_hit is None


@pytest.mark.parametrize("processes", [1, 3])
def test_ab_arms_are_assigned_per_tenant_and_stable(tmp_path: Path, pki: PKI, processes: int) -> None:
    origin = tmp_path / "origin"
    names = [f"t{i}" for i in range(12)]
    for name in names:
        (origin / name).mkdir(parents=True)
    tenants = tmp_path / "tenants.json"
    write_tenants_file(tenants, {name: {} for name in names})
    arms = {"stride": 1.0, "markov": 1.0}
    expected = {name: ABAssignment(arms).arm(name) for name in names}
    assert set(expected.values()) == {"stride", "markov"}  # both arms are used by this tenant set
    for _ in range(2):  # a restart keeps every tenant on its arm
        with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants,
                             origin=str(origin), prefetch_ab_arms=arms, prefetch_isolation="process",
                             prefetch_processes=processes) as svc:
            running = _prefetching(svc).values()
            assert {n: r.arm for n, r in svc.state.prefetch.running.items()} == expected
            pids = [r.engine.prefetcher.host.pid for r in running]  # type: ignore[attr-defined]
            # Twelve tenants spread evenly over the processes, each process with a CPU budget of its own.
            assert None not in pids and sorted(pids.count(pid) for pid in set(pids)) == [12 // processes] * processes
            budgets = {pid: {id(r.engine.process_cpu) for r in running if r.engine.prefetcher.host.pid == pid}  # type: ignore[attr-defined]
                       for pid in set(pids)}
            assert all(len(ids) == 1 for ids in budgets.values())
            assert len(set.union(*budgets.values())) == processes


def test_unknown_ab_arm_is_a_config_error() -> None:
    from service.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="unknown prefetchers: oracle"):
        load_settings(prefetch_ab_arms={"oracle": 1.0, "stride": 1.0})


@pytest.mark.parametrize("arms", [{"learned": float("nan"), "stride": 1.0}, {"learned": float("inf")},
                                  {"learned": -1.0, "stride": 2.0}, {"learned": 0.0, "stride": 0.0}])
def test_ab_weights_that_cannot_split_tenants_are_config_errors(arms: dict[str, float]) -> None:
    from service.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"A/B arm|weight above 0"):
        load_settings(prefetch_ab_arms=arms)


@pytest.mark.parametrize(("field", "value"), [("prefetch_max_keys", 10), ("prefetch_processes", 0)])
def test_prefetch_bounds_below_their_minimum_are_config_errors(field: str, value: int) -> None:
    from service.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=field):
        load_settings(**{field: value})


def test_learned_model_checkpoints_are_encrypted_and_restored(sequential_origin: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = dict(dev=True, origin=str(sequential_origin), prefetcher="learned", prefetch_device="cpu",
                    data_dir=data_dir, kms_provider="local", kms_key_id=str(tmp_path / "keyring.json"))
    with running_service(**settings) as svc:
        running = _prefetching(svc)["default"]
        _scan(svc.resp_port, 150, pause=0.002)
        _credit_the_model(svc, running)
        running.checkpoint()
        assert running.checkpoints is not None and running.checkpoints.serving == 1
        client = redis.Redis(port=svc.resp_port)
        for i in range(150, 300):
            client.get(f"item:{i:05d}")
            time.sleep(0.002)
        _credit_the_model(svc, running)  # fresh evidence, so the clean stop has a new version to save
    models = data_dir / "models" / "default"
    raw = (models / "v0001.ckpt").read_bytes()
    assert b"PK" not in raw[:4] and b"model_config" not in raw  # not a readable torch zip
    assert (models / "v0002.ckpt").exists()  # the clean stop checkpointed again
    with running_service(**settings) as svc:
        assert _prefetching(svc)["default"].checkpoints.serving in (1, 2)
    for checkpoint in models.glob("v*.ckpt"):
        checkpoint.write_bytes(b"not a checkpoint")  # damaged on disk: the tenant keeps prefetching, afresh
    with running_service(**settings) as svc:
        running = _prefetching(svc)["default"]
        assert running.arm == "learned" and _scan(svc.resp_port, 100) >= 40


def test_a_tenant_can_choose_its_own_prefetcher(tmp_path: Path, pki: PKI) -> None:
    origin = tmp_path / "origin"
    for name in ("plain", "eager"):
        (origin / name).mkdir(parents=True)
    tenants = tmp_path / "tenants.json"
    write_tenants_file(tenants, {"plain": {"prefetcher": "none"}, "eager": {"prefetcher": "markov"}})
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants, origin=str(origin),
                         prefetcher="stride") as svc:
        assert {n: r.arm for n, r in _prefetching(svc).items()} == {"eager": "markov"}


def test_every_read_path_records_hits_and_misses_in_order() -> None:
    """RESP GET and MGET and the HTTP API's reads all reach the access log, hit or miss, in request order."""
    import asyncio

    from service.bench.hotpath import NullTransport
    from service.config import Settings
    from service.prefetch.access_log import AccessLog
    from service.resp.connection import RespConnection
    from service.state import DEV_TENANT, ServiceState
    from service.tenancy import TenantSpec

    class Transport(NullTransport):
        written = b""

        def write(self, data: bytes) -> None:
            self.written += data

    state = ServiceState(Settings(dev=True), None)
    state.tenants.sync([TenantSpec(name=DEV_TENANT)])
    tenant = state.tenants.get(DEV_TENANT)
    tenant.store.set(b"a", b"1")
    tenant.store.set(b"c", b"3")
    log = AccessLog()
    tenant.record_hit, tenant.record_miss = log.recorders()
    transport = Transport()
    connection = RespConnection(state)
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n"
                             b"*4\r\n$4\r\nMGET\r\n$1\r\nc\r\n$1\r\nd\r\n$1\r\na\r\n")
    asyncio.run(tenant.get(b"e"))
    asyncio.run(tenant.get(b"c"))
    assert transport.written == b"$1\r\n1\r\n$-1\r\n*3\r\n$1\r\n3\r\n$-1\r\n$1\r\n1\r\n"
    assert log.drain() == [(b"a", True), (b"b", False), (b"c", True), (b"d", False), (b"a", True),
                           (b"e", False), (b"c", True)]


async def test_restarting_a_tenants_engine_never_cancels_a_client_read_joined_to_a_prefetch(tmp_path: Path) -> None:
    """A client miss joins the prefetch already fetching its key (one origin read); then the tenant's engine is
    replaced (its prefetcher changed). The client must get its value: the prefetch's fetch is the client's too."""
    from service.cache import TenantRegistry
    from service.config import Settings
    from service.prefetching import PrefetchManager

    (tmp_path / "t").mkdir()
    for i in range(200):
        (tmp_path / "t" / f"k{i}").write_bytes(b"v%d" % i)
    settings = Settings(origin=f"file://{tmp_path}", origin_latency_ms=300, prefetcher="stride",
                        prefetch_isolation="thread", prefetch_tune_lead=False)
    registry = TenantRegistry(settings)
    registry.sync([TenantSpec(name="t")])
    manager = PrefetchManager(settings, None)
    await manager.sync(registry)
    tenant = registry.get("t")
    assert tenant is not None
    try:
        for i in range(6):
            await tenant.get(b"k%d" % i)
        await asyncio.sleep(0.05)
        prefetching = [k for k in (b"k%d" % i for i in range(6, 40)) if tenant.in_flight(k)]
        assert prefetching, "the stride engine issued no prefetch"
        reading = asyncio.ensure_future(tenant.get(prefetching[-1]))  # joins the prefetch's fetch
        await asyncio.sleep(0.01)
        registry.upsert(TenantSpec(name="t", quota=TenantQuota(prefetcher="markov")))
        await manager.sync(registry)  # the stride engine stops, a Markov one starts
        assert await reading == b"v%d" % int(prefetching[-1][1:])
    finally:
        await manager.stop()


async def test_a_hung_prefetch_child_never_starves_other_tenants_reads(tmp_path: Path) -> None:
    """Busy tenants' steps all wait on one hung (SIGSTOPped) prefetch child, as many as the default executor has
    threads: a tenant without a prefetcher must still read through to its origin at once, not time out waiting
    for a thread."""
    from concurrent.futures import ThreadPoolExecutor

    from service.cache import TenantRegistry
    from service.config import Settings
    from service.prefetching import PrefetchManager

    threads = 4
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(threads))
    busy = [f"t{i}" for i in range(threads)]
    for name in [*busy, "victim"]:
        (tmp_path / name).mkdir()
        for i in range(4):
            (tmp_path / name / f"k{i}").write_bytes(b"v%d" % i)
    settings = Settings(origin=f"file://{tmp_path}", origin_timeout_s=2.0, prefetcher="stride",
                        prefetch_isolation="process", prefetch_processes=1, prefetch_tune_lead=False)
    registry = TenantRegistry(settings)
    victim_spec = TenantSpec(name="victim", quota=TenantQuota(prefetcher="none"))
    registry.sync([TenantSpec(name=n) for n in busy] + [victim_spec])
    manager = PrefetchManager(settings, None)
    await manager.sync(registry)
    assert sorted(manager.running) == busy
    pid = manager.processes[0].pid
    assert pid is not None
    victim = registry.get("victim")
    assert victim is not None
    try:
        os.kill(pid, signal.SIGSTOP)
        for name in busy:  # each busy tenant records reads, so its next step asks the hung child
            tenant = registry.get(name)
            assert tenant is not None
            for i in range(1, 4):
                tenant.store.set(b"h%d" % i, b"x")
                await tenant.get(b"h%d" % i)
        await asyncio.sleep(0.3)  # the steps are under way, stuck on the child
        started = time.monotonic()
        assert await victim.get(b"k1") == b"v1"
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(pid, signal.SIGCONT)
        await manager.stop()


async def test_origin_reads_have_threads_of_their_own(tmp_path: Path) -> None:
    """With every default-executor thread busy (checkpoints, audit writes, anything on asyncio.to_thread), a
    read-through miss still reads its origin at once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from service.cache import TenantRegistry
    from service.config import Settings

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(2))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "k").write_bytes(b"v")
    registry = TenantRegistry(Settings(origin=f"file://{tmp_path}", origin_timeout_s=1.0))
    registry.sync([TenantSpec(name="t")])
    tenant = registry.get("t")
    assert tenant is not None
    release = threading.Event()
    blocked = [loop.run_in_executor(None, release.wait) for _ in range(2)]
    try:
        assert await tenant.get(b"k") == b"v"
    finally:
        release.set()
        await asyncio.gather(*blocked)


@pytest.mark.parametrize("policy", ["lru", "s3fifo"])
async def test_a_read_that_joins_a_prefetch_caches_its_key_as_read_not_as_an_unread_prefetch(
        tmp_path: Path, policy: str) -> None:
    """The client asked for the key while the prefetch was loading it: the value it gets is a demand read, so it is
    not the next victim (LRU puts unread prefetches at the cold end) nor counted as prefetch work."""
    from service.cache import TenantRegistry
    from service.config import Settings
    from service.store.memory import entry_size

    for name in ("x", "warm0", "warm1", "warm2", "new"):
        (tmp_path / name).write_bytes(b"v" * 100)
    budget = entry_size(b"warm0", b"v" * 100) * 4
    registry = TenantRegistry(Settings(dev=True, eviction_policy=policy, origin_latency_ms=200))
    tenant = registry.upsert(TenantSpec(name="t", quota=TenantQuota(memory_bytes=budget, origin=f"file://{tmp_path}")))
    try:
        for key in (b"warm0", b"warm1", b"warm2"):
            tenant.store.set(key, b"v" * 100)
            tenant.store.get(key)
        assert tenant.prefetch(b"x") is not None
        await asyncio.sleep(0.05)  # the prefetch is loading x ...
        assert await tenant.get(b"x") == b"v" * 100  # ... when the client asks for it
        entry = tenant.store.entry(b"x")
        assert entry is not None and not entry.prefetched
        tenant.store.set(b"new", b"v" * 100)  # one key must go to make room
        if policy == "lru":
            assert b"x" in tenant.store  # the coldest warm key went, not the key just read
        stats = tenant.store.stats
        assert (stats.prefetch_inserted, stats.prefetch_used, tenant.flights.started) == (0, 0, 1)
    finally:
        registry.close()


def test_the_service_listens_at_once_while_its_prefetch_child_hangs_at_start(
        sequential_origin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that hangs while starting (a driver initialisation that never returns) is waited on for the start
    timeout, per tenant before the host backed off: the ports, /healthz included, must not wait for it."""
    from service.prefetch import isolated

    hang_new_children(tmp_path, monkeypatch)
    monkeypatch.setattr(isolated, "PrefetchHost", functools.partial(isolated.PrefetchHost, start_timeout_s=10.0))
    began = time.monotonic()
    with running_service(dev=True, origin=str(sequential_origin), prefetcher="learned", prefetch_device="cpu",
                         prefetch_isolation="process") as svc:
        client = redis.Redis(port=svc.resp_port)
        assert client.ping()
        answered_s = time.monotonic() - began
        assert client.get("item:00001") == b"v1"  # served, without a prefetcher for now
        with httpx.Client(base_url=svc.endpoints.http_url) as http:
            assert http.get("/healthz").status_code == 200
        assert svc.state.prefetch.running == {}
        stopping = time.monotonic()
    assert answered_s < 3.0
    assert time.monotonic() - stopping < 8.0  # the stop killed the hung child instead of waiting out its start



class Weighted(Prefetcher):
    """A prefetcher with arms and weights to checkpoint, which refuses weights of another shape (the learned one
    refuses another model's)."""

    name = "weighted"

    def __init__(self, serving: str = "network") -> None:
        super().__init__(lead=0)
        self.serving = serving
        self.weights = torch.zeros(2)

    @property
    def serving_arm(self) -> str:
        return self.serving

    def access(self, key: int) -> Predictions:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["weights"].shape != self.weights.shape:
            raise ValueError(f"checkpoint is for weights of shape {tuple(state['weights'].shape)}")
        self.weights = state["weights"]


class Tenant:
    name = "t"


def test_checkpoints_judge_the_model_only_by_the_prefetches_it_made(tmp_path: Path) -> None:
    """The engine's own stride answers and the prefetcher's stride and Markov arms are issued too; a checkpoint of
    the model's weights is promoted or rolled back on the accuracy of the prefetches the model made."""
    prefetcher = Weighted(serving="stride")
    engine = PrefetchEngine(SyncCache(), prefetcher)
    sources = engine.sources = AnswerSources(engine.coordinator, lead=0)
    checkpoints = CheckpointRegistry(tmp_path, "t", XorCipher())
    running = TenantPrefetch(Tenant(), "learned", 100, engine, checkpoints, interval=300)  # type: ignore[arg-type]
    keys = (b"k%d" % i for i in itertools.count())

    def prefetch(source: str, read: bool) -> None:
        key = next(keys)
        sources.serving = source
        assert engine.issue([(b"r", [Prediction(engine.codec.encode(key), 0.9)])], 0, source) == 1
        if read:
            engine.on_access(key, hit=True)
        engine.step()  # settles the read

    for _ in range(10):
        prefetch(FAST, read=True)  # the engine's stride answers
        prefetch(MODEL, read=True)  # the prefetcher's answers, from its stride arm
    running.checkpoint()
    assert engine.coordinator.stats.used == 20
    assert checkpoints.serving is None and not list(tmp_path.glob("v*.ckpt"))  # nothing of the model's to judge
    prefetcher.serving = "network"
    for i in range(10):
        prefetch(MODEL, read=i < 4)
    running.checkpoint()
    assert (engine.network.issued, engine.network.used) == (10, 4)
    assert checkpoints.serving == 1 and checkpoints.info(1).metric == pytest.approx(0.4)


def test_a_rollback_to_a_model_that_does_not_load_leaves_the_serving_version(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoints = CheckpointRegistry(tmp_path, "t", XorCipher())
    older = checkpoints.save({"weights": torch.zeros(3)}, 0.8)  # from a release whose model had another shape
    assert checkpoints.promote_if_better(older)
    serving = checkpoints.save({"weights": torch.ones(2)}, 0.9)
    assert checkpoints.promote_if_better(serving)
    engine = PrefetchEngine(SyncCache(), Weighted())
    running = TenantPrefetch(Tenant(), "learned", 100, engine, checkpoints, interval=300)  # type: ignore[arg-type]
    engine.network.issued, engine.network.used = 100, 10  # live accuracy 0.1, far below the older version's
    with caplog.at_level(logging.ERROR, logger="service.prefetching"):
        running.checkpoint()
    assert f"model v{older} did not load" in caplog.text
    assert checkpoints.serving == serving
    assert CheckpointRegistry(tmp_path, "t", XorCipher()).serving == serving  # what a restart loads


def test_a_rollback_loads_the_earlier_model_before_the_index_names_it(tmp_path: Path) -> None:
    checkpoints = CheckpointRegistry(tmp_path, "t", XorCipher())
    assert checkpoints.promote_if_better(checkpoints.save({"weights": torch.zeros(2)}, 0.8))
    assert checkpoints.promote_if_better(checkpoints.save({"weights": torch.ones(2)}, 0.9))

    class Watched(Weighted):
        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.serving_while_loading = checkpoints.serving
            super().load_state_dict(state)

    prefetcher = Watched()
    engine = PrefetchEngine(SyncCache(), prefetcher)
    running = TenantPrefetch(Tenant(), "learned", 100, engine, checkpoints, interval=300)  # type: ignore[arg-type]
    engine.network.issued, engine.network.used = 100, 10
    running.checkpoint()
    assert prefetcher.serving_while_loading == 2 and checkpoints.serving == 1
    assert torch.equal(prefetcher.weights, torch.zeros(2))


def _learned_tenants(tmp_path: Path, names: list[str], **overrides: Any) -> tuple[Settings, TenantRegistry]:
    for name in names:
        (tmp_path / "origin" / name).mkdir(parents=True, exist_ok=True)
    settings = Settings(**{"origin": f"file://{tmp_path / 'origin'}", "data_dir": tmp_path / "data",
                           "prefetcher": "learned", "prefetch_device": "cpu", "prefetch_isolation": "thread",
                           "prefetch_tune_lead": False, **overrides})
    registry = TenantRegistry(settings)
    registry.sync([TenantSpec(name=name) for name in names])
    return settings, registry


async def test_an_unreadable_model_index_is_set_aside_and_the_tenant_starts_a_new_model(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings, registry = _learned_tenants(tmp_path, ["t"])
    models = tmp_path / "data" / "models"
    (models / "t").mkdir(parents=True)
    (models / "t" / "index.json").write_text('{"versions": [')  # torn
    manager = PrefetchManager(settings, XorCipher())  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.ERROR, logger="service.prefetching"):
            await manager.sync(registry)
        running = manager.running["t"]
        assert running.checkpoints is not None and running.checkpoints.serving is None  # a new model
        assert str(models / "t" / "index.json") in caplog.text
        [aside] = models.glob("t.unreadable-*")
        assert (aside / "index.json").read_text() == '{"versions": ['  # kept for a look, never loaded
    finally:
        await manager.stop()
        registry.close()


async def test_a_deleted_tenants_models_go_with_it_and_a_new_tenant_of_its_name_starts_cold(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings, registry = _learned_tenants(tmp_path, ["acme", "other"])
    models = tmp_path / "data" / "models"
    manager = PrefetchManager(settings, XorCipher())  # type: ignore[arg-type]

    async def checkpoint(name: str) -> None:
        running = manager.running[name]
        state = await running.run_blocking(running.engine.prefetcher.state_dict)
        assert running.checkpoints is not None
        assert running.checkpoints.promote_if_better(running.checkpoints.save(state, 0.9))

    try:
        await manager.sync(registry)
        await checkpoint("acme")
        await checkpoint("other")
        (models / "acme.unreadable-20260101T000000Z").mkdir()  # set aside once: derived from acme's reads too
        registry.sync([TenantSpec(name="other")])  # acme is deleted
        await manager.sync(registry)
        assert sorted(p.name for p in models.iterdir()) == ["other"]
        registry.sync([TenantSpec(name="acme"), TenantSpec(name="other")])  # a new customer takes the name
        with caplog.at_level(logging.INFO, logger="service.prefetching"):
            await manager.sync(registry)
            assert manager.running["acme"].checkpoints.serving is None
            assert "loaded model" not in caplog.text
            # Deleted and created again between two syncs: the new tenant is another TenantCache.
            await checkpoint("acme")
            registry.sync([TenantSpec(name="other")])
            registry.sync([TenantSpec(name="acme"), TenantSpec(name="other")])
            await manager.sync(registry)
        assert manager.running["acme"].checkpoints.serving is None
        assert "loaded model" not in caplog.text
        assert (models / "other" / "v0001.ckpt").exists()  # the tenant that stayed kept its model
    finally:
        await manager.stop()
        registry.close()


async def test_models_an_earlier_tenant_of_the_name_left_are_never_loaded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings, _ = _learned_tenants(tmp_path, ["acme"])
    models = tmp_path / "data" / "models" / "acme"
    metrics = itertools.count(10, 10)  # each checkpoint well above the one before: promoted

    async def run(incarnation: str, replaced_by: str | None = None) -> int | None:
        """Serve acme (this incarnation) in a fresh manager, as a service start does; checkpoint a model; say
        which version it loaded at the start."""
        registry = TenantRegistry(settings)
        registry.sync([TenantSpec(name="acme", incarnation=incarnation)])
        manager = PrefetchManager(settings, XorCipher())  # type: ignore[arg-type]
        try:
            await manager.sync(registry)
            running = manager.running["acme"]
            assert running.checkpoints is not None
            loaded = running.checkpoints.serving
            state = await running.run_blocking(running.engine.prefetcher.state_dict)
            assert running.checkpoints.promote_if_better(running.checkpoints.save(state, next(metrics) / 100))
            if replaced_by is not None:  # deleted and created again between two refreshes
                registry.sync([TenantSpec(name="acme", incarnation=replaced_by)])
                await manager.sync(registry)
                assert manager.running["acme"].checkpoints.serving is None  # type: ignore[union-attr]
            return loaded
        finally:
            await manager.stop()
            registry.close()

    assert await run("a1") is None
    assert await run("a1") == 1  # the same tenant, restarted: its model comes back
    with caplog.at_level(logging.INFO, logger="service.prefetching"):
        assert await run("b2") is None  # deleted and created again while the service was down
        assert "an earlier tenant of its name trained them" in caplog.text
        assert (models / "incarnation").read_text() == "b2"
        assert await run("b2", replaced_by="c3") == 1
    assert (models / "incarnation").read_text() == "c3"
    (models / "incarnation").unlink()  # as a release before incarnations left it
    assert await run("c3") is None


async def test_a_restarted_prefetch_child_reloads_the_serving_model(tmp_path: Path) -> None:
    """The child died (OOM-killed, say) and the new one builds each tenant's model afresh: it must load the
    tenant's serving checkpoint, or the next checkpoint saves the untrained model."""
    settings, registry = _learned_tenants(tmp_path, ["t"], prefetch_isolation="process", prefetch_processes=1)
    manager = PrefetchManager(settings, XorCipher())  # type: ignore[arg-type]
    try:
        await manager.sync(registry)
        running = manager.running["t"]
        prefetcher = running.engine.prefetcher
        reads = [1000 + 3 * i for i in range(3000)]
        for begin in range(0, len(reads), 128):
            await running.run_blocking(functools.partial(prefetcher.access_batch, reads[begin : begin + 128]))
        trained = await running.run_blocking(prefetcher.state_dict)
        assert trained["labelled"] > 2000
        assert running.checkpoints is not None
        assert running.checkpoints.promote_if_better(running.checkpoints.save(trained, 0.5))
        os.kill(prefetcher.host.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        with pytest.raises(PrefetcherProcessError):
            await running.run_blocking(functools.partial(prefetcher.access_batch, [1, 2, 3]))  # the call in flight
        await running.run_blocking(functools.partial(prefetcher.access_batch, [1, 2, 3]))  # in a new child
        restored = await running.run_blocking(prefetcher.state_dict)
        assert prefetcher.host.starts == 2  # type: ignore[attr-defined]
        assert restored["labelled"] >= trained["labelled"]
    finally:
        await manager.stop()
        registry.close()
