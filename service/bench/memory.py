"""`foresight bench prefetch-memory`: what a tenant's Markov or learned prefetcher holds per key it remembers.

Their successor tables and last-read map grow with the keys a tenant reads, up to `FORESIGHT_PREFETCH_MAX_KEYS`
(the oldest half goes when full); the rest of a prefetcher's memory (the learned one's model, training buffer
and shadow caches) does not depend on the key space. Each prefetcher reads `reads` random keys from a space
large enough that nearly every one is new, the worst case, in a fresh interpreter so that nothing freed
earlier is reused, and its resident memory is read before and after. For the learned prefetcher that is its
candidate builder, which holds all of its per-key state: the network would only add minutes of inference. The
baseline, in the same run, is a set of the same keys under the same bound: what merely remembering a key costs
in CPython.

Random keys are each followed by one successor, the cheapest entry a table has. A trace's keys (`trace`) are
read again and followed by several, which costs more a key: on the ARC traces about 3x the random figure
(README). Keys go in as fresh integers in batches of 4096, as a live tenant's arrive in its prefetcher's
process, so the tables' own copies of them count and the batches' transient arrays stay small beside the state
measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Run in the child: prints {"reads": keys fed, "keys": remembered keys, "mb": resident growth}.
_CHILD = """
import json, random, sys
from service.prefetch.isolated import resident_bytes
from service.prefetch.learned.features import CandidateBuilder
from service.prefetch.markov import MarkovPrefetcher

def resident_mb():
    return resident_bytes() / 2**20

name, reads, max_keys, keys_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if keys_file:
    import numpy
    keys = numpy.load(keys_file)[:reads]  # one array, no heap of parsed lines: its integers are made below
    batches = (keys[begin : begin + 4096].tolist() for begin in range(0, len(keys), 4096))
else:
    rng = random.Random(0)
    batches = ([rng.randrange(1 << 48) for _ in range(min(4096, reads - begin))] for begin in range(0, reads, 4096))
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
fed = 0
for batch in batches:
    feed(batch)
    fed += len(batch)
print(json.dumps({"reads": fed, "keys": len(remembered), "mb": resident_mb() - before}))
"""


@dataclass(frozen=True)
class MemoryFigure:
    prefetcher: str
    reads: int
    keys: int  # keys remembered at the end (each of its tables)
    mb: float  # resident memory the prefetcher's state added
    kb_per_key: float
    ratio: float | None  # kb_per_key over the baseline's (None if the baseline's memory did not grow)


def _measure_one(name: str, reads: int, max_keys: int, keys_file: str) -> tuple[int, int, float]:
    result = subprocess.run([sys.executable, "-c", _CHILD, name, str(reads), str(max_keys), keys_file],
                            capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout)
    return figures["reads"], figures["keys"], figures["mb"]


def measure(reads: int, max_keys: int, trace_keys: np.ndarray | None = None) -> list[MemoryFigure]:
    """The baseline ("set") first, then each prefetcher, each in its own interpreter; `reads` random keys, or
    the first `reads` of `trace_keys` (a trace's, `traces.load_trace`).

    A trace is handed over as one .npy array: parsed in the child, its lines' memory would be freed and then
    reused by the tables, which would hide their growth."""
    figures: list[MemoryFigure] = []
    with tempfile.TemporaryDirectory() as scratch:
        keys_file = ""
        if trace_keys is not None:
            keys_file = str(Path(scratch) / "keys.npy")
            np.save(keys_file, trace_keys[:reads])
        for name in ("set", "markov", "learned"):
            fed, keys, mb = _measure_one(name, reads, max_keys, keys_file)
            per_key = mb * 1024 / max(1, keys)
            baseline = figures[0].kb_per_key if figures else per_key
            figures.append(MemoryFigure(name, fed, keys, mb, per_key, per_key / baseline if baseline > 0 else None))
    return figures


def as_json(figures: list[MemoryFigure]) -> dict[str, Any]:
    return {"figures": [asdict(f) for f in figures]}
