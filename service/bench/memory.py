"""`foresight bench prefetch-memory`: what a tenant's Markov or learned prefetcher holds per key it remembers.

Their successor tables and last-read map grow with the keys a tenant reads, up to `FORESIGHT_PREFETCH_MAX_KEYS`
(the oldest half goes when full); the rest of a prefetcher's memory (the learned one's model, training buffer
and shadow caches) does not depend on the key space. Each prefetcher reads `reads` random keys from a space
large enough that nearly every one is new, the worst case, in a fresh interpreter so that nothing freed
earlier is reused, and its resident memory is read before and after. For the learned prefetcher that is its
candidate builder, which holds all of its per-key state: the network would only add minutes of inference. The
baseline, in the same run, is a set of the same keys under the same bound: what merely remembering a key costs
in CPython.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

# Run in the child: prints {"keys": remembered keys, "mb": resident growth}.
_CHILD = """
import json, random, sys
from service.prefetch.isolated import resident_bytes
from service.prefetch.learned.features import CandidateBuilder
from service.prefetch.markov import MarkovPrefetcher

def resident_mb():
    return resident_bytes() / 2**20

name, reads, max_keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(0)
before = resident_mb()
if name == "markov":
    prefetcher = MarkovPrefetcher(lead=4, max_keys=max_keys)
    feed, remembered = prefetcher.access_batch, prefetcher.table
elif name == "learned":
    prefetcher = CandidateBuilder(distance=5, max_keys=max_keys)
    feed, remembered = prefetcher.build, prefetcher.successors
else:  # the baseline: a set of the keys, emptied when full like the tables (the oldest half; here all of it)
    remembered = set()
    def feed(keys):
        for key in keys:
            if len(remembered) >= max_keys:
                remembered.clear()
            remembered.add(key)
for begin in range(0, reads, 65536):
    feed([rng.randrange(1 << 48) for _ in range(min(65536, reads - begin))])
print(json.dumps({"keys": len(remembered), "mb": resident_mb() - before}))
"""


@dataclass(frozen=True)
class MemoryFigure:
    prefetcher: str
    reads: int
    keys: int  # keys remembered at the end (each of its tables)
    mb: float  # resident memory the prefetcher's state added
    kb_per_key: float
    ratio: float | None  # kb_per_key over the baseline's (None if the baseline's memory did not grow)


def _measure_one(name: str, reads: int, max_keys: int) -> tuple[int, float]:
    result = subprocess.run([sys.executable, "-c", _CHILD, name, str(reads), str(max_keys)],
                            capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout)
    return figures["keys"], figures["mb"]


def measure(reads: int, max_keys: int) -> list[MemoryFigure]:
    """The baseline ("set") first, then each prefetcher, each in its own interpreter."""
    figures: list[MemoryFigure] = []
    for name in ("set", "markov", "learned"):
        keys, mb = _measure_one(name, reads, max_keys)
        per_key = mb * 1024 / max(1, keys)
        baseline = figures[0].kb_per_key if figures else per_key
        figures.append(MemoryFigure(name, reads, keys, mb, per_key, per_key / baseline if baseline > 0 else None))
    return figures


def as_json(figures: list[MemoryFigure]) -> dict[str, Any]:
    return {"figures": [asdict(f) for f in figures]}
