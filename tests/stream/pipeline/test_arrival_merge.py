"""The arrival merge: a later stage's records released in arrival order, without a broker."""

from __future__ import annotations

import random

import orjson

from stream.pipeline.clock import MARK_KEY, ArrivalMerge
from stream.pipeline.outcomes import NO_PLACE, Message


def row(clock: int, partition: int, offset: int) -> Message:
    """A forwarded record as stage 0 writes it (only what the merge reads matters here)."""
    value = orjson.dumps([{"id": f"{partition}/{offset}"}, [], [[partition, offset]], 0, 0, 0, [], clock, 2])
    return Message(b"k", value, offset, 0)


def mark(source: int, clock: int, offset: int) -> Message:
    return Message(MARK_KEY, orjson.dumps([source, clock, source, offset]), 0, 0)


def ids(messages) -> list[str]:
    return [orjson.loads(m.value)[0]["id"] for m in messages]


def test_a_record_waits_until_every_upstream_partition_has_passed_it():
    merge = ArrivalMerge(stage=1, n_sources=2, wait_ms=1e9, seen={})
    merge.add("f1", [row(10, 0, 0), row(30, 0, 1)], now_ms=0)
    assert ids(merge.release(0).messages) == []  # partition 1 has said nothing
    assert merge.lagging() == [1]  # what a tick is asked for
    merge.add("f2", [row(20, 1, 0)], now_ms=0)
    out = merge.release(0)
    assert ids(out.messages) == ["0/0", "1/0"]  # 0/1 (clock 30) could still be preceded by partition 1
    assert out.done == ["f2"]  # f1 still has a record held
    merge.add("f3", [mark(1, 40, 5)], now_ms=0)
    out = merge.release(0)
    assert ids(out.messages) == ["0/1"]
    assert out.done == ["f3", "f1"]


def test_any_interleaving_of_the_upstream_partitions_gives_the_same_order():
    rng = random.Random(3)
    streams = {p: [] for p in range(3)}
    clock = {p: 0 for p in range(3)}
    for i in range(300):
        p = rng.randrange(3)
        clock[p] = max(clock[p], rng.randrange(1000))  # a running max, like broker time
        streams[p].append(row(clock[p], p, len(streams[p])))
    truth = sorted((orjson.loads(m.value)[-2], p, m.offset) for p, ms in streams.items() for m in ms)
    for trial in range(20):
        merge = ArrivalMerge(stage=1, n_sources=3, wait_ms=1e9, seen={})
        cursor = {p: 0 for p in range(3)}
        released = []
        while any(cursor[p] < len(streams[p]) for p in range(3)):
            p = rng.choice([q for q in range(3) if cursor[q] < len(streams[q])])
            n = rng.randint(1, 12)
            chunk = streams[p][cursor[p] : cursor[p] + n]
            cursor[p] += len(chunk)
            last = chunk[-1]
            merge.add(trial, [*chunk, mark(p, orjson.loads(last.value)[-2], last.offset)], now_ms=0)
            released += merge.release(0).messages
        for p in range(3):  # every partition says it is done
            merge.add(trial, [mark(p, 10**6, 10**6)], now_ms=0)
        released += merge.release(0).messages
        assert [(orjson.loads(m.value)[-2], orjson.loads(m.value)[2][0][0], m.offset) for m in released] == truth


def test_records_forwarded_twice_are_dropped_and_the_unreadable_go_on_without_a_place():
    merge = ArrivalMerge(stage=1, n_sources=1, wait_ms=1e9, seen={0: 4})
    merge.add("f", [row(1, 0, 3), row(2, 0, 5), row(2, 0, 5), Message(b"k", b"[1,2", 9, 0)], now_ms=0)
    out = merge.release(0)
    assert out.duplicates == 2  # offset 3 was folded before the crash; 5 came twice
    assert [m.seq for m in out.messages] == [NO_PLACE, None]
    assert ids(out.messages[1:]) == ["0/5"]


def test_a_silent_upstream_partition_holds_a_record_only_for_the_wait():
    merge = ArrivalMerge(stage=1, n_sources=2, wait_ms=500, seen={})
    merge.add("f", [row(10, 0, 0)], now_ms=1000)
    assert merge.release(1400).messages == []
    assert merge.next_deadline_ms() == 1500
    out = merge.release(1500)
    assert ids(out.messages) == ["0/0"] and out.early == 1 and out.done == ["f"]
    merge.add("g", [row(5, 1, 0)], now_ms=1600)  # behind what went early
    out = merge.release(1600)
    assert out.out_of_order == 1 and ids(out.messages) == ["1/0"]


def test_a_record_keyed_as_a_mark_that_is_not_one_is_dead_lettered_not_dropped():
    merge = ArrivalMerge(stage=1, n_sources=1, wait_ms=1e9, seen={})
    merge.add("f", [Message(MARK_KEY, b"not a mark", 4, 0)], now_ms=0)
    out = merge.release(0)
    assert [(m.offset, m.seq) for m in out.messages] == [(4, NO_PLACE)]


def test_what_a_rebalance_lets_go_is_taken_again_when_read_again_and_nothing_released_is():
    merge = ArrivalMerge(stage=1, n_sources=2, wait_ms=1e9, seen={})
    merge.add("f1", [row(10, 0, 0), row(30, 0, 1)], now_ms=0)
    merge.add("f2", [row(20, 1, 0), row(40, 1, 1)], now_ms=0)
    out = merge.release(0)
    assert ids(out.messages) == ["0/0", "1/0", "0/1"] and out.done == ["f1"]
    assert merge.let_go() == ["f2"]  # it still holds 1/1: it must not be acked
    assert len(merge) == 0 and merge.release(0).messages == []
    # After the rebalance's seek both fetches may come again: what was released is dropped, the rest is taken.
    merge.add("f1'", [row(10, 0, 0), row(30, 0, 1)], now_ms=0)
    merge.add("f2'", [row(20, 1, 0), row(40, 1, 1)], now_ms=0)
    out = merge.release(0)
    assert out.messages == [] and out.duplicates == 3 and out.done == ["f1'"]
    assert merge.lagging() == [0]  # 1/1 (clock 40) waits for partition 0 to pass it, as before
    merge.add("m", [mark(0, 50, 2)], now_ms=0)
    out = merge.release(0)
    assert ids(out.messages) == ["1/1"] and out.done == ["m", "f2'"]
