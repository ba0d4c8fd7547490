"""The memory tier and its eviction policies."""

from service.store.memory import MemoryStore, ValueTooLarge, entry_size, now_ms, unit_size

__all__ = ["MemoryStore", "ValueTooLarge", "entry_size", "now_ms", "unit_size"]
