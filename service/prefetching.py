"""Prefetching inside the running service: which prefetcher each tenant gets, its engine task, and its model's
versions.

A tenant's prefetcher comes from the A/B assignment when `prefetch_ab_arms` is set (stable per tenant), else
from `prefetcher`; tenants without an origin get none (there is nothing to prefetch from). A learned model is
checkpointed every `prefetch_checkpoint_interval_s` with its live prefetch accuracy as the metric (of the
prefetches the model itself issued, `NetworkBooks`), encrypted by the deployment's KMS; a better version is
promoted, and a serving version that falls well below its predecessor is rolled back and its predecessor's weights
loaded. Nothing is checkpointed without a KMS. A tenant's checkpoints are deleted when the tenant is, and a
tenant's models directory records the tenant's incarnation: one left by an earlier tenant of the name (deleted
while the service was down, or by a release before incarnations) is deleted, never loaded. A new prefetch child
process reloads the serving version into each tenant's model that it rebuilds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cache import TenantCache, TenantRegistry
from service.config import Settings
from service.security.envelope import atomic_output

if TYPE_CHECKING:
    from service.prefetch.base import Prefetcher
    from service.prefetch.coordinator import PrefetchBudget
    from service.prefetch.engine import PrefetchEngine
    from service.prefetch.mlops.checkpoints import CheckpointRegistry
    from service.prefetch.windows import Recorders
    from service.security.envelope import EnvelopeCipher

log = logging.getLogger(__name__)


def resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# A host with this many cores has one to spare for the prefetch process beside the server's event loop.
SPARE_CORE_FROM = 4


def process_share(settings: Settings) -> float:
    """The prefetch child's CPU share: as configured, else a whole core where one is spare (the child then
    takes a core, not the server's interpreter lock), else the worker threads' share."""
    if settings.prefetch_process_share is not None:
        return settings.prefetch_process_share
    from service.prefetch.engine import available_cores

    return 1.0 if available_cores() >= SPARE_CORE_FROM else settings.prefetch_cpu_share


def process_count(settings: Settings) -> int:
    """How many prefetch child processes tenants are spread over: as configured, else one per 4 cores the server
    may use (each child computes on one core), at least one."""
    if settings.prefetch_processes is not None:
        return settings.prefetch_processes
    from service.prefetch.engine import available_cores

    return max(1, int(available_cores() // SPARE_CORE_FROM))


# In a tenant's models directory: the incarnation (TenantSpec.incarnation) of the tenant whose reads trained them.
INCARNATION_FILE = "incarnation"

# Until a tenant's store holds data, its entries are assumed to be this large when sizing the shadow caches.
ASSUMED_ENTRY_BYTES = 4096


def entry_capacity(tenant: TenantCache) -> int:
    """About how many entries the tenant's budget holds: what the learned prefetcher's shadow caches model."""
    store = tenant.store
    mean = store.used // len(store) if len(store) else ASSUMED_ENTRY_BYTES
    return max(1, store.budget // max(1, mean))


# Threads the engines' steps and checkpoints run on: their own, never the default executor that the origin reads
# and the rest of the service share (a hung prefetch child would block a thread per busy tenant for a minute and
# starve every tenant's reads). Each child gets its own few, so one that hangs stalls only its own tenants.
HOST_THREADS = 2  # per child: one tenant's step computes in the server while another's waits on the child
THREAD_STEP_THREADS = 2  # for every prefetcher that computes in the server (isolation "thread")


def route_reads(tenant: TenantCache, recorders: Recorders | None) -> None:
    """Point the tenant's read path at an access log's (hit, miss) recorders, or at nothing."""
    tenant.record_hit, tenant.record_miss = recorders or (None, None)


class TenantPrefetch:
    """One tenant's engine, its background task and (for a learned model) its checkpoint registry."""

    def __init__(self, tenant: TenantCache, arm: str, max_keys: int, engine: PrefetchEngine,
                 checkpoints: CheckpointRegistry | None, interval: float) -> None:
        self.tenant, self.arm, self.max_keys, self.engine, self.checkpoints = tenant, arm, max_keys, engine, checkpoints
        self.interval = interval
        self._used = self._issued = 0
        self._tasks: list[asyncio.Task[None]] = []
        # One checkpoint at a time (the loop's and the clean stop's would race on the same version), and none
        # after close: a cancelled checkpoint's thread runs on, and its next call would rebuild the closed model.
        self._checkpointing = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start the engine (and checkpoint) tasks and route the tenant's reads to the access log."""
        self._tasks.append(asyncio.create_task(self.engine.run()))
        if self.checkpoints is not None:
            self._tasks.append(asyncio.create_task(self._checkpoint_loop()))
        route_reads(self.tenant, self.engine.recorders)

    def restore(self) -> int | None:
        """Load the serving checkpoint, if any, into the model. Blocks."""
        if self.checkpoints is None or self.checkpoints.serving is None:
            return None
        version = self.checkpoints.serving
        self._load(version)
        return version

    def _load(self, version: int) -> None:
        """Load checkpoint `version` into the running model. Blocks."""
        assert self.checkpoints is not None
        state = self.checkpoints.load(version)
        with self.engine.model_lock:
            self.engine.prefetcher.load_state_dict(state)  # type: ignore[attr-defined]

    def serving_state(self) -> dict[str, Any] | None:
        """The serving checkpoint, for the model rebuilt in a new prefetch child (the old child's copy died with
        it); None without one, or where it cannot be read (logged: the model starts over). Blocks."""
        checkpoints = self.checkpoints
        version = checkpoints.serving if checkpoints is not None else None
        if checkpoints is None or version is None:
            return None
        try:
            state = checkpoints.load(version)
        except Exception as err:
            log.error("tenant %s: the prefetch process restarted and model v%d could not be read (%s); the model "
                      "starts over", self.tenant.name, version, err)
            return None
        log.info("tenant %s: the prefetch process restarted; reloading model v%d", self.tenant.name, version)
        return state

    def checkpoint(self) -> None:
        """Save the model with the accuracy it achieved since the last checkpoint; promote or roll back. Blocks,
        also while another checkpoint runs; does nothing once the prefetcher is closed."""
        with self._checkpointing:
            if not self._closed:
                self._checkpoint()

    def _checkpoint(self) -> None:
        assert self.checkpoints is not None
        network = self.engine.network  # the model's own prefetches: what the other sources issued says nothing of it
        issued, used = network.issued - self._issued, network.used - self._used
        if issued == 0:
            return
        self._issued, self._used = network.issued, network.used
        accuracy = used / issued
        previous = self.checkpoints.rollback_target(accuracy)
        if previous is not None:
            self._roll_back(previous, accuracy)
            return
        with self.engine.model_lock:
            state = self.engine.prefetcher.state_dict()  # type: ignore[attr-defined]
        version = self.checkpoints.save(state, accuracy, {"issued": issued})
        if self.checkpoints.promote_if_better(version):
            log.info("tenant %s: promoted model v%d (prefetch accuracy %.3f)", self.tenant.name, version, accuracy)

    def _roll_back(self, version: int, accuracy: float) -> None:
        """Load `version` into the model, then make it the serving one; where it does not load (a corrupt file,
        another model's shape), the serving version stays, so that a restart never loads that version."""
        assert self.checkpoints is not None
        try:
            self._load(version)
        except Exception as err:
            log.error("tenant %s: prefetch accuracy fell to %.3f, but model v%d did not load (%s); v%s still serves",
                      self.tenant.name, accuracy, version, err, self.checkpoints.serving)
            return
        self.checkpoints.commit_serving(version)
        log.warning("tenant %s: prefetch accuracy fell to %.3f; rolled back to model v%d",
                    self.tenant.name, accuracy, version)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_blocking(self.checkpoint)
            except Exception as err:  # a failed checkpoint must not stop prefetching
                log.error("tenant %s: checkpoint failed: %s", self.tenant.name, err)

    async def stop(self) -> None:
        route_reads(self.tenant, None)
        self.engine.stop()
        for task in self._tasks[1:]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.run_blocking(self._close)

    def _close(self) -> None:
        """Close the prefetcher once a checkpoint in progress (its task cancelled, its thread not) has finished."""
        with self._checkpointing:
            self._closed = True
            self.engine.prefetcher.close()

    async def run_blocking(self, call: Any) -> Any:
        """Run a blocking call on the engine's threads (the prefetcher's own), not the default executor."""
        return await asyncio.get_running_loop().run_in_executor(self.engine.executor, call)


class PrefetchManager:
    """Keeps one TenantPrefetch per tenant that has an origin and a prefetcher."""

    def __init__(self, settings: Settings, cipher: EnvelopeCipher | None) -> None:
        self.settings = settings
        self.cipher = cipher
        self.running: dict[str, TenantPrefetch] = {}
        self._assignment: Any = None
        if settings.prefetch_ab_arms:
            from service.prefetch.mlops.ab import ABAssignment

            self._assignment = ABAssignment(settings.prefetch_ab_arms)
        self._device: str | None = None
        self._cpu: Any = None  # the worker threads' shared CpuBudget, made with the first engine
        self._pool: Any = None  # the child processes tenants' prefetchers compute in (isolation "process")
        self._process_cpu: dict[Any, Any] = {}  # each child's CpuBudget, by its PrefetchHost
        self._lock = asyncio.Lock()  # one sync at a time: engines are started and stopped in order
        self._background: set[asyncio.Task[None]] = set()
        # The prefetchers' threads (see HOST_THREADS): one executor per child, keyed by its PrefetchHost (None for
        # prefetchers in the server), and one for building prefetchers, one at a time like syncs.
        self._executors: dict[Any, ThreadPoolExecutor] = {}
        self._builder: ThreadPoolExecutor | None = None
        self._seen: dict[str, TenantCache] = {}  # every tenant as of the last sync: one gone since was deleted

    @property
    def processes(self) -> list[Any]:
        """The prefetch child processes' hosts (`PrefetchHost`), in start order; none before the first is needed."""
        return list(self._pool.hosts) if self._pool is not None else []

    def arm(self, tenant: TenantCache) -> str:
        """The tenant's own prefetcher if it has one, else its A/B arm, else the deployment's default."""
        if tenant.prefetcher is not None:
            return tenant.prefetcher
        return self._assignment.arm(tenant.name) if self._assignment is not None else self.settings.prefetcher

    def max_keys(self, tenant: TenantCache) -> int:
        """The keys the tenant's prefetcher remembers: its quota's bound, else the deployment's."""
        return tenant.prefetch_max_keys or self.settings.prefetch_max_keys

    def sync_soon(self, tenants: TenantRegistry) -> None:
        task = asyncio.create_task(self.sync(tenants))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def sync(self, tenants: TenantRegistry) -> None:
        """Start engines for tenants with an origin and a prefetcher; stop those of tenants that went away, and
        restart those whose prefetcher or its bound changed."""
        async with self._lock:
            await self._sync(tenants)

    async def _sync(self, tenants: TenantRegistry) -> None:
        for name in list(self.running):
            running = self.running[name]
            tenant = running.tenant
            built = (running.arm, running.max_keys)  # a tenant whose quota changes either gets a new engine
            if tenants.get(name) is not tenant or (self.arm(tenant), self.max_keys(tenant)) != built:
                await self.running.pop(name).stop()  # waits for a checkpoint in progress; none starts after
        for name, seen in list(self._seen.items()):
            if tenants.get(name) is not seen:  # deleted (perhaps created again since under the same name)
                del self._seen[name]
                await self._off_loop(self._forget_models, name)
        for tenant in list(tenants):
            self._seen[tenant.name] = tenant
            if tenant.name in self.running or tenant.origin is None:
                continue
            arm = self.arm(tenant)
            if arm == "none":
                continue
            try:
                running = await self._off_loop(self._build, tenant, arm)
            except Exception as err:  # the tenant is still served, without prefetching
                log.error("tenant %s: the %s prefetcher did not start: %s", tenant.name, arm, err)
                continue
            running.start()
            self.running[tenant.name] = running

    def _build(self, tenant: TenantCache, arm: str) -> TenantPrefetch:
        from service.prefetch import make_prefetcher
        from service.prefetch.coordinator import PrefetchBudget
        from service.prefetch.shadow import CacheModel

        settings = self.settings
        device = "cpu"
        if arm == "learned":
            self._device = self._device or resolve_device(settings.prefetch_device)
            device = self._device
        budget = PrefetchBudget(settings.prefetch_threshold, settings.prefetch_per_request,
                                settings.prefetch_max_in_flight)
        max_keys = self.max_keys(tenant)
        cache = CacheModel(capacity=entry_capacity(tenant), policy=settings.eviction_policy,
                           lead=settings.prefetch_lead, per_request=budget.per_request, threshold=budget.threshold,
                           max_in_flight=budget.max_in_flight)
        if settings.prefetch_isolation == "process" or (settings.prefetch_isolation == "auto" and arm == "learned"):
            from service.prefetch.isolated import PrefetchPool, ProcessPrefetcher

            self._pool = self._pool or PrefetchPool(process_count(settings))
            prefetcher: Prefetcher = ProcessPrefetcher(arm, lead=settings.prefetch_lead, device=device, cache=cache,
                                                       host=self._pool.host(), max_keys=max_keys)
        else:
            prefetcher = make_prefetcher(arm, lead=settings.prefetch_lead, device=device, cache=cache,
                                         max_keys=max_keys)
        try:
            return self._attach(tenant, arm, max_keys, prefetcher, budget)
        except BaseException:
            prefetcher.close()  # no half-built tenant keeps a prefetcher in the shared process
            raise

    def _attach(self, tenant: TenantCache, arm: str, max_keys: int, prefetcher: Prefetcher,
                budget: PrefetchBudget) -> TenantPrefetch:
        """The engine and checkpoints around a built prefetcher; loads the serving model if there is one (and
        again into a new prefetch child, should the one it computes in die)."""
        from service.prefetch.engine import CpuBudget, PrefetchEngine
        from service.prefetch.isolated import ProcessPrefetcher

        settings = self.settings
        self._cpu = self._cpu or CpuBudget(settings.prefetch_cpu_share)
        host = getattr(prefetcher, "host", None)  # the child it computes in, if any: tenants there share its budget
        process_cpu = None
        if host is not None:
            process_cpu = self._process_cpu.setdefault(host, CpuBudget(process_share(settings)))
        executor = self._executors.get(host)
        if executor is None:
            threads, name = (HOST_THREADS, "prefetch-host") if host is not None else (THREAD_STEP_THREADS, "prefetch")
            executor = self._executors[host] = ThreadPoolExecutor(threads, thread_name_prefix=name)
        engine = PrefetchEngine(tenant, prefetcher, budget, cpu=self._cpu, process_cpu=process_cpu,
                                route=functools.partial(route_reads, tenant), tune_lead=settings.prefetch_tune_lead,
                                executor=executor)
        checkpoints = None
        if arm == "learned" and settings.data_dir is not None and self.cipher is not None:
            checkpoints = self._checkpoints(tenant)
        running = TenantPrefetch(tenant, arm, max_keys, engine, checkpoints, settings.prefetch_checkpoint_interval_s)
        if checkpoints is not None and isinstance(prefetcher, ProcessPrefetcher):
            prefetcher.rebuild_state = running.serving_state
        try:
            version = running.restore()
        except Exception as err:  # an unreadable checkpoint must not cost the tenant its prefetcher
            log.error("tenant %s: could not load the serving model (%s); starting a new one", tenant.name, err)
            version = None
        if version is not None:
            log.info("tenant %s: loaded model v%d", tenant.name, version)
        return running

    def _models(self, name: str) -> Path:
        assert self.settings.data_dir is not None
        return self.settings.data_dir / "models" / name

    def _checkpoints(self, tenant: TenantCache) -> CheckpointRegistry:
        """The tenant's checkpoint registry. Models an earlier tenant of its name left are deleted first. One whose
        index cannot be read (torn, or edited by hand) is moved aside, kept for a look but never loaded, and the
        tenant starts a new one with a new model."""
        from service.prefetch.mlops.checkpoints import CheckpointError, CheckpointRegistry

        name = tenant.name
        directory = self._models(name)
        if directory.exists() and _recorded_incarnation(directory) != tenant.incarnation:
            self._forget_models(name, "an earlier tenant of its name trained them")
            if directory.exists():  # logged: no model of another tenant is ever loaded, so this one gets none
                raise RuntimeError(f"the models in {directory} are an earlier tenant's and could not be deleted")
        try:
            registry = CheckpointRegistry(directory, name, self.cipher, incarnation=tenant.incarnation)
        except CheckpointError as err:  # it names the index file
            aside = directory.with_name(f"{name}.unreadable-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}")
            directory.rename(aside)
            log.error("tenant %s: %s; moved its checkpoints to %s, and the tenant starts a new model", name, err,
                      aside)
            registry = CheckpointRegistry(directory, name, self.cipher, incarnation=tenant.incarnation)
        with atomic_output(directory / INCARNATION_FILE) as out:  # torn, it would make the next start drop the models
            out.write((tenant.incarnation or "").encode())
        return registry

    def _forget_models(self, name: str, why: str = "it was deleted") -> None:
        """Delete a deleted tenant's checkpoints, and any set aside as unreadable: a tenant created later under
        its name must not start from its model (derived from the deleted tenant's reads)."""
        if self.settings.data_dir is None:
            return
        directory = self._models(name)
        for models in [directory, *directory.parent.glob(f"{name}.unreadable-*")]:
            if not models.exists():
                continue
            try:
                shutil.rmtree(models)
            except OSError as err:
                log.error("tenant %s: %s, but its model checkpoints in %s were not deleted: %s", name, why, models,
                          err)
            else:
                log.info("tenant %s: %s, so its model checkpoints in %s were deleted", name, why, models)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for name in list(self.running):
            running = self.running.pop(name)
            if running.checkpoints is not None:
                with contextlib.suppress(Exception):
                    await running.run_blocking(running.checkpoint)
            await running.stop()
        # A build that a cancelled sync left running may wait on a child that hangs at start (minutes): end it. The
        # pool closes on the builder's thread, after that build, which may have started a child.
        if self._pool is not None:
            self._pool.interrupt()
        await self._off_loop(self._close_pool)
        for executor in (*self._executors.values(), *filter(None, [self._builder])):
            executor.shutdown(wait=False)
        self._executors.clear()
        self._builder = None

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()

    async def _off_loop(self, call: Any, *args: Any) -> Any:
        """Build or close prefetchers on a thread of the manager's own (one at a time, like syncs)."""
        self._builder = self._builder or ThreadPoolExecutor(1, thread_name_prefix="prefetch-build")
        return await asyncio.get_running_loop().run_in_executor(self._builder, call, *args)


def _recorded_incarnation(directory: Path) -> str | None:
    """The incarnation a models directory was written for; None where it records none (a tenants file's tenant,
    or a release before incarnations)."""
    try:
        return (directory / INCARNATION_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None
