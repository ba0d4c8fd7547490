"""Trace readers: formats, compression, auto-detection, limits and clear errors."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest
import zstandard

from service.bench.traces import TraceError, load_trace, trace_name

LIS = "100 3 0 0\n7 1 0 1\n200 2 0 2\n"


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz", ".zst"])
def test_lis_lines_expand_into_their_blocks_under_any_compression(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t.lis{suffix}"
    data = LIS.encode()
    writers = {
        "": lambda d: d,
        ".gz": gzip.compress,
        ".xz": lzma.compress,
        ".zst": lambda d: zstandard.ZstdCompressor().compress(d),
    }
    path.write_bytes(writers[suffix](data))
    trace = load_trace(path)
    assert trace.keys.tolist() == [100, 101, 102, 7, 200, 201]
    assert trace.name == "t"
    assert load_trace(path, limit=4).keys.tolist() == [100, 101, 102, 7]


def test_formats_are_auto_detected(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("5\n6\n5\n")
    (tmp_path / "blocks.trace").write_text(LIS)
    (tmp_path / "log.csv").write_text("time,key\n1,a\n2,b\n3,a\n")
    assert load_trace(tmp_path / "keys.txt").keys.tolist() == [5, 6, 5]
    assert len(load_trace(tmp_path / "blocks.trace")) == 6
    assert load_trace(tmp_path / "log.csv").keys.tolist() == [0, 1, 0]  # non-integer keys are interned
    assert load_trace(tmp_path / "blocks.trace", fmt="text").keys.tolist() == [100, 7, 200]


def test_bad_input_gives_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="not found"):
        load_trace(tmp_path / "missing.lis")
    (tmp_path / "k.txt").write_text("1\n")
    with pytest.raises(TraceError, match="unknown trace format"):
        load_trace(tmp_path / "k.txt", fmt="parquet")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TraceError, match="empty"):
        load_trace(tmp_path / "empty.txt")
    (tmp_path / "bad.lis").write_text("x y z w\n")
    with pytest.raises(TraceError, match=r"\.lis"):
        load_trace(tmp_path / "bad.lis")


def test_trace_name_strips_format_and_compression() -> None:
    assert trace_name(Path("arc-OLTP.lis.zst")) == "arc-OLTP"
    assert trace_name(Path("lirs-loop.txt.gz")) == "lirs-loop"
