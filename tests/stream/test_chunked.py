"""The chunking consumer: what it fetched but could not deliver is fetched again."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from faust.types.tuples import TP

from stream.chunked import ChunkingConsumer, ChunkMessage


class _Record(SimpleNamespace):
    pass


def _records(topic: str, partition: int, offsets: range) -> list:
    return [_Record(key=b"k", value=b"v", offset=o, timestamp=1000 + o, timestamp_type=0, serialized_value_size=1) for o in offsets]


class _Consumer(ChunkingConsumer):
    """The real getmany over a fetch the test decides (Faust's fetcher and aiokafka are not started)."""

    def __init__(self, records, active, assigned):
        self._records, self._active, self._assigned = records, active, assigned
        self.seeks: list[tuple[TP, int]] = []
        self.gaps: list[tuple[TP, int, int]] = []
        self.flow_active = True
        self._buffered_partitions = set()
        self._committed_offset = {}
        self.app = SimpleNamespace(
            consumer_generation_id=1, chunked_topics=frozenset({"events"}), monitor=SimpleNamespace(track_tp_end_offset=lambda *a: None)
        )

    log = logging.getLogger("test")
    should_stop = False

    async def _wait_next_records(self, timeout):
        return self._records, self._active

    def assignment(self):
        return self._assigned

    def highwater(self, tp):
        return 0

    async def seek(self, tp, offset):
        self.seeks.append((tp, offset))

    async def _add_gap(self, tp, first, last):
        self.gaps.append((tp, first, last))


def _run(consumer: _Consumer) -> list:
    async def collect():
        return [item async for item in consumer.getmany(0.1)]

    return asyncio.run(collect())


def test_records_of_a_partition_not_active_yet_are_fetched_again_not_dropped():
    # A worker that joined with another one: the first fetch returned the
    # backlog of two partitions before they were resumed. Dropping them left
    # the fetcher past the whole backlog, and the partitions never processed it.
    p0, p1 = TP("events", 0), TP("events", 1)
    consumer = _Consumer({p0: _records("events", 0, range(5)), p1: _records("events", 1, range(3, 9))}, active={p0}, assigned={p0, p1})
    delivered = _run(consumer)
    assert [(tp, type(m)) for tp, m in delivered] == [(p0, ChunkMessage)]
    assert [r[2] for r in delivered[0][1].records] == [0, 1, 2, 3, 4]
    assert consumer.seeks == [(p1, 3)]


def test_after_a_rebalance_began_nothing_is_rewound_faust_seeks_to_the_commits():
    # Faust seeks every partition to its committed offset when a rebalance
    # begins; a seek of ours after that would jump over uncommitted records.
    p0, p1, p2 = TP("events", 0), TP("events", 1), TP("events", 2)
    records = {p0: _records("events", 0, range(2)), p1: _records("events", 1, range(7, 9)), p2: _records("events", 2, range(4, 6))}
    consumer = _Consumer(records, active={p0, p1}, assigned={p0, p1, p2})

    async def collect():
        out = []
        async for item in consumer.getmany(0.1):
            out.append(item)
            consumer.app.consumer_generation_id = 2  # a rebalance began while the first chunk was handed over
        return out

    delivered = asyncio.run(collect())
    assert [tp for tp, _ in delivered] == [p0]
    assert consumer.seeks == []


def test_a_partition_with_a_committed_offset_is_left_to_faust():
    # Faust seeks such a partition to its commit when its stream resumes; a
    # seek of ours landing after that one would jump over uncommitted records.
    p0, p1, p2 = TP("events", 0), TP("events", 1), TP("events", 2)
    records = {p0: _records("events", 0, range(2)), p1: _records("events", 1, range(7, 9)), p2: _records("events", 2, range(4, 6))}
    consumer = _Consumer(records, active={p0}, assigned={p0, p1, p2})
    consumer._committed_offset = {p1: 5}
    _run(consumer)
    assert consumer.seeks == [(p2, 4)]
