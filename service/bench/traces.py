"""Trace readers for the replay benchmark: ARC `.lis`, key-per-line text and CSV, each plain or compressed.

Every reader returns the same thing, a `Trace` of integer keys in request order, so the replay loop never
knows where a trace came from. A key is a token: one in canonical decimal (`7`, `-3`; not `007`, `+7` or `7_0`)
that fits an int64 is that integer, so a trace of integer keys is replayed as written. Any other token is mapped
by the service's key-codec rule (`service/prefetch/keys.py`, whose functions this module calls): trailing digits
keep their number in the low bits, under a slot for the prefix, and a prefix's slot and an opaque key's id are a
hash of the token's content, never a count of the tokens first seen before it (the next never-seen key would then
be predictable from the ids alone, a channel the service does not have). Unlike the codec, the reader knows every
token before it maps one and forgets none: collisions are settled in sorted token order, also against the trace's
integer keys, and prefixes have 2^23 - 1 slots where the codec's few thousand have 2^20.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.prefetch.keys import NUMBER_BITS, Prefix, numbered_id, opaque_id, prefix_slot, split_number

FORMATS = ("auto", "lis", "text", "csv")
_COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".xz": "xz", ".bz2": "bzip2"}
BREAKPOINT = b"*"  # a LIRS simulator breakpoint line (lirs-README.txt), not a request
_INT64 = 1 << 63
_NUMBER_LIMIT = 1 << NUMBER_BITS
_SLOTS = (1 << (63 - NUMBER_BITS)) - 1  # prefix slots: every mapped id stays below 2^63 (`numbered_id`)
_LIS_BLOCK = 1 << 16  # .lis lines converted at a time while counting requests toward --limit


class TraceError(Exception):
    """A trace that cannot be read; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Trace:
    """Integer keys in request order, with what the replay needs to know about them (computed once, here)."""

    name: str
    keys: np.ndarray  # int64, one per request, in order
    unique: int = field(init=False)
    # Of the first accesses after the very first, the share whose key is the largest key so far + 1: near 1.0 when
    # the trace's ids were handed out in first-access order (the replay's `--new-keys auto` reads it).
    first_access_numbered: float = field(init=False)

    def __post_init__(self) -> None:
        first = np.unique(self.keys, return_index=True)[1]
        object.__setattr__(self, "unique", len(first))
        object.__setattr__(self, "first_access_numbered", _numbered_share(self.keys[np.sort(first)]))

    def __len__(self) -> int:
        return len(self.keys)


def _numbered_share(new_keys: np.ndarray) -> float:
    """Of keys in first-access order, the share after the first that equal the running maximum + 1."""
    if len(new_keys) < 2:
        return 0.0
    before = np.maximum.accumulate(new_keys)[:-1]
    return float(np.mean(new_keys[1:] == before + 1))


def _open_binary(path: Path) -> IO[bytes]:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".zst":
        return _ZstdFrames(path.open("rb"))  # type: ignore[return-value]  # a RawIOBase, as BufferedReader wants
    return path.open("rb")


_ZSTD_INPUT = 4096  # compressed bytes per step: what one step holds decompressed stays bounded (not 100 MB)


class _ZstdFrames(io.RawIOBase):
    """A .zst file's frames, decompressed in turn. Input that ends inside a frame is EOFError, as gzip and lzma
    raise: zstandard's own stream reader ends there without a word, and a cut trace replayed as a shorter one."""

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard

        self._raw, self._new_frame = raw, zstandard.ZstdDecompressor().decompressobj
        self._frame = self._new_frame()
        self._in_frame = False  # some of the current frame's input has been fed
        self._out, self._at = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._at == len(self._out):
            chunk = self._raw.read(_ZSTD_INPUT)
            if not chunk:
                if self._in_frame:
                    raise EOFError("compressed file ended before the end of a zstd frame (cut short?)")
                return 0
            self._out, self._at = self._decompress(chunk), 0
        size = min(len(buffer), len(self._out) - self._at)
        buffer[:size] = self._out[self._at:self._at + size]
        self._at += size
        return size

    def _decompress(self, chunk: bytes) -> bytes:
        produced = []
        while chunk:
            produced.append(self._frame.decompress(chunk))
            self._in_frame = not self._frame.eof
            chunk = b""
            if self._frame.eof:  # what follows a frame's end is the next frame
                chunk, self._frame = self._frame.unused_data, self._new_frame()
        return b"".join(produced)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _data_lines(raw: IO[bytes]) -> Iterator[bytes]:
    """Stripped lines of the (decompressed) file, without blank lines and `#` comments."""
    for line in io.BufferedReader(raw):  # type: ignore[type-var]
        line = line.strip()
        if line and not line.startswith(b"#"):
            yield line


def _inner_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def detect_format(path: Path, first_line: bytes) -> str:
    """`.lis`, `.csv` and `.txt` (under any compression) name their format; any other name is read by its first
    data line: a comma makes it CSV, exactly four integer fields `.lis`, anything else key-per-line text."""
    inner = _inner_suffix(path)
    named = {".lis": "lis", ".csv": "csv", ".txt": "text"}
    if inner in named:
        return named[inner]
    if b"," in first_line:
        return "csv"
    fields = first_line.split()
    if len(fields) == 4 and all(f.lstrip(b"-").isdigit() for f in fields):
        return "lis"
    return "text"


def _canonical_int(token: bytes) -> int | None:
    """The int64 a token spells in canonical decimal (no `+`, no leading zeros, no `-0`), else None."""
    digits = token[1:] if token.startswith(b"-") else token
    if not digits.isdigit() or len(digits) > 19 or (len(digits) > 1 and digits.startswith(b"0")) or token == b"-0":
        return None  # 19 digits: int64's longest
    value = int(digits) * (-1 if token.startswith(b"-") else 1)
    return value if -_INT64 <= value < _INT64 else None


def map_tokens(tokens: list[bytes]) -> np.ndarray:
    """Keys for tokens (see the module docstring). Collisions between mapped ids, or with an integer key, are
    resolved by probing the next slot or id, in sorted token order; the result depends only on which tokens occur."""
    ids: dict[bytes, int] = {}
    other: list[bytes] = []
    for token in dict.fromkeys(tokens):
        value = _canonical_int(token)
        if value is None:
            other.append(token)
        else:
            ids[token] = value
    if other:
        ids.update(_mapped_ids(sorted(other), set(ids.values())))
    return np.fromiter((ids[t] for t in tokens), dtype=np.int64, count=len(tokens))


def _mapped_ids(tokens: list[bytes], taken: set[int]) -> dict[bytes, int]:
    """Ids for tokens that are not canonical integers, avoiding `taken` (the trace's integer keys) and each other."""
    numbered: dict[Prefix, list[tuple[bytes, int]]] = {}  # prefix -> (token, number)
    opaque: list[bytes] = []
    for token in tokens:
        split = split_number(token)
        if split is None:
            opaque.append(token)
        else:
            numbered.setdefault(split[0], []).append((token, split[1]))
    ids: dict[bytes, int] = {}
    used_slots: set[int] = set()
    for prefix, members in numbered.items():
        slot = prefix_slot(prefix, _SLOTS)
        while slot in used_slots or any(numbered_id(slot, n) in taken for _, n in members):
            slot = (slot + 1) % _SLOTS
        used_slots.add(slot)
        ids.update((token, numbered_id(slot, n)) for token, n in members)
    taken = taken | set(ids.values())
    for token in opaque:  # below every prefix's block, as in the codec
        ident = opaque_id(token)
        while ident in taken:
            ident = (ident + 1) % _NUMBER_LIMIT
        taken.add(ident)
        ids[token] = ident
    return ids


def _text_tokens(lines: Iterable[bytes], path: Path, limit: int | None) -> list[bytes]:
    """The first field of each line; `*` lines are LIRS breakpoints, not requests, and are skipped."""
    tokens: list[bytes] = []
    for line in lines:
        if line == BREAKPOINT:
            continue
        tokens.append(line.split()[0])
        if limit is not None and len(tokens) >= limit:
            break
    return tokens


# Header names of the key column: ours, and libCacheSim's (`obj_id` in its csv reader, `object` in its sample data).
_KEY_COLUMNS = (b"key", b"obj_id", b"object")


def _csv_tokens(lines: Iterable[bytes], path: Path, limit: int | None) -> list[bytes]:
    """The key column's values. The first row is a header when a field of it names the keys (`_KEY_COLUMNS`, any
    case); without one, a one-column file is all requests, and a wider one is an error (which column holds the
    keys would be a guess)."""
    rows = iter(lines)
    first = next(rows)
    names = [f.strip() for f in first.split(b",")]
    lowered = [n.lower() for n in names]
    if named := [n for n in _KEY_COLUMNS if n in lowered]:
        column = lowered.index(named[0])
    elif len(names) == 1:
        column, rows = 0, itertools.chain([first], rows)
    else:
        shown = ", ".join(n.decode(errors="replace") for n in names)
        raise TraceError(f"{path}: no key column in the CSV's first row ({shown}); add a header row that "
                         "names the key column 'key' (a header written as a `#` comment is not read)")
    tokens: list[bytes] = []
    for number, row in enumerate(rows, start=2):
        fields = row.split(b",")
        if column >= len(fields):
            raise TraceError(f"{path}: data row {number} has no column {column + 1} (the key column)")
        tokens.append(fields[column].strip())
        if limit is not None and len(tokens) >= limit:
            break
    return tokens


def _lis_keys(lines: Iterable[bytes], path: Path, limit: int | None) -> np.ndarray:
    """Each `start count ignore request` line expands into start, start+1, ..., start+count-1."""
    parts: list[np.ndarray] = []
    total = 0
    rows = iter(lines)
    while limit is None or total < limit:
        block = list(itertools.islice(rows, _LIS_BLOCK))
        if not block:
            break
        try:
            table = np.array([line.split()[:2] for line in block], dtype=np.int64)
        except (ValueError, OverflowError) as err:
            raise TraceError(
                f"{path}: not an ARC .lis trace (want 'start count ignore request' lines): {err}"
            ) from None
        if table.ndim != 2 or table.shape[1] != 2:
            raise TraceError(f"{path}: not an ARC .lis trace (want 'start count ignore request' lines)")
        starts, counts = table[:, 0], np.maximum(table[:, 1], 0)
        if limit is not None:  # a line's run past the limit is never expanded (a count of 10^11 would not fit)
            counts = np.minimum(counts, np.maximum(limit - total - (np.cumsum(counts) - counts), 0))
        # Expand each (start, count) run without a Python loop.
        offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        parts.append(np.repeat(starts, counts) + offsets)
        total += len(parts[-1])
    keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return keys[:limit] if limit is not None else keys


_PARSERS: dict[str, Callable[[Iterable[bytes], Path, int | None], np.ndarray]] = {
    "lis": _lis_keys,
    "text": lambda lines, path, limit: map_tokens(_text_tokens(lines, path, limit)),
    "csv": lambda lines, path, limit: map_tokens(_csv_tokens(lines, path, limit)),
}


def load_trace(path: str | Path, fmt: str = "auto", limit: int | None = None) -> Trace:
    """Read a trace into integer keys: at most `limit` requests, counted after `.lis` expansion and without
    breakpoint lines; reading stops once they are read."""
    path = Path(path)
    if fmt not in FORMATS:
        raise TraceError(f"unknown trace format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if path.is_dir():
        raise TraceError(f"{path} is a directory; give a trace file (bench report takes directories of them)")
    if not path.is_file():
        raise TraceError(f"trace file not found: {path}")
    if limit is not None and limit <= 0:
        raise TraceError(f"--limit must be positive, got {limit}")
    try:
        with _open_binary(path) as raw:
            lines = _data_lines(raw)
            first = next(lines, None)
            if first is None:
                raise TraceError(f"{path}: trace is empty")
            if fmt == "auto":
                fmt = detect_format(path, first)
            keys = _PARSERS[fmt](itertools.chain([first], lines), path, limit)
    except TraceError:
        raise
    except MemoryError:
        raise TraceError(f"{path}: expands to more requests than memory holds; replay a part with --limit") from None
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise TraceError(f"{path}: cannot read: {err}") from None
    except Exception as err:  # zstandard raises its own ZstdError
        raise TraceError(f"{path}: cannot decompress: {err}") from None
    if len(keys) == 0:
        raise TraceError(f"{path}: no requests in trace")
    return Trace(name=trace_name(path), keys=keys)


def trace_name(path: Path) -> str:
    """File name without compression and format suffixes: `arc-OLTP.lis.zst` -> `arc-OLTP`."""
    name = path.name
    for _ in range(2):
        stem, dot, suffix = name.rpartition(".")
        if dot and f".{suffix.lower()}" in {*_COMPRESSED, ".lis", ".txt", ".csv", ".trace"}:
            name = stem
    return name
