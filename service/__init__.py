"""Foresight service: a multi-tenant, Redis-compatible read-through cache with a learned prefetcher."""

__version__ = "0.1.0"
