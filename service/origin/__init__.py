"""Read-through origins: where a missing key is loaded from."""

from service.origin.base import Origin, OriginError, OriginTimeout, UnmappableKey
from service.origin.fsspec_origin import FsspecOrigin, ReadSlots, open_origin
from service.origin.singleflight import SingleFlight

__all__ = [
    "FsspecOrigin", "Origin", "OriginError", "OriginTimeout", "ReadSlots", "SingleFlight", "UnmappableKey",
    "open_origin",
]
