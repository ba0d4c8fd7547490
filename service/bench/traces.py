"""Trace readers for the replay benchmark: ARC `.lis`, key-per-line text and CSV, each plain or compressed.

Every reader returns the same thing, a `Trace` of integer keys in request order, so the replay loop never
knows where a trace came from. Non-integer keys are interned to dense integers in first-seen order.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

FORMATS = ("auto", "lis", "text", "csv")
_COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".xz": "xz", ".bz2": "bzip2"}


class TraceError(Exception):
    """A trace that cannot be read; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    keys: np.ndarray  # int64, one per request, in order

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def unique(self) -> int:
        return len(np.unique(self.keys))


def _open_binary(path: Path) -> IO[bytes]:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError as err:  # pragma: no cover - zstandard is a project dependency
            raise TraceError(f"{path}: reading .zst needs the 'zstandard' package") from err
        return zstandard.ZstdDecompressor().stream_reader(path.open("rb"), read_across_frames=True)
    return path.open("rb")


def _read_text(path: Path, limit: int | None) -> list[bytes]:
    """Lines of the (decompressed) file; stops early once enough lines for `limit` requests are read."""
    lines: list[bytes] = []
    with _open_binary(path) as raw:
        for line in io.BufferedReader(raw):  # type: ignore[type-var]
            line = line.strip()
            if line and not line.startswith(b"#"):
                lines.append(line)
                if limit is not None and len(lines) >= limit:
                    break
    return lines


def _inner_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def detect_format(path: Path, first_line: bytes) -> str:
    """Pick a format from the name, then from the first data line."""
    inner = _inner_suffix(path)
    if inner == ".lis":
        return "lis"
    if inner == ".csv":
        return "csv"
    if b"," in first_line:
        return "csv"
    fields = first_line.split()
    if len(fields) == 4 and all(f.lstrip(b"-").isdigit() for f in fields):
        return "lis"
    return "text"


def _as_int_keys(tokens: list[bytes]) -> np.ndarray:
    try:
        return np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        ids: dict[bytes, int] = {}
        return np.array([ids.setdefault(t, len(ids)) for t in tokens], dtype=np.int64)


def _parse_lis(lines: list[bytes], path: Path, limit: int | None) -> np.ndarray:
    try:
        table = np.array([line.split()[:2] for line in lines], dtype=np.int64)
    except ValueError as err:
        raise TraceError(f"{path}: not an ARC .lis trace (want 'start count ignore request' lines): {err}") from None
    if table.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts, counts = table[:, 0], np.maximum(table[:, 1], 0)
    total = int(counts.sum())
    # Expand each (start, count) run into start, start+1, ..., start+count-1 without a Python loop.
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    keys = np.repeat(starts, counts) + offsets
    return keys[:limit] if limit is not None else keys


def _parse_csv(lines: list[bytes]) -> list[bytes]:
    first = lines[0].split(b",")
    column = 0
    lowered = [f.strip().lower() for f in first]
    header = any(not f.strip().lstrip(b"-").isdigit() for f in first)
    if header and b"key" in lowered:
        column = lowered.index(b"key")
    rows = lines[1:] if header and (b"key" in lowered or len(first) > 1) else lines
    return [row.split(b",")[column].strip() for row in rows]


_PARSERS: dict[str, Callable[[list[bytes], Path, int | None], np.ndarray]] = {
    "lis": _parse_lis,
    "text": lambda lines, path, limit: _as_int_keys([line.split()[0] for line in lines]),
    "csv": lambda lines, path, limit: _as_int_keys(_parse_csv(lines)),
}


def load_trace(path: str | Path, fmt: str = "auto", limit: int | None = None) -> Trace:
    """Read a trace into integer keys, at most `limit` requests (after `.lis` expansion)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise TraceError(f"unknown trace format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not path.is_file():
        raise TraceError(f"trace file not found: {path}")
    if limit is not None and limit <= 0:
        raise TraceError(f"--limit must be positive, got {limit}")
    # A .lis line expands to several requests, so reading `limit` lines is always enough.
    try:
        lines = _read_text(path, limit)
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise TraceError(f"{path}: cannot read: {err}") from None
    except Exception as err:  # zstandard raises its own ZstdError
        raise TraceError(f"{path}: cannot decompress: {err}") from None
    if not lines:
        raise TraceError(f"{path}: trace is empty")
    if fmt == "auto":
        fmt = detect_format(path, lines[0])
    keys = _PARSERS[fmt](lines, path, limit)
    if len(keys) == 0:
        raise TraceError(f"{path}: no requests in trace")
    return Trace(name=trace_name(path), keys=keys[:limit] if limit is not None else keys)


def trace_name(path: Path) -> str:
    """File name without compression and format suffixes: `arc-OLTP.lis.zst` -> `arc-OLTP`."""
    name = path.name
    for _ in range(2):
        stem, dot, suffix = name.rpartition(".")
        if dot and f".{suffix.lower()}" in {*_COMPRESSED, ".lis", ".txt", ".csv", ".trace"}:
            name = stem
    return name
