"""A/B assignment, checkpoints (encrypted, promoted, rolled back), drift detection, the async engine."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import stat
import threading
import time
from collections.abc import Hashable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from service.prefetch.answers import MODEL
from service.prefetch.base import Prediction, Predictions, Prefetcher
from service.prefetch.coordinator import PrefetchBudget
from service.prefetch.engine import PrefetchEngine
from service.prefetch.keys import KeyCodec
from service.prefetch.learned.prefetcher import LearnedPrefetcher, TrainConfig
from service.prefetch.mlops.ab import ABAssignment, LiveComparison, check_weights
from service.prefetch.mlops.checkpoints import KEEP_NEWEST, CheckpointError, CheckpointRegistry
from service.prefetch.mlops.drift import DriftDetector
from service.prefetch.windows import SETTLE_MARGIN, RecordingWindows

torch.set_num_threads(1)


class XorCipher:
    """Stands in for envelope encryption: keyed by the context, so a swapped checkpoint fails."""

    def _pad(self, n: int, context: bytes) -> bytes:
        stream = b""
        counter = 0
        while len(stream) < n:
            stream += hashlib.sha256(context + counter.to_bytes(8, "big")).digest()
            counter += 1
        return stream[:n]

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        tag = hashlib.sha256(context + plaintext).digest()
        body = plaintext + tag
        return bytes(a ^ b for a, b in zip(body, self._pad(len(body), context), strict=True))

    def decrypt(self, ciphertext: bytes, context: bytes) -> bytes:
        body = bytes(a ^ b for a, b in zip(ciphertext, self._pad(len(ciphertext), context), strict=True))
        plaintext, tag = body[:-32], body[-32:]
        if hashlib.sha256(context + plaintext).digest() != tag:
            raise ValueError("authentication failed")
        return plaintext


def test_ab_assignment_is_stable_per_tenant() -> None:
    ab = ABAssignment({"markov": 1, "learned": 1})
    first = {f"tenant-{i}": ab.arm(f"tenant-{i}") for i in range(400)}
    again = ABAssignment({"learned": 1, "markov": 1})  # same arms in another order, another process
    assert all(again.arm(t) == arm for t, arm in first.items())
    share = sum(arm == "learned" for arm in first.values()) / len(first)
    assert 0.4 < share < 0.6
    assert ABAssignment({"markov": 1, "learned": 1}, salt="next").arm("tenant-1") in {"markov", "learned"}



TENANTS = [f"tenant-{i}" for i in range(20_000)]


def test_ab_arms_get_tenants_in_proportion_to_their_weights() -> None:
    ab = ABAssignment({"learned": 0.2, "stride": 0.3, "markov": 0.5, "none": 0.0})
    arms = [ab.arm(t) for t in TENANTS]
    for arm, weight in (("learned", 0.2), ("stride", 0.3), ("markov", 0.5)):
        assert abs(arms.count(arm) / len(TENANTS) - weight) < 0.015, arm
    assert "none" not in arms  # a zero weight is never chosen


def test_adding_an_ab_arm_moves_tenants_only_to_the_new_arm() -> None:
    before = ABAssignment({"learned": 0.5, "stride": 0.5})
    after = ABAssignment({"learned": 0.5, "stride": 0.5, "baseline": 0.1})  # sorts before both
    moved = [(before.arm(t), after.arm(t)) for t in TENANTS if before.arm(t) != after.arm(t)]
    assert {new for _, new in moved} == {"baseline"}
    assert abs(len(moved) / len(TENANTS) - 0.1 / 1.1) < 0.01


@pytest.mark.parametrize(("arms", "named"), [({"learned": float("nan"), "stride": 1.0}, "'learned'"),
                                             ({"learned": float("inf"), "stride": 1.0}, "'learned'"),
                                             ({"learned": 1.0, "stride": -0.5}, "'stride'"),
                                             ({"learned": 0.0, "stride": 0.0}, "above 0"),
                                             ({}, "above 0")])
def test_ab_weights_that_cannot_split_tenants_are_refused_naming_the_arm(arms: dict[str, float],
                                                                         named: str) -> None:
    with pytest.raises(ValueError, match=named):
        check_weights(arms)
    with pytest.raises(ValueError, match=named):
        ABAssignment(arms)
    assert check_weights({"learned": 1, "stride": 0}) == {"learned": 1.0, "stride": 0.0}


def test_live_comparison_aggregates_per_arm() -> None:
    live = LiveComparison(ABAssignment({"stride": 1, "learned": 0}))
    live.record_read("acme", hit=True)
    live.record_read("acme", hit=False)
    live.record_prefetch("acme", issued=4, used=3)
    summary = live.summary()
    assert summary == {"stride": {"tenants": 1, "miss_ratio": 0.5, "prefetch_accuracy": 0.75, "requests": 2}}


def _trained(seed: int) -> LearnedPrefetcher:
    learned = LearnedPrefetcher(config=TrainConfig(warmup=256, train_every=128, seed=seed))
    learned.access_batch(list(range(600)))
    return learned


def test_checkpoint_round_trip_is_encrypted_and_restores_predictions(tmp_path: Path) -> None:
    source = _trained(seed=1)
    registry = CheckpointRegistry(tmp_path, tenant="acme", cipher=XorCipher())
    version = registry.save(source.state_dict(), metric=0.5)
    assert b"model" not in (tmp_path / f"v{version:04d}.ckpt").read_bytes()  # not plaintext at rest

    restored = LearnedPrefetcher(config=TrainConfig(warmup=256, train_every=128, seed=2))
    restored.load_state_dict(registry.load(version))
    probe = list(range(5000, 5064))
    for a, b in zip(source.state_dict()["model"].values(), restored.state_dict()["model"].values(), strict=True):
        assert torch.equal(a, b)
    assert restored.access_batch(probe)[-1][0].key == source.access_batch(probe)[-1][0].key

    other = CheckpointRegistry(tmp_path, tenant="globex", cipher=XorCipher())
    with pytest.raises(CheckpointError):
        other.load(version)  # bound to acme's context


def test_promotion_needs_a_better_metric_and_rollback_restores_the_previous(tmp_path: Path) -> None:
    registry = CheckpointRegistry(tmp_path, tenant="acme")
    v1 = registry.save({"w": torch.zeros(1)}, metric=0.40)
    assert registry.promote_if_better(v1)
    v2 = registry.save({"w": torch.ones(1)}, metric=0.401)
    assert not registry.promote_if_better(v2)  # within the margin: keep serving v1
    v3 = registry.save({"w": torch.ones(1)}, metric=0.50)
    assert registry.promote_if_better(v3)
    assert registry.rollback_target(0.45) is None
    assert registry.rollback_target(0.30) == v1  # live accuracy fell well below v1's: roll back to it
    registry.commit_serving(v1)
    assert CheckpointRegistry(tmp_path, tenant="acme").serving == v1  # the index survives a restart


def _versions_on_disk(directory: Path) -> set[int]:
    return {int(path.stem[1:]) for path in directory.glob("v*.ckpt")}


def test_checkpoints_are_pruned_to_the_serving_its_predecessor_and_the_newest(tmp_path: Path) -> None:
    registry = CheckpointRegistry(tmp_path, tenant="acme", cipher=XorCipher())
    rng = random.Random(0)
    for i in range(50):
        version = registry.save({"w": torch.full((1,), float(i))}, metric=rng.random())
        registry.promote_if_better(version)
        assert len(_versions_on_disk(tmp_path)) <= KEEP_NEWEST + 2
    serving = registry.serving
    assert serving is not None and registry.load(serving)["w"].item() == serving - 1
    # The versions 1 and 2 serve and served before it; the 48 later ones are not better: the newest three stay.
    pinned = CheckpointRegistry(tmp_path / "pinned", tenant="acme")
    for i, metric in enumerate([0.4, 0.5] + [0.3] * 48):
        pinned.promote_if_better(pinned.save({"w": torch.full((1,), float(i))}, metric=metric))
    assert _versions_on_disk(tmp_path / "pinned") == {1, 2, 48, 49, 50}
    reopened = CheckpointRegistry(tmp_path / "pinned", tenant="acme")
    assert reopened.serving == 2 and reopened.load(2)["w"].item() == 1.0
    assert reopened.rollback_target(0.1) == 1 and reopened.load(1)["w"].item() == 0.0


@pytest.mark.parametrize("index", ['{"versions": [', '{"versions": [], "serving": null}', "[]",
                                   '{"versions": [], "serving": "v1", "history": []}'])
def test_a_torn_or_foreign_index_is_a_checkpoint_error_naming_the_file(tmp_path: Path, index: str) -> None:
    (tmp_path / "index.json").write_text(index)
    with pytest.raises(CheckpointError, match=str(tmp_path / "index.json")):
        CheckpointRegistry(tmp_path, tenant="acme")


def test_checkpoint_writes_are_synced_before_the_rename_and_the_rename_after(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def noting_fsync(fd: int) -> None:
        events.append("sync directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "sync file")
        fsync(fd)

    def noting_replace(src: Path, dst: Path) -> None:
        events.append(f"rename {Path(dst).name}")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", noting_fsync)  # checkpoints write through envelope.atomic_output
    monkeypatch.setattr(os, "replace", noting_replace)
    CheckpointRegistry(tmp_path, tenant="acme").save({"w": torch.zeros(1)}, metric=0.5)
    assert events == ["sync file", "rename v0001.ckpt", "sync directory",
                      "sync file", "rename index.json", "sync directory"]


def test_a_rollback_changes_the_index_only_when_committed_after_the_load(tmp_path: Path) -> None:
    registry = CheckpointRegistry(tmp_path, tenant="acme")
    v1 = registry.save({"w": torch.zeros(1)}, metric=0.5)
    registry.promote_if_better(v1)
    v2 = registry.save({"w": torch.ones(1)}, metric=0.6)
    registry.promote_if_better(v2)
    assert registry.rollback_target(0.58) is None
    target = registry.rollback_target(0.3)
    assert target == v1 and registry.serving == v2
    assert CheckpointRegistry(tmp_path, tenant="acme").serving == v2  # a failed load would leave v2 serving
    registry.commit_serving(target)
    assert registry.serving == CheckpointRegistry(tmp_path, tenant="acme").serving == v1


@pytest.mark.parametrize("model_config", [{"hidden": 32}, None])
def test_versions_of_another_model_config_are_not_rolled_back_to_nor_stand_in_the_way_of_promotion(
    tmp_path: Path, model_config: dict[str, int] | None
) -> None:
    previous_release = CheckpointRegistry(tmp_path, tenant="acme")
    v1 = previous_release.save({"model_config": {"hidden": 16}, "w": torch.zeros(2)}, metric=0.8)
    previous_release.promote_if_better(v1)
    registry = CheckpointRegistry(tmp_path, tenant="acme", model_config=model_config)
    assert registry.compatible(v1) is (model_config is None)  # without a config of its own, any may be tried
    v2 = registry.save({"model_config": {"hidden": 32}, "w": torch.zeros(3)}, metric=0.5)
    assert registry.info(v2).meta["model_config"] == {"hidden": 32}
    assert registry.promote_if_better(v2)  # v1 cannot be loaded into this model: no bar to clear
    assert registry.rollback_target(0.0) is None  # v1 is the only version before it, of another config


def test_drift_detector_fires_when_accuracy_falls() -> None:
    drift = DriftDetector(window=100, drop=0.3)
    assert not any(drift.update(1.0 if i % 10 < 8 else 0.0) for i in range(1000))
    fired = [drift.update(1.0 if i % 10 < 3 else 0.0) for i in range(300)]
    assert any(fired)
    settled = drift.detections
    # The new level becomes the reference: a steady (if worse) model does not keep retraining.
    assert not any(drift.update(1.0 if i % 10 < 3 else 0.0) for i in range(1000))
    assert drift.detections == settled



def test_one_drop_in_accuracy_is_one_detection() -> None:
    """While the window slides down from the old level its mean keeps falling; the detector must not fire at
    each 30 % step of that fall (each firing queues more retraining)."""
    drift = DriftDetector()
    fired = [i for i, outcome in enumerate([1.0] * 5000 + [0.0] * 10000) if drift.update(outcome)]
    assert len(fired) == 1 and drift.detections == 1
    assert 5000 < fired[0] < 5000 + drift.window


def test_after_a_detection_the_next_full_window_sets_the_reference() -> None:
    drift = DriftDetector(window=100, drop=0.3)
    for _ in range(500):
        drift.update(1.0)
    assert any(drift.update(0.5) for _ in range(100))
    assert drift.reference is None  # refractory: the level after the drop is not known yet
    for _ in range(100):
        assert not drift.update(0.5)
    assert drift.reference == pytest.approx(0.5)
    assert any(drift.update(0.2) for _ in range(100))  # a second drop from the new level is detected
    assert drift.detections == 2


class NextKey(Prefetcher):
    name = "next"

    def access(self, key: int) -> list[Prediction]:
        return [Prediction(key + 1, 0.9)]


class AsyncCache:
    def __init__(self) -> None:
        self.data: set[bytes] = set()
        self.fetching: set[bytes] = set()

    def is_resident(self, key: bytes) -> bool:
        return key in self.data

    def in_flight(self, key: bytes) -> bool:
        return key in self.fetching

    async def prefetch(self, key: bytes) -> None:
        self.fetching.add(key)
        await asyncio.sleep(0)
        self.fetching.discard(key)
        self.data.add(key)


async def test_engine_prefetches_in_the_background() -> None:
    cache = AsyncCache()
    engine = PrefetchEngine(cache, NextKey(), PrefetchBudget(per_request=1))
    worker = asyncio.create_task(engine.run(interval=0.001))
    for i in range(5):
        engine.on_access(f"obj:{i}".encode(), hit=False)
    for _ in range(200):
        if b"obj:5" in cache.data:
            break
        await asyncio.sleep(0.005)
    engine.stop()
    await worker
    assert {b"obj:1", b"obj:5"} <= cache.data
    assert engine.coordinator.outstanding == 0


def _tour(seed: int) -> list[bytes]:
    """A fixed tour of opaque keys and numbered keys under several prefixes and zero-paddings."""
    rng = random.Random(seed)
    names = [b"session-%x-z" % rng.getrandbits(40) for _ in range(60)]
    names += [prefix % rng.randrange(10**4) for prefix in (b"user:%05d", b"cart-%d", b"img/%d", b"blk%08d")
              for _ in range(15)]
    return rng.sample(names, len(names))


def _model_proposals(engine: PrefetchEngine, reads: list[bytes]) -> list[list[tuple[bytes | None, float]]]:
    """The byte keys (and confidences) the model proposes after each read, a step per 64 reads."""
    out: list[list[tuple[bytes | None, float]]] = []

    def collect(chunk: list[tuple[Hashable, Predictions]], reads_after: int, source: str) -> None:
        if source == MODEL:
            out.extend([(engine.codec.decode(p.key), p.confidence) for p in props] for _, props in chunk)

    for begin in range(0, len(reads), 64):
        for key in reads[begin : begin + 64]:
            engine.on_access(key, hit=False)
        engine.step(collect)
    return out


def test_a_restored_model_proposes_the_same_keys_after_a_restart_that_first_sees_keys_in_another_order(
        tmp_path: Path) -> None:
    config = TrainConfig(warmup=256, train_every=128, seed=3)
    tour = _tour(seed=5)
    model = LearnedPrefetcher(use_experts=False, config=config)
    trained = PrefetchEngine(AsyncCache(), model)
    _model_proposals(trained, tour * 8)
    registry = CheckpointRegistry(tmp_path, tenant="acme")
    version = registry.save(model.state_dict(), metric=0.5)

    def restored(codec: KeyCodec) -> PrefetchEngine:
        model = LearnedPrefetcher(use_experts=False, config=config)
        model.load_state_dict(registry.load(version))
        return PrefetchEngine(AsyncCache(), model, codec=codec)

    # The same reads after a restore: into the process whose codec the model learned with (a rollback), and into a
    # restarted one whose first reads are the tour's keys in another order.
    reads = random.Random(7).sample(tour, len(tour)) + tour * 2
    expected = _model_proposals(restored(trained.codec), reads)
    assert sum(map(bool, expected)) > len(reads) // 2  # the model proposes, not just nothing
    assert _model_proposals(restored(KeyCodec()), reads) == expected


class Recording(NextKey):
    """NextKey that remembers every batch it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[int]] = []

    def access_batch(self, keys):  # type: ignore[no-untyped-def]
        self.batches.append(list(keys))
        return super().access_batch(keys)


def test_a_step_settles_every_access_but_predicts_from_the_newest_in_chunks() -> None:
    from service.prefetch.engine import CHUNK

    prefetcher = Recording()
    engine = PrefetchEngine(AsyncCache(), prefetcher, PrefetchBudget(per_request=1), max_batch=300)
    for i in range(1000):
        engine.on_access(f"obj:{i:04d}".encode(), hit=False)
    proposals = engine.step()
    assert [key for key, _ in proposals] == [f"obj:{i:04d}".encode() for i in range(700, 1000)]
    assert engine.unpredicted == 700 and engine.predicted == 300
    assert all(len(batch) <= CHUNK for batch in prefetcher.batches)
    assert sum(map(len, prefetcher.batches)) == 300
    assert engine.coordinator._clock == 1000  # every access was settled, predicted from or not
    assert engine.last_step_cpu_s > 0


def test_a_step_hands_over_each_chunk_as_it_is_predicted() -> None:
    from service.prefetch.engine import CHUNK

    engine = PrefetchEngine(AsyncCache(), Recording(), PrefetchBudget(per_request=1), max_batch=300)
    for i in range(300):
        engine.on_access(f"obj:{i:04d}".encode(), hit=False)
    emitted: list[tuple[list, int]] = []
    proposals = engine.step(lambda chunk, reads_after, source: emitted.append((chunk, reads_after)))
    assert [len(chunk) for chunk, _ in emitted] == [CHUNK, CHUNK, 300 - 2 * CHUNK]
    assert [after for _, after in emitted] == [300 - CHUNK, 300 - 2 * CHUNK, 0]
    assert [pair for chunk, _ in emitted for pair in chunk] == proposals


def test_issue_counts_how_many_reads_late_the_proposals_are() -> None:
    engine = PrefetchEngine(AsyncCache(), NextKey(), PrefetchBudget(per_request=1))
    for i in range(3):
        engine.on_access(f"new:{i}".encode(), hit=True)  # logged after the step's drain
    proposals = [(f"obj:{i}".encode(), [Prediction(i, 1.0)]) for i in range(4)]
    engine.issue(proposals, reads_after=10)
    # The last proposal's read had 10 of the batch and the 3 new reads after it; each earlier one, one more.
    assert engine.issue_lag_reads == (13 + 14 + 15 + 16)


def test_a_stopped_engine_issues_nothing_more() -> None:
    cache = AsyncCache()
    engine = PrefetchEngine(cache, NextKey(), PrefetchBudget(per_request=1))
    engine.stop()
    assert engine.issue([(b"obj:1", [Prediction(2, 1.0)])]) == 0
    assert engine.coordinator.stats.issued == 0


class Gated(NextKey):
    """NextKey whose later batches wait until the cache has seen a prefetch: only a worker that issues each
    chunk's proposals before predicting the next lets it through quickly."""

    def __init__(self, prefetched: threading.Event) -> None:
        super().__init__()
        self.prefetched, self.batches, self.waited = prefetched, 0, []

    def access_batch(self, keys):  # type: ignore[no-untyped-def]
        self.batches += 1
        if self.batches > 1:
            self.waited.append(self.prefetched.wait(timeout=2.0))
        return super().access_batch(keys)


async def test_the_worker_issues_a_chunk_before_the_step_ends() -> None:
    from service.prefetch.engine import CHUNK

    prefetched = threading.Event()

    class Signalling(AsyncCache):
        def prefetch(self, key: bytes):  # type: ignore[no-untyped-def]
            prefetched.set()
            return super().prefetch(key)

    prefetcher = Gated(prefetched)
    engine = PrefetchEngine(Signalling(), prefetcher, PrefetchBudget(per_request=1))
    for i in range(2 * CHUNK):
        engine.on_access(f"obj:{i:04d}".encode(), hit=False)
    worker = asyncio.create_task(engine.run(interval=0.001))
    for _ in range(400):
        if prefetcher.waited:
            break
        await asyncio.sleep(0.005)
    engine.stop()
    await worker
    assert prefetcher.waited == [True]  # the first chunk's prefetch started while the second was predicted


CATCH_UP_MS = 5  # how late a read loop's wake-up may be and still make up the reads it missed


class ReadPath:
    """What the engine routes: a tenant's read path, which records each read with whatever it points at."""

    def __init__(self) -> None:
        self.recorders = None
        self.reads = 0

    def route(self, recorders) -> None:  # type: ignore[no-untyped-def]
        self.recorders = recorders

    async def read_steadily(self, per_ms: int, seconds: float) -> None:
        """`per_ms` reads for each millisecond of wall time, however late the loop wakes this: a slow or loaded box
        reads in bigger bursts, not fewer reads (a wake-up more than `CATCH_UP_MS` late skips the rest)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline, done = started + seconds, 0
        while (now := loop.time()) < deadline:
            due = round((now - started) * 1000 * per_ms)
            for _ in range(min(due - done, CATCH_UP_MS * per_ms)):
                if self.recorders is not None:
                    self.recorders[0](f"obj:{self.reads:06d}".encode())
                self.reads += 1
            done = due
            await asyncio.sleep(0.001)


class Slow(Recording):
    """Takes `seconds` a batch, so reads pile up between steps."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def access_batch(self, keys):  # type: ignore[no-untyped-def]
        time.sleep(self.seconds)
        return super().access_batch(keys)


class LastSecond(NamedTuple):
    """What a worker did in the last second of `_run_reads`, once its read rate was measured."""

    reads: int
    recorded: int
    steps: int


async def _run_reads(max_batch: int, step_s: float, busy_interval: float) -> tuple[PrefetchEngine, LastSecond]:
    """1.5 s of 10 reads a millisecond through a routed read path, the engine's worker running; returns the
    engine and what it did in the last second."""
    path = ReadPath()
    engine = PrefetchEngine(AsyncCache(), Slow(step_s), PrefetchBudget(per_request=1), max_batch=max_batch,
                            route=path.route)
    path.route(engine.recorders)
    worker = asyncio.create_task(engine.run(interval=0.001, busy_interval=busy_interval))
    await path.read_steadily(per_ms=10, seconds=0.5)
    reads, recorded, steps = path.reads, engine.log.drained + len(engine.log), engine.steps
    await path.read_steadily(per_ms=10, seconds=1.0)
    engine.stop()
    await worker
    return engine, LastSecond(path.reads - reads, engine.log.drained + len(engine.log) - recorded,
                              engine.steps - steps)


@pytest.mark.parametrize(("step_s", "busy_interval"), [(0.02, 0.1), (0.05, 0.02)])
async def test_a_worker_that_is_behind_records_only_what_it_settles_and_predicts_from(
    step_s: float, busy_interval: float
) -> None:
    """Each step predicts from 32 of hundreds of reads: the read path records the reads after each issue that
    settle it and the 32 before the next step, nothing in between: neither while the worker waits nor while
    its step computes (the second case, where a step takes most of the time)."""
    engine, second = await _run_reads(32, step_s, busy_interval)
    # A step's windows: its 32 and the settle window of its one chunk, 128 reads at the measured rate (about 125
    # seen), whatever the share of all reads that is. Twice that leaves room for a rate misjudged and windows
    # ended late on a loaded box; recording every read is 600-1100 a step.
    windows = 32 + SETTLE_MARGIN * engine.coordinator.horizon
    assert second.recorded / second.steps <= 2 * windows, second
    assert engine.steps >= 10
    assert engine.predicted >= 0.8 * engine.steps * 32  # each step still found its full window of newest reads
    assert engine.coordinator.stats.issued > 0
    # The lag counts every read since the drain, recorded or not: a 20-50 ms step is 200-500 reads.
    assert engine.issue_lag_reads / engine.predicted > 100


async def test_a_worker_that_keeps_up_records_every_read() -> None:
    _, second = await _run_reads(100_000, 0.02, 0.1)
    assert second.recorded == second.reads


def _sampling_windows(path: ReadPath) -> RecordingWindows:
    windows = RecordingWindows(path.route, ("hit", "miss"), horizon=64, max_batch=8)  # type: ignore[arg-type]
    path.route(("hit", "miss"))
    windows.read_rate, windows.sampling = 10_000.0, True
    return windows


async def test_a_settle_window_records_the_horizon_after_an_issue_then_stops() -> None:
    path = ReadPath()
    windows = _sampling_windows(path)
    windows.step_starting()
    assert path.recorders is None  # the step's window is complete: nothing recorded while it computes
    windows.issued()
    assert path.recorders == ("hit", "miss")
    await asyncio.sleep(1.5 * 64 / 10_000 + 0.01)
    assert path.recorders is None and not windows.recording


async def test_a_stopped_engines_settle_window_leaves_the_next_engines_recording_alone() -> None:
    """A tenant whose prefetcher changes gets a new engine at once; the old one's pending settle window must not
    unroute the new one's recorders when it ends."""
    path = ReadPath()
    old = PrefetchEngine(AsyncCache(), NextKey(), PrefetchBudget(per_request=1), max_batch=8, route=path.route)
    assert old.windows is not None
    old.windows.read_rate, old.windows.sampling = 10_000.0, True
    old.windows.issued()  # a settle window of ~10 ms is running
    old.stop()
    path.route(("new hit", "new miss"))  # type: ignore[arg-type]
    await asyncio.sleep(0.03)
    assert path.recorders == ("new hit", "new miss")


async def test_sampling_ends_only_when_the_reads_between_steps_fit_one_step() -> None:
    """A sampled drain holds only the windows, often no more than a step predicts from: the worker stays behind
    while the rate measured in them says more reads came since the last step (else it would record every read
    until its next step and overflow the ring)."""
    path = ReadPath()
    windows = _sampling_windows(path)  # 8 reads a step
    windows.step_starting()
    await asyncio.sleep(0.05)  # paused
    windows._set(True)  # the fill window
    await asyncio.sleep(0.01)
    windows.step_starting()
    assert windows.step_done(drained=8, unpredicted=False)  # ~800 reads/s over 60 ms: ~48 reads came
    assert windows.sampling and path.recorders is None
    windows.issued()
    await asyncio.sleep(0.02)
    windows.step_starting()
    assert not windows.step_done(drained=0, unpredicted=False)  # the reads stopped
    assert not windows.sampling and path.recorders == ("hit", "miss")


async def test_stopping_a_paused_worker_leaves_the_read_path_unrecorded() -> None:
    path = ReadPath()
    windows = _sampling_windows(path)
    stopped = asyncio.Event()

    async def rest(seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), seconds)
        return stopped.is_set()

    windows.step_starting()
    idle = asyncio.create_task(windows.idle(1.0, rest))
    await asyncio.sleep(0.05)
    assert path.recorders is None
    path.route(None)  # what TenantPrefetch.stop does, then stops the engine
    stopped.set()
    await idle
    assert path.recorders is None


def test_cpu_budget_lends_a_share_of_wall_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.prefetch import engine as engine_module

    clock = [100.0]
    monkeypatch.setattr(engine_module.time, "monotonic", lambda: clock[0])
    budget = engine_module.CpuBudget(0.1, burst_s=0.05)
    assert budget.wait_s() == 0  # starts with its burst
    budget.charge(0.25)  # a step that overdrew: 0.2 s of CPU owed, repaid at 0.1 s per second
    assert budget.wait_s() == pytest.approx(2.0)
    clock[0] += 1.0
    assert budget.wait_s() == pytest.approx(1.0)
    clock[0] += 60.0
    assert budget.wait_s() == 0
    budget.charge(0.05)  # idle time does not bank more than the burst
    assert budget.wait_s() == pytest.approx(0.0)
    budget.charge(0.01)
    assert budget.wait_s() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="CPU share"):
        engine_module.CpuBudget(0.0)


def test_available_cores_respects_a_cgroup_quota(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from service.prefetch import engine as engine_module

    monkeypatch.setattr(engine_module.os, "sched_getaffinity", lambda pid: set(range(8)))
    cpu_max = tmp_path / "cpu.max"
    assert engine_module.available_cores(cpu_max) == 8  # no cgroup file: the affinity
    cpu_max.write_text("max 100000\n")
    assert engine_module.available_cores(cpu_max) == 8
    cpu_max.write_text("150000 100000\n")  # a container limited to 1.5 CPUs
    assert engine_module.available_cores(cpu_max) == 1.5
    cpu_max.write_text("garbage\n")
    assert engine_module.available_cores(cpu_max) == 8
    monkeypatch.delattr(engine_module.os, "sched_getaffinity")  # an OS without affinity: its core count
    monkeypatch.setattr(engine_module.os, "cpu_count", lambda: 6)
    assert engine_module.available_cores(tmp_path / "none") == 6


@pytest.mark.parametrize(("cores", "configured", "expected"), [(16, None, 1.0), (4, None, 1.0), (2, None, 0.1),
                                                                (1.5, None, 0.1), (16, 0.3, 0.3), (2, 0.5, 0.5)])
def test_the_prefetch_process_gets_a_core_where_one_is_spare(monkeypatch: pytest.MonkeyPatch, cores: float,
                                                              configured: float | None, expected: float) -> None:
    from service import prefetching
    from service.config import Settings
    from service.prefetch import engine as engine_module

    monkeypatch.setattr(engine_module, "available_cores", lambda: cores)
    settings = Settings(prefetch_cpu_share=0.1, prefetch_process_share=configured)
    assert prefetching.process_share(settings) == expected


@pytest.mark.parametrize(("cores", "configured", "expected"), [(16, None, 4), (7.5, None, 1), (8, None, 2),
                                                                (2, None, 1), (1, None, 1), (2, 3, 3), (64, 1, 1)])
def test_tenants_are_spread_over_a_prefetch_process_per_four_cores(monkeypatch: pytest.MonkeyPatch, cores: float,
                                                                    configured: int | None, expected: int) -> None:
    from service import prefetching
    from service.config import Settings
    from service.prefetch import engine as engine_module

    monkeypatch.setattr(engine_module, "available_cores", lambda: cores)
    assert prefetching.process_count(Settings(prefetch_processes=configured)) == expected
