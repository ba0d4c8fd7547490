"""A tenant's memory quota shrunk while it holds many entries: the cache evicts down to it in bounded steps between
turns of the event loop, not in one go that stalls every tenant, and writes meanwhile never take it further over."""

from __future__ import annotations

import asyncio

from service.cache import EVICTIONS_PER_STEP, TenantRegistry
from service.config import Settings
from service.tenancy import TenantQuota, TenantSpec

ENTRIES = 30_000
BIG, SMALL = 64 * 1024 * 1024, 64 * 1024


async def test_a_shrunk_quota_evicts_in_bounded_steps_the_loop_serves_between() -> None:
    registry = TenantRegistry(Settings(dev=True))
    try:
        registry.sync([TenantSpec(name="big", quota=TenantQuota(memory_bytes=BIG)),
                       TenantSpec(name="other", quota=TenantQuota())])
        big, other = registry.get("big"), registry.get("other")
        assert big is not None and other is not None
        store = big.store
        for i in range(ENTRIES):
            store.set(b"k%d" % i, b"v" * 16)
        evictions_per_turn: list[int] = []

        async def other_tenant() -> None:
            """Runs once a turn of the loop while the shrink goes on: a read of another tenant, and the evictions
            since its last turn."""
            seen = store.stats.evictions
            while store.used > store.budget:
                other.store.set(b"k", b"served")
                await asyncio.sleep(0)
                evictions_per_turn.append(store.stats.evictions - seen)
                seen = store.stats.evictions

        registry.sync([TenantSpec(name="big", quota=TenantQuota(memory_bytes=SMALL)),
                       TenantSpec(name="other", quota=TenantQuota())])
        assert store.budget == SMALL and store.stats.evictions == EVICTIONS_PER_STEP  # one step, not all at once
        used = store.used
        store.set(b"written during the shrink", b"w" * 100)
        assert store.used <= used and b"written during the shrink" in store  # it took only room it freed ...
        assert store.stats.evictions < 2 * EVICTIONS_PER_STEP  # ... and did not do the whole shrink itself
        await asyncio.wait_for(other_tenant(), 30)
        assert store.used <= SMALL and len(store) < ENTRIES // 10
        assert len(evictions_per_turn) >= (ENTRIES - len(store)) // EVICTIONS_PER_STEP - 1
        assert max(evictions_per_turn) <= EVICTIONS_PER_STEP
        assert other.store.get(b"k") == b"served"
        store.set(b"after", b"x" * 100)
        assert store.used <= SMALL
    finally:
        registry.close()


async def test_a_quota_changed_again_during_the_shrink_is_the_one_reached() -> None:
    registry = TenantRegistry(Settings(dev=True))
    try:
        registry.sync([TenantSpec(name="t", quota=TenantQuota(memory_bytes=BIG))])
        cache = registry.get("t")
        assert cache is not None
        for i in range(ENTRIES):
            cache.store.set(b"k%d" % i, b"v" * 16)
        registry.sync([TenantSpec(name="t", quota=TenantQuota(memory_bytes=SMALL))])
        registry.sync([TenantSpec(name="t", quota=TenantQuota(memory_bytes=SMALL * 4))])
        for _ in range(ENTRIES):
            await asyncio.sleep(0)
            if cache.store.used <= cache.store.budget:
                break
        assert cache.store.budget == SMALL * 4 and SMALL < cache.store.used <= SMALL * 4
    finally:
        registry.close()
