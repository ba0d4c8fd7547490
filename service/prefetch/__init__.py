"""Prefetching: an access log, prefetchers behind one interface, a coordinator, and the models' MLOps.

Prefetchers by name; the learned one is imported only when asked for, so a service that runs the baselines
never imports torch.
"""

from __future__ import annotations

from service.prefetch.base import NoPrefetcher, Prediction, Prefetcher
from service.prefetch.markov import DEFAULT_MAX_KEYS, MarkovPrefetcher
from service.prefetch.shadow import CacheModel
from service.prefetch.stride import StridePrefetcher

PREFETCHERS = ("none", "stride", "markov", "learned")


def make_prefetcher(name: str, lead: int = 0, device: str = "cpu", cache: CacheModel | None = None,
                    max_keys: int = DEFAULT_MAX_KEYS, seed: int = 0) -> Prefetcher:
    """Build a prefetcher by name, with an error that lists the valid names.

    `cache` describes the cache the prefetches go to; the learned prefetcher uses it to pick among its arms
    by their effect on shadow copies of that cache (the simple ones do not need it). `max_keys` bounds the keys
    the Markov and learned prefetchers remember, which is most of their memory. `seed` seeds the learned model
    (its initial weights and training order).
    """
    if name == "learned":
        from service.prefetch.learned.prefetcher import LearnedPrefetcher, TrainConfig

        return LearnedPrefetcher(lead=lead, device=device, cache=cache, max_keys=max_keys,
                                 config=TrainConfig(seed=seed))
    if name == "markov":
        return MarkovPrefetcher(lead=lead, max_keys=max_keys)
    simple: dict[str, type[Prefetcher]] = {
        "none": NoPrefetcher,
        "stride": StridePrefetcher,
    }
    try:
        cls = simple[name]
    except KeyError:
        raise ValueError(f"unknown prefetcher {name!r}; choose one of: {', '.join(PREFETCHERS)}") from None
    return cls(lead=lead)


__all__ = ["PREFETCHERS", "CacheModel", "Prediction", "Prefetcher", "make_prefetcher"]
