"""`Deliveries` against the embedded broker: per-group futures, offsets, partitions, errors.

Every test runs its producer inside its own event loop and stops its poll
thread before the loop closes (see `running`): `Deliveries` has no close of
its own, and a poll thread left running would hand delivery reports to a
closed loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream.kafka.broker import free_port
from stream.kafka.clients import KafkaDeliveryError, ensure_topics, topic_partitions
from stream.kafka.delivery import Deliveries

#: A topic name the broker refuses (a space is not allowed): its delivery report is an error.
INVALID_TOPIC = "not a valid topic"


class _StopPolling(Exception):
    """Raised from a delivery callback: confluent-kafka re-raises it from poll(), which ends the poll thread."""


def _stop(deliveries: Deliveries, fatal: list[str], bootstrap: str | None = None) -> None:
    def stop(err, msg):
        raise _StopPolling

    # The report of a record to a topic the broker refuses arrives at once
    # (and a client that reaches no broker times it out): either way the
    # callback runs on the poll thread, and the thread ends. A name the
    # producer has not seen yet: one it already knows to be invalid is
    # refused by produce() itself.
    try:
        deliveries.producer.produce(f"{INVALID_TOPIC} {time.monotonic_ns()}", b"stop", on_delivery=stop)
    except KafkaException:
        # After a full metadata refresh the client refuses every topic it has not seen, even a new name:
        # then any report ends the thread (the callback raises whatever the outcome), so use a real topic.
        if bootstrap is None:
            raise
        ensure_topics(bootstrap, ["delivery-test-stop"], 1)
        deliveries.producer.produce("delivery-test-stop", b"stop", on_delivery=stop)
    deliveries._thread.join(30)
    assert not deliveries._thread.is_alive(), "the delivery thread did not stop"
    assert any("_StopPolling" in reason for reason in fatal), fatal
    deliveries.producer.close()


@contextlib.asynccontextmanager
async def running(bootstrap: str, **config):
    """A `Deliveries` whose fatal errors are recorded instead of exiting; stopped on leaving."""
    fatal: list[str] = []
    deliveries = Deliveries(bootstrap, on_fatal=fatal.append, **config)
    try:
        yield deliveries
    finally:
        await asyncio.to_thread(_stop, deliveries, fatal, bootstrap)


async def _outcome(deliveries: Deliveries, messages, timeout_s: float = 20.0):
    """What a send of `messages` ends in: (offset, None) or (None, the exception), from send or from the future."""
    try:
        future = deliveries.send(messages)
        return await asyncio.wait_for(deliveries.wait(future), timeout_s), None
    except (KafkaException, KafkaDeliveryError) as exc:
        return None, exc


def _read(bootstrap: str, topic: str, n: int, timeout_s: float = 20.0) -> list:
    """The first `n` records of `topic` (all partitions, from the start), in partition then offset order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.monotonic_ns()}", "log_level": 0})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(topic_partitions(bootstrap, topic))])
        records, deadline = [], time.monotonic() + timeout_s
        while len(records) < n and time.monotonic() < deadline:
            records += [m for m in consumer.consume(n - len(records), timeout=0.5) if not m.error()]
        return sorted(records, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


def test_wait_returns_the_groups_last_offset_once_the_broker_has_every_record(broker, unique):
    topic = unique("deliver")
    ensure_topics(broker.bootstrap_servers, [topic], 1)

    async def main():
        async with running(broker.bootstrap_servers) as deliveries:
            first = deliveries.send([(topic, b"k", b"a%d" % i, None, 0) for i in range(3)])
            second = deliveries.send([(topic, b"k", b"b%d" % i, [("h", b"%d" % i)], 0) for i in range(50)])
            last_of_second = await deliveries.wait(second)
            # Nothing about the first group was awaited yet: the second's
            # future stands for the second group alone.
            last_of_first = await deliveries.wait(first)
            # Read back at once: every record of both groups is on the broker.
            return last_of_first, last_of_second, _read(broker.bootstrap_servers, topic, 53)

    last_of_first, last_of_second, records = asyncio.run(main())
    assert (last_of_first, last_of_second) == (2, 52)
    assert [m.offset() for m in records] == list(range(53))
    assert [m.value() for m in records] == [b"a%d" % i for i in range(3)] + [b"b%d" % i for i in range(50)]
    assert records[-1].headers() == [("h", b"49")]


def test_an_empty_group_resolves_at_once_to_none(broker):
    async def main():
        async with running(broker.bootstrap_servers) as deliveries:
            future = deliveries.send([])
            assert future.done()
            return await deliveries.wait(future)

    assert asyncio.run(main()) is None


def test_records_go_to_the_given_partition_and_keyed_ones_by_their_key(broker, unique):
    topic = unique("parts")
    ensure_topics(broker.bootstrap_servers, [topic], 3)
    pinned = [(topic, b"key-%d" % i, b"pinned-%d" % i, None, 2) for i in range(20)]
    keyed = [(topic, b"same", b"keyed-%d" % i, None, None) for i in range(10)]

    async def main():
        async with running(broker.bootstrap_servers) as deliveries:
            last = await deliveries.wait(deliveries.send(pinned + keyed))
            return last, _read(broker.bootstrap_servers, topic, 30)

    last, records = asyncio.run(main())
    partition_of = {m.value(): m.partition() for m in records}
    assert len(partition_of) == 30
    # Twenty different keys, all on the partition they were sent to.
    assert {partition_of[b"pinned-%d" % i] for i in range(20)} == {2}
    # One key, one partition (whichever the partitioner picks).
    assert len({partition_of[b"keyed-%d" % i] for i in range(10)}) == 1
    # The group's offset is the highest the broker gave any of its records, over partitions.
    assert last == max(m.offset() for m in records)


def test_a_record_the_broker_refuses_fails_the_groups_future(broker, unique):
    topic = unique("refused")
    ensure_topics(broker.bootstrap_servers, [topic], 1)

    async def main():
        async with running(broker.bootstrap_servers) as deliveries:
            group = [(topic, b"k", b"fine", None, 0), (INVALID_TOPIC, b"k", b"refused", None, 0), (topic, b"k", b"fine too", None, 0)]
            future = deliveries.send(group)
            with pytest.raises(KafkaDeliveryError) as caught:
                await deliveries.wait(future)
            return caught.value, _read(broker.bootstrap_servers, topic, 2)

    error, records = asyncio.run(main())
    # The error names the record's topic and partition and says the batch is replayed.
    assert f"{INVALID_TOPIC}[0]" in str(error)
    assert "reprocessed" in str(error)
    # At least once: the group's other records are on the broker all the same.
    assert [m.value() for m in records] == [b"fine", b"fine too"]


def test_a_group_no_broker_acknowledges_fails_after_the_message_timeout():
    # Nothing listens on this port: librdkafka times the records out and
    # reports each as failed; the group's future fails once, with the first.
    async def main():
        async with running(f"127.0.0.1:{free_port()}", **{"message.timeout.ms": 1000}) as deliveries:
            started = time.monotonic()
            offset, error = await _outcome(deliveries, [("t", b"k", b"x", None, 0), ("t", b"k", b"y", None, None)])
            return offset, error, time.monotonic() - started

    offset, error, took = asyncio.run(main())
    assert offset is None
    assert isinstance(error, KafkaDeliveryError)
    assert "timed out" in str(error)
    assert took < 15


@pytest.mark.parametrize(
    ("case", "code"),
    [("partition beyond the topic's", "_UNKNOWN_PARTITION"), ("record over message.max.bytes", "MSG_SIZE_TOO_LARGE")],
)
def test_a_record_the_client_refuses_surfaces_as_an_error(broker, unique, case, code):
    """Never a group that silently resolves, or never resolves.

    librdkafka refuses these records before they are queued, so today
    `send` raises the KafkaException itself (the future is never returned);
    the worker's agent treats that like any failed chunk and exits. Records
    of the group produced before the refused one are delivered regardless.
    """
    topic = unique("refuse")
    ensure_topics(broker.bootstrap_servers, [topic], 1)
    bad = (topic, b"k", b"x", None, 7) if case.startswith("partition") else (topic, b"k", b"x" * 1_100_000, None, 0)

    async def main():
        async with running(broker.bootstrap_servers) as deliveries:
            # A send that works first, so the producer knows the topic's partitions.
            assert await deliveries.wait(deliveries.send([(topic, b"k", b"ok", None, 0)])) == 0
            return await _outcome(deliveries, [bad])

    offset, error = asyncio.run(main())
    assert offset is None
    assert error is not None
    assert code in str(error)
