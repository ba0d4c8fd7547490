"""Eviction policies by name. A new policy is one module plus one line here."""

from __future__ import annotations

from service.store.policies.base import EvictionPolicy
from service.store.policies.lru import LRUPolicy
from service.store.policies.s3fifo import S3FIFOPolicy

POLICIES: dict[str, type[EvictionPolicy]] = {cls.name: cls for cls in (LRUPolicy, S3FIFOPolicy)}


def make_policy(name: str, capacity: int) -> EvictionPolicy:
    """Build a policy by name, with an error that lists the valid names."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}") from None
    return cls(capacity)


__all__ = ["POLICIES", "EvictionPolicy", "make_policy"]
