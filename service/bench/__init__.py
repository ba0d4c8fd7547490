"""Benchmarks: trace replay through the service's own store, eviction and prefetch classes; GPU inference."""
