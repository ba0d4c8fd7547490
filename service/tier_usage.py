"""Each tenant's reads across every node of a deployment, kept in the shared tier, so metering bills them all.

A node counts its own reads since its own start, and behind a load balancer the admin API answers from whichever
node the balancer picked, so metering could bill one node's reads, or the same reads twice. With a shared tier every
node writes its counts into one hash per tenant, `fs:~usage:<tier name>` (`~` starts no tenant name, so no tenant's
flush or key ever meets it; it stays under the tier ACL's `fs:*`):

- `since`: when this hash began counting (set once, HSETNX). It is the counter's identity: a hash that is lost (an
  eviction under allkeys-lru, a tier replaced) comes back with a new `since`, and metering bills a counter with a
  new `since` as one that began at 0;
- one field per counter, `n:<node id>.<serial>@<since>`: the reads of one tenant cache of one process, counted
  under that `since`; only the fields of the hash's own `since` count. Written as an absolute value (HSET), so a
  write retried after a timeout never counts twice; a node that restarts, or serves a tenant again after dropping
  it, writes a new field and the old one keeps its last value, so the sum never goes down. A node that finds a
  `since` other than the one it last wrote under (the hash was lost) counts from what it last sent: those reads
  are in no hash, so they are billed once, in the new one (or, if that send was lost too, never). A write that
  lands in a hash lost since its `since` was read (which recreates it without one) names the old `since`, so the
  hash's new `since` never counts it.

Every node writes every REPORT_EVERY_S, when it stops serving a tenant, at its stop, and before it answers the
admin API, so the answer includes the answering node's reads up to that moment. A node that dies loses at most
its last interval's reads: unbilled, never billed twice. Fields accumulate one per (process, tenant) ever run; the
hash expires KEEP_S after the last write of any node (a tenant nobody serves any more).
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from service.cache import TenantCache

USAGE_PREFIX = b"fs:~usage:"  # under service.shared_tier.KEY_PREFIX, which imports this module
REPORT_EVERY_S = 30.0
KEEP_S = 30 * 86400
BATCH = 256  # tenants per pipeline
_SINCE, _FIELD_PREFIX = b"since", b"n:"


def usage_key(tier_name: str) -> bytes:
    return USAGE_PREFIX + tier_name.encode()


def reads(cache: TenantCache) -> int:
    """What metering bills: every read the cache answered (hits and misses), since the cache was made."""
    return cache.store.stats.hits + cache.store.stats.misses


@dataclass(frozen=True)
class DeploymentReads:
    reads: int
    since: float


@dataclass
class _Written:
    """One cache's place in its tenant's hash: its field, the `since` it last wrote under, and from which of its
    reads that hash counts it."""

    counter: bytes  # `n:<node id>.<serial>`; the field is this and the `since` it counts under
    since: bytes | None = None
    base: int = 0
    last: int = 0

    @property
    def field(self) -> bytes:
        return b"%s@%s" % (self.counter, self.since or b"")


class UsageLedger:
    """This node's counters in the tier's usage hashes."""

    def __init__(self, node_id: bytes) -> None:
        self._node_id = node_id
        self._serial = itertools.count(1)
        self._written: weakref.WeakKeyDictionary[TenantCache, _Written] = weakref.WeakKeyDictionary()

    def _place(self, cache: TenantCache) -> _Written:
        place = self._written.get(cache)
        if place is None:
            place = self._written[cache] = _Written(b"%s%s.%d" % (_FIELD_PREFIX, self._node_id, next(self._serial)))
        return place

    async def write(self, client: aioredis.Redis, caches: Sequence[TenantCache]) -> None:
        """Write each cache's reads into its tenant's hash (first making sure the hash has a `since`)."""
        for start in range(0, len(caches), BATCH):
            batch = caches[start : start + BATCH]
            async with client.pipeline(transaction=False) as pipe:
                for cache in batch:
                    key = usage_key(cache.tier_name)
                    pipe.hsetnx(key, _SINCE, f"{time.time():.6f}")
                    pipe.hget(key, _SINCE)
                answers = await pipe.execute()
            counts = []
            for cache, since in zip(batch, answers[1::2], strict=True):
                place, count = self._place(cache), reads(cache)
                if since != place.since:
                    place.since, place.base = since, place.last if place.since is not None else 0
                counts.append((cache, place, count))
            async with client.pipeline(transaction=False) as pipe:
                for cache, place, count in counts:
                    key = usage_key(cache.tier_name)
                    pipe.hset(key, place.field, count - place.base)
                    pipe.expire(key, KEEP_S)
                    place.last = count  # before the answer: a write lost with its hash is never counted again
                await pipe.execute()

    async def totals(self, client: aioredis.Redis, caches: Sequence[TenantCache]) -> dict[str, DeploymentReads]:
        """Each tenant's reads on every node, this one's written first; a tenant whose hash has no `since` (lost
        between the write and the read) is left out."""
        await self.write(client, caches)
        async with client.pipeline(transaction=False) as pipe:
            for cache in caches:
                pipe.hgetall(usage_key(cache.tier_name))
            hashes = await pipe.execute()
        totals = {}
        for cache, fields in zip(caches, hashes, strict=True):
            total = _total(fields)
            if total is not None:
                totals[cache.name] = total
        return totals


def _total(fields: dict[bytes, Any]) -> DeploymentReads | None:
    since = fields.get(_SINCE)
    if since is None:
        return None
    tag = b"@" + since
    counted = (int(v) for k, v in fields.items() if k.startswith(_FIELD_PREFIX) and k.endswith(tag))
    return DeploymentReads(sum(counted), float(since))
