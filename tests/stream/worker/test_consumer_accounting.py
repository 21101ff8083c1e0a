"""The chunking consumer's commit accounting.

`ChunkingConsumer.getmany` hands one fetch of a partition to the agent as a
single `ChunkMessage` whose offset is the fetch's last record, and records
its offset span in a ledger (stream/worker/ledger.py). For a chunked topic
the offset to commit is the end of the head run of acked chunks
(`_new_offset`): never past a chunk that was fetched and not acked. No gaps
are registered; other topics keep Faust's own accounting.

Two parts, with the real classes throughout (nothing is mocked):

1. No broker. A real `ChunkingConsumer`, built by a real `ChunkingApp`, that
   is never started: acks and committable offsets go through Faust's `ack`
   and `_filter_committable_offsets` (what `commit()` commits).
2. The embedded broker. The same consumer with its real consumer thread
   (`ShortFetchConsumerThread` over aiokafka): `getmany` on real fetches,
   Faust's own fetch loop (`_drain_messages`, which registers gaps of its
   own), the commit through `Consumer.commit()` to the broker, and
   `seek_to_committed` rewinding input partitions that have no committed
   offset. What is not run: the group rebalance (the partitions are
   assigned by hand, then resumed, as the end of a rebalance does), agents
   and tables.
3. The end of a rebalance: Faust's steps (resume, seek, empty the stream
   buffers, resume the flow) with a fetch landing between the seek and the
   emptying; the consumer reads those records again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from aiokafka.structs import TopicPartition as KafkaTP
from confluent_kafka import Consumer, TopicPartition
from faust.transport.consumer import Fetcher
from faust.types.tuples import TP

from stream.kafka.clients import ensure_topics, make_producer
from stream.worker.consumer import ChunkingApp, ChunkingConsumer, ChunkMessage

TOPIC = "events-in"  # part 1 only: no broker ever sees it
PLAIN = "plain-in"  # part 1 only: a topic that is not chunked


async def _consumer(app_id: str, bootstrap: str, datadir: Path, chunked: set[str], reset: str = "earliest"):
    """A ChunkingApp's consumer whose topics have acks enabled (as an agent's subscription does)."""
    app = ChunkingApp(
        app_id,
        broker=f"kafka://{bootstrap}",
        datadir=str(datadir),
        web_enabled=False,
        consumer_auto_offset_reset=reset,
        value_serializer="raw",
        key_serializer="raw",
    )
    app.chunked_topics = frozenset(chunked)
    for name in chunked | {TOPIC, PLAIN}:
        app.topics.add(app.topic(name))
    await app.topics._update_indices()
    consumer = app.consumer
    assert isinstance(consumer, ChunkingConsumer)
    return app, consumer


def _chunk(consumer, tp: TP, first: int, last: int) -> ChunkMessage:
    """A chunk of offsets first..last, recorded in the consumer's ledger as `getmany` records a fetch."""
    message = ChunkMessage(tp.topic, tp.partition, last, 0.0, 0, None, None, b"", None, 0, 0, tp)
    if tp.topic in consumer.app.chunked_topics:
        message.span = consumer.ledger.fetched(tp, first, last)
    return message


def _offline(tmp_path, committed: int | None, body, topic: str = TOPIC):
    async def main():
        _, consumer = await _consumer("accounting", "127.0.0.1:9", tmp_path, {TOPIC})
        tp = TP(topic, 0)
        if committed is not None:
            consumer._committed_offset[tp] = committed  # what perform_seek reads from the broker
        return await body(consumer, tp)

    return asyncio.run(main())


def _commit(consumer, tp: TP) -> dict:
    """What `commit()` would commit now, recorded as committed."""
    offsets = consumer._filter_committable_offsets({tp})
    consumer._committed_offset.update(offsets)
    return offsets


@pytest.mark.parametrize(("committed", "first"), [(None, 0), (10, 10)])
def test_an_acked_chunk_makes_the_offset_after_its_last_record_committable(tmp_path, committed, first):
    async def body(consumer, tp):
        assert consumer.ack(_chunk(consumer, tp, first, first + 9))
        return consumer._filter_committable_offsets({tp})

    assert _offline(tmp_path, committed, body) == {TP(TOPIC, 0): first + 10}


def test_an_unacked_chunk_commits_nothing(tmp_path):
    async def body(consumer, tp):
        _chunk(consumer, tp, 10, 19)
        return consumer._filter_committable_offsets({tp}), consumer._committed_offset[tp]

    assert _offline(tmp_path, 10, body) == ({}, 10)


def test_chunks_acked_in_order_commit_up_to_the_last_acked_one(tmp_path):
    async def body(consumer, tp):
        # The last fetch skips offset 40 (a transaction marker, say): it belongs to that chunk.
        chunks = [_chunk(consumer, tp, first, last) for first, last in ((10, 19), (20, 29), (30, 39), (41, 41))]
        consumer.ack(chunks[0])
        consumer.ack(chunks[1])
        after_two = _commit(consumer, tp)
        nothing_new = _commit(consumer, tp)
        consumer.ack(chunks[2])
        consumer.ack(chunks[3])
        return after_two, nothing_new, _commit(consumer, tp)

    assert _offline(tmp_path, 10, body) == ({TP(TOPIC, 0): 30}, {}, {TP(TOPIC, 0): 42})


def test_an_ack_below_the_committed_offset_commits_nothing(tmp_path):
    """A chunk read again after a rebalance, acked after a newer commit, does not move the offset back."""

    async def body(consumer, tp):
        assert not consumer.ack(_chunk(consumer, tp, 10, 15))
        return consumer._filter_committable_offsets({tp})

    assert _offline(tmp_path, 20, body) == {}


def test_a_chunk_lost_before_it_was_acked_holds_the_commit_however_many_later_ones_are(tmp_path):
    """A rebalance can empty a stream buffer holding a fetched chunk while a
    later chunk is processed and acked. Committing the highest acked offset
    + 1 passed the lost chunk, and a kill then lost its events for good."""

    async def body(consumer, tp):
        lost = _chunk(consumer, tp, 10, 19)
        later = [_chunk(consumer, tp, first, first + 9) for first in (20, 30, 40)]
        for chunk in later:
            consumer.ack(chunk)
        held = _commit(consumer, tp)
        # A seek to the committed offset reads the lost chunk again; chunks fetched before it are forgotten.
        consumer.ledger.reset(tp)
        consumer.ack(lost)  # a chunk of before the seek, acked late, counts for nothing
        stale = _commit(consumer, tp)
        again = _chunk(consumer, tp, 10, 49)
        consumer.ack(again)
        return held, stale, _commit(consumer, tp)

    assert _offline(tmp_path, 10, body) == ({}, {}, {TP(TOPIC, 0): 50})


def test_a_later_chunk_acked_first_waits_for_the_earlier_one(tmp_path):
    async def body(consumer, tp):
        earlier, later = _chunk(consumer, tp, 10, 19), _chunk(consumer, tp, 20, 29)
        consumer.ack(later)
        before = _commit(consumer, tp)
        consumer.ack(earlier)
        return before, _commit(consumer, tp)

    assert _offline(tmp_path, 10, body) == ({}, {TP(TOPIC, 0): 30})


def test_a_plain_topic_keeps_fausts_accounting(tmp_path):
    """Record by record, Faust commits the end of the first run of acked offsets."""

    async def body(consumer, tp):
        for offset in (10, 11, 13):
            consumer.ack(_chunk(consumer, tp, offset, offset))
        return consumer._filter_committable_offsets({tp})

    assert _offline(tmp_path, 10, body, topic=PLAIN) == {TP(PLAIN, 0): 12}


# -- part 2: the embedded broker ------------------------------------------------


def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = make_producer(bootstrap)
    for i in range(n):
        producer.produce(topic, b"v%d" % i, b"k", partition=0)
    assert producer.flush(10) == 0


def _group_offset(bootstrap: str, group: str, topic: str, commit: int | None = None) -> int:
    """The group's committed offset of partition 0 (after committing `commit`, if given)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "log_level": 0})
    try:
        if commit is not None:
            consumer.commit(offsets=[TopicPartition(topic, 0, commit)], asynchronous=False)
        return consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        consumer.close()


async def _started(consumer, tps: set[TP]):
    """Start the consumer thread, assign `tps` by hand and seek to the committed offsets."""
    thread = consumer._thread
    await thread.start()

    async def assign():
        # aiokafka's own TopicPartition, as a group assignment gives it (aiokafka
        # rejects Faust's TP in seek_to_beginning; they compare equal otherwise).
        thread._ensure_consumer().assign([KafkaTP(tp.topic, tp.partition) for tp in sorted(tps)])

    await thread.call_thread(assign)
    consumer.resume_partitions(tps)
    await consumer.perform_seek()


async def _fetch(consumer, want: dict[TP, int], timeout_s: float = 20.0) -> dict[TP, list]:
    """Messages from getmany until each partition's messages hold `want[tp]` records."""
    got: dict[TP, list] = {tp: [] for tp in want}

    def records(tp):
        return sum(len(m.records) if isinstance(m, ChunkMessage) else 1 for m in got[tp])

    deadline = time.monotonic() + timeout_s
    while any(records(tp) < n for tp, n in want.items()) and time.monotonic() < deadline:
        async for tp, message in consumer.getmany(timeout=1.0):
            got[tp].append(message)
    assert {tp: records(tp) for tp in want} == want
    return got


@contextlib.asynccontextmanager
async def _draining(app, consumer):
    """Faust's own fetch loop (`_drain_messages`) over the consumer while the block runs."""
    drain = asyncio.ensure_future(consumer._drain_messages(Fetcher(app)))
    try:
        yield
    finally:
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain


@pytest.fixture
def topics(broker, unique):
    """A chunked input topic (20 records) and a plain one (3 records), one partition each."""
    chunked, plain = unique("chunked"), unique("plain")
    ensure_topics(broker.bootstrap_servers, [chunked, plain], 1)
    _produce(broker.bootstrap_servers, chunked, 20)
    _produce(broker.bootstrap_servers, plain, 3)
    return TP(chunked, 0), TP(plain, 0)


def test_getmany_delivers_each_fetch_as_one_chunk_that_is_committed_only_once_acked(broker, topics, unique, tmp_path):
    bootstrap = broker.bootstrap_servers
    chunked, plain = topics
    group = unique("accounting")
    assert _group_offset(bootstrap, group, chunked.topic, commit=10) == 10

    async def main():
        _, consumer = await _consumer(group, bootstrap, tmp_path, {chunked.topic})
        try:
            await _started(consumer, {chunked, plain})
            assert consumer._committed_offset[chunked] == 10
            got = await _fetch(consumer, {chunked: 10, plain: 3})
            gap = {o for interval in consumer._gap[chunked] for o in range(interval.begin, interval.end)}
            plain_gap = set(consumer._gap[plain])
            unacked_commit = await consumer.commit()
            unacked = (consumer._committed_offset[chunked], _group_offset(bootstrap, group, chunked.topic))
            for message in got[chunked]:
                consumer.ack(message)
            acked_commit = await consumer.commit()
            acked = (consumer._committed_offset[chunked], _group_offset(bootstrap, group, chunked.topic))
            return got, gap, plain_gap, unacked_commit, unacked, acked_commit, acked
        finally:
            await consumer._thread.stop()

    got, gap, plain_gap, unacked_commit, unacked, acked_commit, acked = asyncio.run(main())
    chunks = got[chunked]
    assert all(isinstance(m, ChunkMessage) for m in chunks)
    # Each chunk is one message at its last record's offset, its records in order.
    assert [r[2] for m in chunks for r in m.records] == list(range(10, 20))
    assert [r[1] for m in chunks for r in m.records] == [b"v%d" % i for i in range(10, 20)]
    assert all(m.offset == m.records[-1][2] for m in chunks)
    # Not acked: nothing to commit, the group stays at 10.
    assert (unacked_commit, unacked) == (False, (10, 10))
    # Acked: Faust commits the offset after the chunk's last record.
    assert (acked_commit, acked) == (True, (20, 20))
    # Chunked topics need no gaps: the highest acked offset is the progress.
    assert not gap
    # A topic that is not chunked arrives record by record, with no gap.
    assert [m.offset for m in got[plain]] == [0, 1, 2]
    assert not any(isinstance(m, ChunkMessage) for m in got[plain])
    assert not plain_gap


def test_chunks_fetched_by_fausts_loop_and_acked_in_order_are_committed_in_one_commit(broker, unique, tmp_path):
    """Faust's fetch loop registers, for each message, a gap from the
    previous message's offset + 1 through its own; with chunks that made
    every chunk's last offset count twice in Faust's accounting, and each
    commit moved past one chunk only (the committed offset fell further
    behind for as long as records kept coming)."""
    bootstrap = broker.bootstrap_servers
    topic, group = unique("drained"), unique("drained")
    ensure_topics(bootstrap, [topic], 1)
    tp = TP(topic, 0)
    fetches = (10, 10, 10, 5)

    async def main():
        app, consumer = await _consumer(group, bootstrap, tmp_path, {topic})
        received: list[ChunkMessage] = []
        arrived = asyncio.Event()

        async def on_message(message) -> None:
            received.append(message)
            arrived.set()

        consumer.callback = on_message
        try:
            await _started(consumer, {tp})
            async with _draining(app, consumer):
                produced = 0
                for n in fetches:  # one fetch (one chunk) at a time
                    _produce(bootstrap, topic, n)
                    produced += n
                    deadline = time.monotonic() + 20
                    while (not received or received[-1].offset < produced - 1) and time.monotonic() < deadline:
                        arrived.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(arrived.wait(), 1.0)
                for message in received:  # in order, as the committer acks
                    consumer.ack(message)
                await consumer.commit()
            return [[r[2] for r in m.records] for m in received], _group_offset(bootstrap, group, topic)
        finally:
            await consumer._thread.stop()

    chunks, committed = asyncio.run(main())
    assert [o for chunk in chunks for o in chunk] == list(range(sum(fetches)))
    assert len(chunks) >= 2  # several chunks, or the test shows nothing
    # One commit after every chunk is acked commits past all of them.
    assert committed == sum(fetches)


@pytest.mark.parametrize(("reset", "rewound"), [("earliest", 0), ("latest", 20)])
def test_seek_to_committed_rewinds_input_partitions_with_no_committed_offset(broker, topics, unique, tmp_path, reset, rewound):
    """A fetch a rebalance interrupts leaves the position advanced; with no
    committed offset aiokafka does not seek, so the consumer thread seeks
    chunked topics back to their start (when the app reads from the earliest)."""
    bootstrap = broker.bootstrap_servers
    chunked, plain = topics

    async def main():
        _, consumer = await _consumer(unique("fresh"), bootstrap, tmp_path, {chunked.topic}, reset=reset)
        try:
            thread = consumer._thread
            await _started(consumer, {chunked, plain})

            async def from_start():
                await thread._ensure_consumer().seek_to_beginning()

            await thread.call_thread(from_start)  # so that "latest" reads the records too
            await _fetch(consumer, {chunked: 20, plain: 3})
            before = (await consumer.position(chunked), await consumer.position(plain))
            await consumer.perform_seek()
            return before, (await consumer.position(chunked), await consumer.position(plain))
        finally:
            await consumer._thread.stop()

    before, after = asyncio.run(main())
    assert before == (20, 3)
    # Only the chunked (input) topic is rewound; other topics keep their position.
    assert after == (rewound, 3)


def _fresh_partition(broker, unique, name: str) -> tuple[str, TP, str]:
    """A new one-partition topic: the bootstrap servers, its partition and a new group id."""
    topic = unique(name)
    ensure_topics(broker.bootstrap_servers, [topic], 1)
    return broker.bootstrap_servers, TP(topic, 0), unique(name)


def _buffered(app, consumer):
    """A stream's buffer (as Faust makes it) fed by the consumer, and a coroutine taking chunks out of it."""
    buffer = app.FlowControlQueue(maxsize=64, clear_on_resume=True)

    async def on_message(message) -> None:
        buffer.put_nowait(message)

    async def taken(n_records: int, deadline_s: float = 20.0) -> list:
        got, deadline = [], time.monotonic() + deadline_s
        while time.monotonic() < deadline and sum(len(m.records) for m in got) < n_records:
            while not buffer.empty():
                got.append(buffer.get_nowait())
            await asyncio.sleep(0.02)
        return got

    consumer.callback = on_message
    return buffer, taken


# -- part 3: the end of a rebalance --------------------------------------------


def test_records_a_stream_buffer_loses_when_a_rebalance_ends_are_read_again(broker, unique, tmp_path):
    """At the end of a rebalance Faust resumes the stream partitions, seeks
    them to the committed offsets, and then resumes flow control, which
    empties every stream's buffer. A fetch that lands between the seek and
    the emptying is thrown away while the consumer's position has moved past
    it: a whole chunk was never processed (seen as one batch_max of events
    with no prediction after a clean start). The steps below are Faust's
    (`Recovery.on_recovery_completed`), in its order; the records are
    produced after the seek, so that their fetch lands in that window."""
    bootstrap, tp, group = _fresh_partition(broker, unique, "resumed")
    topic = tp.topic

    async def main():
        app, consumer = await _consumer(group, bootstrap, tmp_path, {topic})
        buffer, taken = _buffered(app, consumer)
        try:
            await _started(consumer, {tp})
            consumer.pause_partitions({tp})  # recovery: stream partitions paused, the flow running
            app.flow_control.resume()
            consumer.resume_flow()
            async with _draining(app, consumer):
                # Recovery.on_recovery_completed:
                consumer.resume_partitions({tp})
                await consumer.perform_seek()
                _produce(bootstrap, topic, 10)
                deadline = time.monotonic() + 20
                while buffer.empty() and time.monotonic() < deadline:  # the fetch that lands in between
                    await asyncio.sleep(0.01)
                in_between = buffer.qsize()
                app.flow_control.resume()
                consumer.resume_flow()
                return in_between, await taken(10)
        finally:
            await consumer._thread.stop()

    in_between, got = asyncio.run(main())
    assert in_between  # the window was hit, or the test shows nothing
    assert sorted({r[2] for m in got for r in m.records}) == list(range(10))


def test_a_chunk_a_stream_buffer_lost_is_not_committed_past_and_is_read_again_after_a_seek(broker, unique, tmp_path):
    """A rebalance empties the stream buffers; a chunk fetched before that and
    a later chunk acked after it must not move the committed offset past the
    lost one (it did, when the committed offset was the highest acked one + 1)."""
    bootstrap, tp, group = _fresh_partition(broker, unique, "emptied")
    topic = tp.topic

    async def main():
        app, consumer = await _consumer(group, bootstrap, tmp_path, {topic})
        _, next_chunks = _buffered(app, consumer)
        try:
            await _started(consumer, {tp})
            app.flow_control.resume()
            async with _draining(app, consumer):
                _produce(bootstrap, topic, 10)
                lost = await next_chunks(10)  # fetched, then emptied from the buffer: never processed
                _produce(bootstrap, topic, 10)
                later = await next_chunks(10)
                for message in later:
                    consumer.ack(message)
                await consumer.commit()
                held = _group_offset(bootstrap, group, topic)
                await consumer.perform_seek()  # what the end of the rebalance does
                again = await next_chunks(20)
                for message in again:
                    consumer.ack(message)
                await consumer.commit()
                return lost, later, held, again, _group_offset(bootstrap, group, topic)
        finally:
            await consumer._thread.stop()

    lost, later, held, again, committed = asyncio.run(main())
    assert [r[2] for m in lost for r in m.records] == list(range(10))
    assert [r[2] for m in later for r in m.records] == list(range(10, 20))
    assert held == -1001  # OFFSET_INVALID: nothing committed,: the lost chunk holds it
    assert [r[2] for m in again for r in m.records] == list(range(20))
    assert committed == 20


# -- part 4: a fetch that lands while a seek is under way ----------------------


def test_a_fetch_thrown_away_while_a_seek_runs_is_read_again(broker, unique, tmp_path):
    """At the end of a rebalance Faust resumes the stream partitions and then
    seeks them to the committed offsets (`perform_seek`) while the fetch loop
    runs. A fetch that began before the seek and returns while it runs may
    hold records from after the seek's position: the consumer throws them
    away (the position has moved past them) and asks to seek again. The end
    of the seek used to clear that request and forget their span, so the
    next fetch went on after them and the committed offset passed them: the
    first records of every events partition, committed past without an
    outcome. Here the seek is held open (the real seek has run) until the
    fetch that began before it has returned the records written meanwhile."""
    bootstrap, tp, group = _fresh_partition(broker, unique, "seeking")
    topic = tp.topic

    async def main():
        _, consumer = await _consumer(group, bootstrap, tmp_path, {topic})
        thread = consumer._thread
        try:
            await _started(consumer, {tp})

            async def one_fetch() -> list:
                return [m async for _, m in consumer.getmany(timeout=10.0)]

            before_seek = asyncio.ensure_future(one_fetch())  # waiting for records when the seek begins
            await asyncio.sleep(0.2)
            real_seek = thread.seek_to_committed

            async def seek_then_fetch():
                committed = await real_seek()
                _produce(bootstrap, topic, 10)
                await asyncio.wait_for(asyncio.shield(before_seek), 20)
                return committed

            thread.seek_to_committed = seek_then_fetch
            try:
                await consumer.perform_seek()
            finally:
                thread.seek_to_committed = real_seek
            thrown_away = before_seek.result()
            _produce(bootstrap, topic, 10)
            got: list = []
            deadline = time.monotonic() + 20
            while sum(len(m.records) for m in got) < 20 and time.monotonic() < deadline:
                got.extend([m async for _, m in consumer.getmany(timeout=1.0)])
            for message in got:
                consumer.ack(message)
            await consumer.commit()
            return thrown_away, got, _group_offset(bootstrap, group, topic)
        finally:
            await consumer._thread.stop()

    thrown_away, got, committed = asyncio.run(main())
    assert thrown_away == []  # the fetch landed inside the seek and was thrown away, or the test shows nothing
    assert [r[2] for m in got for r in m.records] == list(range(20))
    assert committed == 20
