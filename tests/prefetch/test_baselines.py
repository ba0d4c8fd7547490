"""Stride and Markov prefetchers, the key codec and the access log."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import tracemalloc

import pytest

from service.prefetch import keys, make_prefetcher
from service.prefetch.access_log import AccessLog
from service.prefetch.keys import MAX_PREFIXES, NUMBER_BITS, SLOT_LIMIT, KeyCodec
from service.prefetch.markov import MarkovPrefetcher, SuccessorTable
from service.prefetch.stride import StridePrefetcher


def test_stride_prefetcher_predicts_the_stride_lead_steps_ahead() -> None:
    stride = StridePrefetcher(lead=2)
    for key in range(0, 300, 3):
        out = stride.access(key)
    assert out[0].key == 297 + 3 * 3
    assert out[0].confidence > 0.9


def test_stride_confidence_falls_on_random_keys() -> None:
    rng = random.Random(1)
    stride = StridePrefetcher()
    for _ in range(2000):
        out = stride.access(rng.randrange(1_000_000))
    assert out[0].confidence < 0.1


def test_markov_learns_successors_at_the_lead_distance() -> None:
    cycle = [5, 91, 17, 3, 44, 60]
    markov = MarkovPrefetcher(lead=1)  # distance 2: what comes two accesses later
    for _ in range(10):
        for key in cycle:
            out = markov.access(key)
    assert out[0].key == cycle[1]  # last access was 60; two later comes 91
    assert out[0].confidence > 0.8


def test_successor_counts_shares_ties_and_replacement() -> None:
    table = SuccessorTable(distance=1, ways=2)
    for key in [7, 100, 7, 100, 7, 200, 7, 300, 5, 1]:
        table.record(key)
    # After 7: 100, 100, 200, then 300 replaced the weakest (200) and halved the rest (100: 2 -> 1).
    assert table.successors(7) == [(100, 0.5, 2), (300, 0.5, 2)]  # a tie: the earlier seen first
    assert table.successors(300) == [(5, 1.0, 1)]  # one successor seen once
    assert table.successors(100) == [(7, 1.0, 2)]  # one successor seen twice
    assert table.successors(1) == []  # read last: no successor yet


def test_a_key_followed_once_by_one_successor_costs_no_container() -> None:
    # On a large key space most keys are seen once: a container per key (a dict, now a list) was over half of a
    # key's memory.
    table = SuccessorTable(distance=1, max_keys=1 << 20)
    rng = random.Random(2)
    for _ in range(20_000):
        table.record(rng.randrange(1 << 40))
    values = list(table._table.values())
    assert len(table) == 19_999 and not any(isinstance(v, list) for v in values)
    key = next(iter(table._table))
    assert table.successors(key) == [(table._table[key], 1.0, 1)]


def _reference_successors(keys: list[int], ways: int) -> dict[int, list[tuple[int, float, int]]]:
    """The table's rule written plainly, a dict of counts per key (its earlier form): most frequent first,
    ties to the earlier seen; a new successor beyond `ways` replaces the first-seen weakest and halves the rest."""
    counts: dict[int, dict[int, int]] = {}
    for prev, key in itertools.pairwise(keys):
        succ = counts.setdefault(prev, {})
        if key in succ:
            succ[key] += 1
        elif len(succ) < ways:
            succ[key] = 1
        else:
            del succ[min(succ, key=succ.__getitem__)]
            for other in succ:
                succ[other] = max(1, succ[other] // 2)
            succ[key] = 1
    ranked = {}
    for prev, succ in counts.items():
        total = sum(succ.values())
        ranked[prev] = [(s, c / total, total) for s, c in sorted(succ.items(), key=lambda item: item[1], reverse=True)]
    return ranked


@pytest.mark.parametrize("ways", [2, 4])
def test_compact_successor_lists_rank_as_a_dict_of_counts_does(ways: int) -> None:
    # Keys with several successors are flat lists now (a dict cost 224 bytes a key): the proposals must not move.
    rng = random.Random(ways)
    keys = [rng.choice(range(12)) if rng.random() < 0.7 else rng.randrange(40) for _ in range(5_000)]
    table = SuccessorTable(distance=1, ways=ways)
    for key in keys:
        table.record(key)
    expected = _reference_successors(keys, ways)
    assert {key: table.successors(key) for key in expected} == expected
    assert sum(isinstance(v, list) and len(v) == 2 * ways for v in table._table.values()) >= 10  # full entries hit


def test_the_learned_prefetcher_remembers_at_most_max_keys() -> None:
    learned = make_prefetcher("learned", max_keys=1024)
    learned.access_batch(random.Random(3).sample(range(1 << 40), 5_000))
    builder = learned.builder  # type: ignore[attr-defined]
    sizes = [len(builder.successors), len(builder.successors_prev), len(builder._last_seen)]
    assert all(512 <= size <= 1024 for size in sizes), sizes


def test_make_prefetcher_seeds_the_learned_model() -> None:
    import torch

    first, again, other = (make_prefetcher("learned", seed=seed) for seed in (3, 3, 4))
    assert first.config.seed == 3  # type: ignore[attr-defined]
    weights = [next(p.model.parameters()) for p in (first, again, other)]  # type: ignore[attr-defined]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_make_prefetcher_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="stride"):
        make_prefetcher("oracle")


def test_key_codec_keeps_numbers_adjacent_and_round_trips() -> None:
    codec = KeyCodec()
    a, b = codec.encode(b"user:00041"), codec.encode(b"user:00042")
    assert b - a == 1
    assert codec.decode(a + 5) == b"user:00046"
    opaque = codec.encode(b"session-abc")
    assert codec.decode(opaque) == b"session-abc"
    assert codec.decode(codec.encode(b"img/7") - 8) is None  # stride below zero names no key
    assert codec.decode(codec.encode(b"line7\n")) == b"line7\n"  # digits must end the key, a newline too



def test_key_codec_holds_no_more_bytes_than_its_bound() -> None:
    codec = KeyCodec(max_bytes=1 << 20)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        first = codec.encode(b"session:first".ljust(1024, b"x"))
        for i in range(5_000):  # 5 MB of distinct opaque keys
            codec.encode(b"session:%d:".ljust(1024, b"x") % i)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert codec.retained_bytes <= 1 << 20 and held < 1.5 * (1 << 20)
    assert codec.decode(first) is None  # forgotten, oldest first
    last = codec.encode(b"session:4999:".ljust(1024, b"x"))
    assert codec.decode(last) == b"session:4999:".ljust(1024, b"x")


def test_one_off_numbered_keys_leave_prefix_slots_for_the_keys_that_come_back() -> None:
    codec = KeyCodec()
    one_off = codec.encode(b"tmp/first/part1")
    user = codec.encode(b"user:00001")
    for i in range(MAX_PREFIXES):  # each its own prefix, never seen again
        codec.encode(b"tmp/%d/part1" % i)
        if i % 64 == 0:
            codec.encode(b"user:00001")  # in use: not the least recently encoded
    assert codec.decode(one_off) is None
    assert codec.encode(b"user:00002") == user + 1 and codec.decode(user + 5) == b"user:00006"
    late = codec.encode(b"order:00001")  # a prefix first seen after the slots filled up still gets one
    assert codec.decode(late + 1) == b"order:00002"


MIXED_KEYS = (
    [b"user:%05d" % i for i in range(20)] + [b"order-%d" % i for i in range(20)]
    + [b"t%d/part%d" % (i, j) for i in range(30) for j in (1, 2)]  # a prefix each
    + [b"session-%x" % (i * 7919) for i in range(40)] + [b"img/%d/thumb" % i for i in range(20)]
)


def test_key_codec_ids_do_not_depend_on_the_order_keys_are_first_seen() -> None:
    in_order = {key: KeyCodec().encode(key) for key in MIXED_KEYS}
    codec = KeyCodec()
    shuffled = {key: codec.encode(key) for key in random.Random(1).sample(MIXED_KEYS, len(MIXED_KEYS))}
    assert shuffled == in_order
    assert all(codec.decode(ident) == key for key, ident in shuffled.items())


_CHILD = """
import json, sys
from service.prefetch.keys import KeyCodec
keys = [bytes.fromhex(k) for k in json.load(sys.stdin)]
codec = KeyCodec()
ids = {key: codec.encode(key) for key in reversed(keys)}
print(json.dumps([ids[key] for key in keys]))
"""


def test_key_codec_ids_survive_a_restart() -> None:
    """Processes with other `hash()` salts, first seeing the keys in another order, give every key the same id;
    so does the next release: changing the ids relabels every key a saved checkpoint learned on."""
    codec = KeyCodec()
    ids = [codec.encode(key) for key in MIXED_KEYS]
    for salt in ("1", "2"):
        child = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps([k.hex() for k in MIXED_KEYS]),
                               capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": salt})
        assert json.loads(child.stdout) == ids
    assert (codec.encode(b"user:00041"), codec.encode(b"session-abc")) == ((0x38F41 << NUMBER_BITS) | 41, 0x85B0DBE0FF)


def test_keys_hashing_onto_a_held_slot_or_id_take_the_next_free_one_and_decode_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "opaque_id", lambda key: 7)
    monkeypatch.setattr(keys, "prefix_slot", lambda prefix: SLOT_LIMIT - 1)  # the last slot: the next wraps to 0
    codec = KeyCodec(max_opaque=2)
    alpha, beta = codec.encode(b"alpha"), codec.encode(b"beta")
    user, order = codec.encode(b"user:00041"), codec.encode(b"order-41")
    assert (alpha, beta) == (7, 8) and (user >> NUMBER_BITS, order >> NUMBER_BITS) == (SLOT_LIMIT, 1)
    assert [codec.decode(i) for i in (alpha, beta, user + 1, order + 1)] == [b"alpha", b"beta", b"user:00042",
                                                                               b"order-42"]
    assert codec.encode(b"gamma") == 9  # alpha, the least recently encoded, is forgotten to make room
    assert codec.decode(alpha) is None and codec.decode(9) == b"gamma"
    assert codec.encode(b"beta") == beta  # a remembered key keeps its id


def test_a_key_codec_larger_than_its_id_space_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than 1048576 prefixes"):
        KeyCodec(max_prefixes=SLOT_LIMIT)


def test_access_log_is_bounded_and_sampled() -> None:
    log = AccessLog(capacity=4, sample_every=2)
    for i in range(20):
        log.append(i, i % 3 == 0)
    assert log.drain() == [(13, False), (15, True), (17, False), (19, False)]
    assert log.saturated == 1  # the worker fell behind: the ring was full when drained
    assert log.drain() == []
    assert log.saturated == 1


def test_a_miss_notes_whether_the_keys_load_was_in_flight_when_it_was_read() -> None:
    flying = {b"b"}
    log = AccessLog(capacity=8, in_flight=flying.__contains__)
    hit, miss = log.recorders()
    miss(b"a")
    miss(b"b")  # joins the prefetch of b on its way
    flying.clear()  # it lands before the worker drains
    hit(b"c")
    log.append(b"b", False)
    assert log.drain() == [(b"a", False), (b"b", None), (b"c", True), (b"b", False)]


def test_unsampled_hit_recorder_is_the_rings_own_append() -> None:
    log = AccessLog(capacity=8)
    hit, miss = log.recorders()
    assert type(hit).__name__ == "builtin_function_or_method"  # no Python frame on the hot path
    for key in (b"a", b"b", b"c", (b"tuple", False)):  # a key shaped like an entry is still a key
        (hit if key != b"b" else miss)(key)
    assert log.drain() == [(b"a", True), (b"b", False), (b"c", True), ((b"tuple", False), True)]
    assert log.saturated == 0
