"""Prefetchers in a child process answer exactly as they would in-process, keep their own state when they share
the child, survive its death (or its hanging), and are charged for its CPU."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from service.prefetch import make_prefetcher
from service.prefetch.base import Predictions
from service.prefetch.coordinator import PrefetchBudget
from service.prefetch.engine import CpuBudget, PrefetchEngine
from service.prefetch.isolated import PrefetcherProcessError, PrefetchHost, PrefetchPool, ProcessPrefetcher
from service.prefetch.markov import DEFAULT_MAX_KEYS
from service.prefetch.shadow import CacheModel
from tests.prefetch.test_mlops import AsyncCache, NextKey
from tests.servers import wait_until

STRIDED = [1000 + 3 * i for i in range(200)] + [5000 + 7 * i for i in range(200)]
STRIDE_SPEC = ("stride", 0, "cpu", None, DEFAULT_MAX_KEYS)


def hang_new_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every prefetch child started while the returned file exists hangs before it reads a request, as one whose
    driver initialisation never returns would."""
    site, flag = tmp_path / "hanging-site", tmp_path / "hang"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        f"if 'service.prefetch.isolated' in sys.orig_argv and os.path.exists({str(flag)!r}):\n"
        "    time.sleep(3600)\n"
    )
    flag.touch()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return flag


@pytest.fixture
def stride_process():  # type: ignore[no-untyped-def]
    prefetcher = ProcessPrefetcher("stride", lead=2)
    yield prefetcher
    prefetcher.close()


def test_a_process_prefetcher_proposes_what_the_same_prefetcher_does_in_process(stride_process) -> None:  # type: ignore[no-untyped-def]
    expected = make_prefetcher("stride", lead=2).access_batch(STRIDED)
    assert sum(map(len, expected)) > 300  # mostly non-empty: the comparison covers real proposals
    assert stride_process.host.pid not in (None, os.getpid())
    batched = stride_process.access_batch(STRIDED[:150])
    assert batched + [stride_process.access(key) for key in STRIDED[150:]] == expected
    assert stride_process.offloaded_cpu_s > 0


def test_a_process_prefetcher_remembers_as_many_keys_as_asked() -> None:
    # A tour of 3,000 keys read twice: with 1,024 keys remembered, the second lap finds the first's successors
    # forgotten; with the default, it predicts them.
    tour = random.Random(4).sample(range(10**9), 3_000) * 2
    bounded = ProcessPrefetcher("markov", max_keys=1024)
    try:
        proposed = bounded.access_batch(tour)
    finally:
        bounded.close()
    assert proposed == make_prefetcher("markov", max_keys=1024).access_batch(tour)
    assert sum(map(len, proposed[3_000:])) < 100 < sum(map(len, make_prefetcher("markov").access_batch(tour)[3_000:]))


def test_tenants_share_one_child_but_not_their_state() -> None:
    host = PrefetchHost()
    try:
        first, second = ProcessPrefetcher("stride", host=host), ProcessPrefetcher("markov", host=host)
        other = [9000 - 5 * i for i in range(400)]
        assert first.access_batch(STRIDED) == make_prefetcher("stride").access_batch(STRIDED)
        assert second.access_batch(other) == make_prefetcher("markov").access_batch(other)
        assert host.starts == 1
        first.close()  # frees it in the child, which keeps serving the other
        assert second.access_batch(other) == make_prefetcher("markov").access_batch(other * 2)[len(other):]
        assert host.pid is not None
    finally:
        host.close()
    assert host.pid is None


def test_a_pool_starts_a_child_only_when_the_others_have_tenants_and_fills_the_emptiest() -> None:
    pool = PrefetchPool(3)
    try:
        first = ProcessPrefetcher("stride", host=pool.host())
        second = ProcessPrefetcher("stride", host=pool.host())
        assert len(pool.hosts) == 2 and first.host is not second.host
        more = [ProcessPrefetcher("markov", host=pool.host()) for _ in range(4)]
        assert len(pool.hosts) == 3 and sorted(len(h.members) for h in pool.hosts) == [2, 2, 2]
        pids = {host.pid for host in pool.hosts}
        assert len(pids) == 3 and None not in pids and os.getpid() not in pids
        assert all((host.resident_bytes() or 0) > 10e6 for host in pool.hosts)  # each an interpreter of its own
        second.close()  # its child now has the fewest: the next tenant goes there, no fourth child starts
        assert pool.host() is second.host and len(pool.hosts) == 3
        # Each child answers for its own tenants, the same as in-process.
        assert first.access_batch(STRIDED) == make_prefetcher("stride").access_batch(STRIDED)
        assert more[-1].access_batch(STRIDED) == make_prefetcher("markov").access_batch(STRIDED)
        # One child's death costs only its own tenants a call.
        os.kill(first.host.pid, signal.SIGKILL)  # type: ignore[arg-type]
        with pytest.raises(PrefetcherProcessError):
            first.access_batch(STRIDED)
        survivors = [p for p in more if p.host is not first.host]
        assert survivors
        for prefetcher in survivors:
            prefetcher.access_batch([1, 2, 3])  # answered by its own child, which never restarted
        assert all(p.host.starts == 1 for p in survivors)
    finally:
        pool.close()
    assert all(host.pid is None and host.resident_bytes() is None for host in pool.hosts)


def test_a_pool_needs_a_process() -> None:
    with pytest.raises(ValueError, match="at least one process"):
        PrefetchPool(0)


def test_a_dead_child_fails_one_call_and_the_next_call_starts_a_new_one() -> None:
    host = PrefetchHost()
    try:
        first, second = ProcessPrefetcher("stride", lead=2, host=host), ProcessPrefetcher("stride", host=host)
        first.access_batch(STRIDED)
        old = host.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        with pytest.raises(PrefetcherProcessError, match=r"prefetcher process stopped .*next call starts a new one"):
            first.access_batch([1, 2, 3])
        # A new child, where each prefetcher starts over: it remembers nothing of the old one.
        assert first.access_batch(STRIDED) == make_prefetcher("stride", lead=2).access_batch(STRIDED)
        assert second.access_batch(STRIDED) == make_prefetcher("stride").access_batch(STRIDED)
        assert host.pid not in (None, old)
        assert host.starts == 2
    finally:
        host.close()


def test_a_hung_child_fails_a_request_larger_than_the_socket_buffer_in_time_and_frees_the_host() -> None:
    """A checkpoint's weights (about 330 KB) do not fit the socket's buffer: a child that stopped reading must not
    block their send past the call's timeout, holding the host every other tenant of the child waits on."""
    host = PrefetchHost(call_timeout_s=1.0)
    outcomes: dict[str, tuple[object, float]] = {}

    def call(name: str, ident: int, op: str, arg: object) -> None:
        began = time.monotonic()
        try:
            outcome: object = host.call(ident, STRIDE_SPEC, op, arg)[0]
        except PrefetcherProcessError as err:
            outcome = err
        outcomes[name] = (outcome, time.monotonic() - began)

    host.create(1, STRIDE_SPEC)
    host.create(2, STRIDE_SPEC)
    hung = host.pid
    assert hung is not None
    os.kill(hung, signal.SIGSTOP)
    try:
        large = threading.Thread(target=call, args=("large", 1, "load_state_dict", {"w": b"x" * 1_000_000}))
        large.start()
        wait_until(host._lock.locked, "the large request to take the host")
        small = threading.Thread(target=call, args=("small", 2, "access", [1, 2, 3]))  # waits for the host
        small.start()
        large.join(10)
        small.join(60)  # it starts a new child
        error, took = outcomes["large"]
        assert isinstance(error, PrefetcherProcessError) and "no answer within 1 s" in str(error)
        assert took < 1.0 + 2  # the call's timeout, and slack for a loaded box; unbounded, it waits for the kill
        proposals, took = outcomes["small"]
        assert proposals == (make_prefetcher("stride").access_batch([1, 2, 3]), None)  # from a new child
        assert host.starts == 2 and host.pid not in (None, hung)
        assert not Path(f"/proc/{hung}").exists()  # killed and reaped
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGKILL)  # unblocks the calls where they were not bounded
        host.close()


def test_a_child_that_hangs_at_start_is_killed_and_starts_back_off_doubling_until_one_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusals say the wait left in whole seconds: 2 s of backoff reads "2 s" or, after a pause of half a
    second or more on a loaded box, "1 s"; doubled to 4 s it reads "4 s" or "3 s", which no undoubled one can."""
    hanging = hang_new_children(tmp_path, monkeypatch)
    host = PrefetchHost(start_timeout_s=1.0, start_backoff_s=2.0)
    try:
        with pytest.raises(PrefetcherProcessError, match="no answer within 1 s"):
            host.create(1, STRIDE_SPEC)
        refused = r"did not start \(.*no answer within 1 s\); the next try is in [12] s"
        with pytest.raises(PrefetcherProcessError, match=refused):
            host.create(2, STRIDE_SPEC)  # the next tenant fails at once instead of waiting out a start of its own
        assert host.starts == 1
        time.sleep(2.1)
        with pytest.raises(PrefetcherProcessError, match="no answer within 1 s"):
            host.create(2, STRIDE_SPEC)  # the backoff passed: one more try
        assert host.starts == 2
        with pytest.raises(PrefetcherProcessError, match=r"the next try is in [34] s"):  # doubled
            host.create(3, STRIDE_SPEC)
        hanging.unlink()
        time.sleep(4.1)
        host.start_timeout_s = 30.0  # a child that starts, however long a loaded box takes to start it
        host.create(3, STRIDE_SPEC)
        host.start_timeout_s = 1.0
        assert host.starts == 3
        assert host.call(3, STRIDE_SPEC, "access", [1])[0] == (make_prefetcher("stride").access_batch([1]), None)
        hanging.touch()
        os.kill(host.pid, signal.SIGKILL)  # type: ignore[arg-type]
        with pytest.raises(PrefetcherProcessError, match="stopped"):
            host.call(3, STRIDE_SPEC, "access", [1])  # the call in flight fails: not a start
        with pytest.raises(PrefetcherProcessError, match="no answer within 1 s"):
            host.call(3, STRIDE_SPEC, "access", [1])  # a new child, which hangs
        with pytest.raises(PrefetcherProcessError, match=r"the next try is in [12] s"):  # the backoff started over
            host.call(3, STRIDE_SPEC, "access", [1])
    finally:
        host.close()


def test_a_child_that_died_while_idle_is_reaped_and_reports_no_memory() -> None:
    host = PrefetchHost()
    try:
        ProcessPrefetcher("stride", host=host)
        pid = host.pid
        assert pid is not None and (host.resident_bytes() or 0) > 10e6
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while host.resident_bytes() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host.resident_bytes() is None  # not a zombie's 0 bytes
        assert not Path(f"/proc/{pid}").exists()  # reaped by the memory gauge's scrape, with nobody reading
    finally:
        host.close()


def test_a_child_that_cannot_build_its_prefetcher_fails_the_constructor_with_its_reason() -> None:
    host = PrefetchHost()
    try:
        with pytest.raises(PrefetcherProcessError, match=r"create failed .*unknown prefetcher 'nope'"):
            ProcessPrefetcher("nope", host=host)
        assert ProcessPrefetcher("stride", host=host).access_batch([1, 2, 3])  # the child is still serving
    finally:
        host.close()


def test_a_learned_models_checkpoint_crosses_the_process_boundary_on_the_cpu() -> None:
    cache = CacheModel(capacity=64)
    source = ProcessPrefetcher("learned", cache=cache)
    target = ProcessPrefetcher("learned", cache=cache, host=source.host)
    source_arms = ("stride", "markov", "network", "none")
    assert source.serving_arm is None  # no batch yet
    try:
        reads = STRIDED * 6
        for begin in range(0, len(reads), 128):  # as the engine sends them; a batch is labelled once it has passed
            source.access_batch(reads[begin : begin + 128])
        assert source.serving_arm in source_arms  # the child's choice crosses with each batch
        state = source.state_dict()
        assert state["labelled"] > 2048
        weights = state["model"]
        assert all(t.device.type == "cpu" for t in weights.values())
        target.load_state_dict(state)
        loaded = target.state_dict()
        assert loaded["labelled"] == state["labelled"]
        assert all(torch.equal(loaded["model"][name], tensor) for name, tensor in weights.items())
        with pytest.raises(PrefetcherProcessError, match="checkpoint is for model"):
            target.load_state_dict({**state, "model_config": {"hidden": -1}})
        assert target.access_batch([1, 2, 3])  # the child kept serving after the failed call
    finally:
        source.close()
        target.close()


def test_the_engine_charges_the_childs_cpu_to_the_process_budget(stride_process) -> None:  # type: ignore[no-untyped-def]
    threads, process = CpuBudget(1.0), CpuBudget(1.0)
    engine = PrefetchEngine(AsyncCache(), stride_process, PrefetchBudget(per_request=1), cpu=threads,
                            process_cpu=process)
    for i in range(400):
        engine.on_access(f"obj:{3 * i:05d}".encode(), hit=False)
    before = stride_process.offloaded_cpu_s
    assert engine.step()
    child = stride_process.offloaded_cpu_s - before
    assert child > 0
    assert engine.last_step_offloaded_s == pytest.approx(child)
    assert engine.last_step_cpu_s > 0  # the thread's own share: drain, settle, pickle


async def test_a_spent_process_budget_pauses_the_worker_and_spares_the_thread_budget(stride_process) -> None:  # type: ignore[no-untyped-def]
    threads, process = CpuBudget(1.0, burst_s=1.0), CpuBudget(1e-5, burst_s=1e-9)
    engine = PrefetchEngine(AsyncCache(), stride_process, PrefetchBudget(per_request=1), cpu=threads,
                            process_cpu=process)
    worker = asyncio.create_task(engine.run(interval=0.001))
    try:
        for i in range(2_000):
            engine.on_access(f"obj:{3 * i:05d}".encode(), hit=False)
            if i % 100 == 0:
                await asyncio.sleep(0.005)
    finally:
        engine.stop()
        await worker
    # At this share even the first step's few microseconds of child CPU are seconds of debt: no second step.
    assert engine.steps == 1
    assert process.wait_s() > 1.0
    assert threads.wait_s() == 0  # the thread's own CPU is far within its budget


async def test_the_engine_logs_a_failed_step_and_goes_on(stride_process, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    cache = AsyncCache()
    engine = PrefetchEngine(cache, stride_process, PrefetchBudget(per_request=1))
    os.kill(stride_process.host.pid, signal.SIGKILL)
    worker = asyncio.create_task(engine.run(interval=0.001, failed_interval=0.01))
    with caplog.at_level(logging.ERROR, logger="service.prefetch.engine"):
        for i in range(1, 2000):
            engine.on_access(f"obj:{i:05d}".encode(), hit=True)
            if b"obj:%05d" % (i + 1) in cache.data:
                break
            await asyncio.sleep(0.01)
    engine.stop()
    await worker
    assert engine.failures == 1
    assert "prefetch step failed (1 so far)" in caplog.text
    assert stride_process.host.starts == 2
    assert len(cache.data) > 0  # prefetching resumed with a new child


class FailsWhileBroken(NextKey):
    """NextKey that raises while `broken`, as a prefetcher whose child dies at every start; notes each call."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True
        self.calls: list[float] = []

    def access_batch(self, keys: Sequence[int]) -> list[Predictions]:
        self.calls.append(time.monotonic())
        if self.broken:
            raise PrefetcherProcessError("the prefetcher process stopped")
        return super().access_batch(keys)


async def _read_for(engine: PrefetchEngine, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
    """Log a read every 5 ms for `seconds`, or until `until()`."""
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline and not until():
        engine.on_access(f"obj:{i:05d}".encode(), hit=False)
        i += 1
        await asyncio.sleep(0.005)


async def test_a_worker_whose_steps_keep_failing_waits_twice_as_long_each_time_until_one_succeeds(
        caplog: pytest.LogCaptureFixture) -> None:
    prefetcher = FailsWhileBroken()
    engine = PrefetchEngine(AsyncCache(), prefetcher, PrefetchBudget(per_request=1))
    worker = asyncio.create_task(engine.run(interval=0.001, failed_interval=0.05, max_failed_interval=0.8))
    try:
        await _read_for(engine, 2.0)
        # 0.05, 0.1, 0.2, 0.4, then 0.8 s apart: 6 tries in 2 s where a fixed interval made 40.
        waits = [b - a for a, b in zip(prefetcher.calls, prefetcher.calls[1:], strict=False)]
        assert 4 <= engine.failures <= 8
        assert all(wait >= 0.9 * expected for wait, expected in zip(waits, [0.05, 0.1, 0.2, 0.4, 0.8, 0.8],
                                                                      strict=False))
        prefetcher.broken = False
        await _read_for(engine, 5.0, until=lambda: engine.steps > 0)
        assert engine.steps > 0
        prefetcher.broken = True
        caplog.clear()
        failures = engine.failures
        with caplog.at_level(logging.ERROR, logger="service.prefetch.engine"):
            await _read_for(engine, 5.0, until=lambda: engine.failures > failures)
        failed = [r.getMessage() for r in caplog.records if r.name == "service.prefetch.engine"]
        # A success started the wait over: the first failure after it waits 0.05 s again (it was 0.8 s).
        assert failed and failed[0].endswith("the next step in 0.05 s"), failed
    finally:
        engine.stop()
        await worker


def test_the_child_gets_no_credential_from_the_servers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORESIGHT_VAULT_TOKEN", "hvs.not-for-the-child")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-not-for-the-child")
    monkeypatch.setenv("FORESIGHT_TEST_MARKER_OK", "x")
    host = PrefetchHost()
    try:
        ProcessPrefetcher("stride", host=host)
        assert host.pid is not None
        with open(f"/proc/{host.pid}/environ", "rb") as environ:
            names = {entry.split(b"=", 1)[0] for entry in environ.read().split(b"\0") if entry}
        assert b"PATH" in names and b"PYTHONPATH" in names  # the environment is there, minus credentials
        assert not {b"FORESIGHT_VAULT_TOKEN", b"AWS_SECRET_ACCESS_KEY", b"FORESIGHT_TEST_MARKER_OK"} & names
    finally:
        host.close()


def test_a_closed_prefetcher_is_not_rebuilt_by_a_late_call() -> None:
    host = PrefetchHost()
    try:
        prefetcher = ProcessPrefetcher("stride", host=host)
        prefetcher.close()
        with pytest.raises(PrefetcherProcessError, match="was closed"):
            prefetcher.access_batch([1, 2, 3])  # e.g. a checkpoint that outlived its tenant's stop
        assert host.members == set() and host._created == set()  # the child holds no model for it
    finally:
        host.close()


class Checkpointable(NextKey):
    """NextKey with weights to checkpoint; remembers whether they were asked for after it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.read_after_close = 0

    def state_dict(self) -> dict[str, object]:
        self.read_after_close += self.closed
        return {"weights": torch.zeros(2)}

    def close(self) -> None:
        self.closed = True


async def test_stop_waits_for_a_checkpoint_in_progress_before_closing_the_prefetcher(tmp_path: Path) -> None:
    """A checkpoint is under way (held on the model lock) when the tenant's engine stops: stop cancels its task but
    not its thread, so it must let that checkpoint finish before closing the prefetcher, or the checkpoint reads
    (in a child: rebuilds) a closed model."""
    from concurrent.futures import ThreadPoolExecutor

    from service.prefetch.mlops.checkpoints import CheckpointRegistry
    from service.prefetching import TenantPrefetch
    from tests.prefetch.test_mlops import XorCipher

    class Tenant(AsyncCache):
        name = "t"

    prefetcher = Checkpointable()
    threads = ThreadPoolExecutor(2)
    engine = PrefetchEngine(Tenant(), prefetcher, executor=threads)
    checkpoints = CheckpointRegistry(tmp_path, "t", XorCipher())
    running = TenantPrefetch(Tenant(), "learned", 100, engine, checkpoints, interval=0.01)  # type: ignore[arg-type]
    engine.network.issued = 10  # evidence to checkpoint: prefetches the model made itself
    try:
        with engine.model_lock:  # the next checkpoint starts and waits here, mid-way
            running.start()
            await asyncio.to_thread(wait_until, running._checkpointing.locked, "a checkpoint to start")
            stopping = asyncio.create_task(running.stop())
            await asyncio.to_thread(wait_until, lambda: all(t.done() for t in running._tasks), "stop to end the tasks")
            await asyncio.sleep(0.2)  # time for a stop that did not wait to close the prefetcher
            assert not stopping.done() and not prefetcher.closed  # waits for the checkpoint
        await stopping
    finally:
        await asyncio.to_thread(threads.shutdown)
    assert prefetcher.closed and prefetcher.read_after_close == 0
    assert [p.name for p in tmp_path.glob("v*.ckpt")] == ["v0001.ckpt"]  # saved once, before the close
