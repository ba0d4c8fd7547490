"""Trace readers: formats, compression, auto-detection, limits and clear errors."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import numpy as np
import pytest
import zstandard

from service.bench.traces import Trace, TraceError, load_trace, trace_name
from service.prefetch.keys import NUMBER_BITS, KeyCodec

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


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_trace_cut_short_is_an_error_not_a_shorter_trace(tmp_path: Path, suffix: str) -> None:
    """zstandard's stream reader ended a cut .zst without a word (arc-OLTP cut at 1 MB: 387,143 requests)."""
    data = "".join(f"{i}\n" for i in range(200_000)).encode()
    packed = gzip.compress(data) if suffix == ".gz" else zstandard.ZstdCompressor().compress(data)
    (tmp_path / f"cut.txt{suffix}").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(TraceError, match=r"cannot read: .*(ended before|end-of-stream)"):
        load_trace(tmp_path / f"cut.txt{suffix}")
    assert len(load_trace(tmp_path / f"cut.txt{suffix}", limit=10)) == 10  # what a --limit reads is all there


def test_a_zst_of_several_frames_is_read_whole(tmp_path: Path) -> None:
    frames = [zstandard.ZstdCompressor().compress(f"{i}\n".encode() * 3) for i in range(4)]
    (tmp_path / "frames.txt.zst").write_bytes(b"".join(frames))
    assert load_trace(tmp_path / "frames.txt.zst").keys.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_a_lis_run_past_the_limit_is_never_expanded(tmp_path: Path) -> None:
    """A count of 10^11 with --limit 10 asked numpy for 745 GiB; without a limit it is one clear line."""
    huge = _written(tmp_path / "huge.lis", "5 100000000000 0 0\n7 2 0 0\n")
    assert load_trace(huge, limit=10).keys.tolist() == list(range(5, 15))
    with pytest.raises(TraceError, match="expands to more requests than memory holds; replay a part with --limit"):
        load_trace(huge)


def test_a_directory_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="is a directory; give a trace file"):
        load_trace(tmp_path)


def test_formats_are_auto_detected(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("5\n6\n5\n")
    (tmp_path / "blocks.trace").write_text(LIS)
    (tmp_path / "log.csv").write_text("time,key\n1,a\n2,b\n3,a\n")
    assert load_trace(tmp_path / "keys.txt").keys.tolist() == [5, 6, 5]
    assert len(load_trace(tmp_path / "blocks.trace")) == 6
    a, b, again = load_trace(tmp_path / "log.csv").keys.tolist()  # the key column; non-integer keys are mapped
    assert a == again != b
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


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _keys(path: Path, text: str, limit: int | None = None) -> list[int]:
    return load_trace(_written(path, text), limit=limit).keys.tolist()


def test_lirs_breakpoint_lines_are_skipped_and_integer_keys_kept(tmp_path: Path) -> None:
    # `*` asks the LIRS simulator to print its stacks (lirs-README.txt); it is not a request, and it must not turn
    # the file's keys into first-seen ids.
    trace = tmp_path / "lirs.txt"
    assert _keys(trace, "2819\n85\n*\n560\n*\n40\n85\n") == [2819, 85, 560, 40, 85]
    assert load_trace(trace, limit=3).keys.tolist() == [2819, 85, 560]  # --limit counts requests, not lines


def test_keys_are_integers_only_in_canonical_decimal(tmp_path: Path) -> None:
    keys = _keys(tmp_path / "k.txt", "007\n7\n+7\n7_0\n70\n-3\n-0\n")
    assert len(set(keys)) == 7  # no two of these tokens are one key
    assert keys[1] == 7 and keys[4] == 70 and keys[5] == -3


def test_uint64_keys_are_read_not_a_crash(tmp_path: Path) -> None:
    big, below, small = _keys(tmp_path / "u.txt", "18446744073709551615\n18446744073709551614\n12\n")
    assert big - below == 1  # the codec's rule: the trailing digits keep their number under their prefix
    assert small == 12


def test_string_keys_get_ids_from_their_content_not_from_first_appearance(tmp_path: Path) -> None:
    forward = _keys(tmp_path / "f.txt", "user:42\nuser:41\nobj-x\nobj-y\n")
    backward = _keys(tmp_path / "b.txt", "obj-y\nobj-x\nuser:41\nuser:42\n")
    assert forward == backward[::-1]
    # Trailing digits keep their number, as `KeyCodec` keeps it: user:42 is user:41 + 1.
    assert forward[0] - forward[1] == 1 and forward[0] >> NUMBER_BITS > 0
    # A never-seen string key is not the largest id so far + 1, so its id tells a prefetcher nothing.
    names = "\n".join(f"obj-{a}{b}" for a in "abcde" for b in "vwxyz")
    assert load_trace(_written(tmp_path / "n.txt", names)).first_access_numbered < 0.2


def test_an_opaque_string_key_gets_the_id_the_service_gives_it(tmp_path: Path) -> None:
    codec = KeyCodec()  # one rule for both: the trace reader calls the codec's functions
    assert _keys(tmp_path / "o.txt", "session-abc\nimg/7/thumb\n") == [codec.encode(b"session-abc"),
                                                                        codec.encode(b"img/7/thumb")]


def test_csv_needs_a_key_header_unless_it_has_one_column(tmp_path: Path) -> None:
    (tmp_path / "wide.csv").write_text("timestamp,id,size\n100,7,1\n101,8,1\n")
    with pytest.raises(TraceError, match=r"no key column in the CSV's first row \(timestamp, id, size\)"):
        load_trace(tmp_path / "wide.csv")
    (tmp_path / "headerless.csv").write_text("5,a\n6,b\n")
    with pytest.raises(TraceError, match=r"\(5, a\)"):
        load_trace(tmp_path / "headerless.csv")
    assert len(_keys(tmp_path / "one.csv", "u1\nu2\nu1\n")) == 3  # headerless, one column: every row a request
    assert _keys(tmp_path / "keyed.csv", "ts,Key\n1,9\n2,8\n") == [9, 8]


def test_csv_takes_libcachesims_key_columns(tmp_path: Path) -> None:
    # libCacheSim's csv reader names the key column obj_id; its sample data (`# time, object, ...`) names it
    # object, in a header written as a comment, which stays a comment: the error says so.
    assert _keys(tmp_path / "lcs.csv", "timestamp,obj_id,size\n100,7,1\n101,8,1\n") == [7, 8]
    sample = "time, object, size, next_access_vtime\n0, 13, 737, 2\n0, 61, 248, 9\n1, 13, 737, -1\n"
    assert _keys(tmp_path / "sample.csv", sample) == [13, 61, 13]
    with pytest.raises(TraceError, match=r"\(0, 13, 737, 2\).*written as a `#` comment is not read"):
        load_trace(_written(tmp_path / "commented.csv", f"# {sample}"))


def test_limit_counts_lis_requests_not_lines(tmp_path: Path) -> None:
    assert _keys(tmp_path / "e.lis", "5 0 0 0\n7 2 0 0\n", limit=1) == [7]


def test_a_txt_file_is_key_per_line_even_with_four_numbers_a_line(tmp_path: Path) -> None:
    assert _keys(tmp_path / "f.txt", "5 3 0 0\n9 1 0 0\n") == [5, 9]
    assert _keys(tmp_path / "f.lis", "5 3 0 0\n") == [5, 6, 7]


def test_first_access_numbering_is_measured_on_load(tmp_path: Path) -> None:
    assert load_trace(_written(tmp_path / "n.txt", "1\n2\n1\n3\n4\n")).first_access_numbered == 1.0
    # First accesses 3, 4, 9, 10: 4 and 10 are the largest so far + 1, 9 is not.
    assert Trace("r", np.array([3, 4, 3, 9, 10, 4])).first_access_numbered == pytest.approx(2 / 3)
    assert Trace("one", np.array([5, 5])).first_access_numbered == 0.0
