"""A consumer group's committed offsets and a topic's end offsets, read from outside the group.

For tools that watch a group (the chaos tool, the monitor, tests): how far
the group has committed, and how far the log goes. Reading committed
offsets does not join the group (the client never subscribes), so it
disturbs no assignment.

End offsets are what the broker reports; the embedded broker (Tansu) can
report less than the true end, so a caller that needs the exact end reads
the topic until quiet (`stream.kafka.reader`). Committed offsets are exact
on every broker.
"""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_INVALID, KafkaException, TopicPartition

from features.errors import SluiceError
from stream.kafka.clients import make_admin, make_consumer


def _partitions(bootstrap: str, topic: str, timeout_s: float) -> list[int]:
    # All topics' metadata: asking for one topic by name can make a broker create it.
    try:
        found = make_admin(bootstrap).list_topics(timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        msg = f"cannot read the topics of {bootstrap} ({exc.args[0].str()}); is the broker up?"
        raise SluiceError(msg) from exc
    if found is None or not found.partitions:
        msg = f"topic {topic} does not exist on {bootstrap}; check the topic name (and the app id it is derived from)"
        raise SluiceError(msg)
    return sorted(found.partitions)


def committed_offsets(bootstrap: str, group: str, topic: str, timeout_s: float = 10.0) -> dict[int, int | None]:
    """Partition -> the group's committed offset on `topic` (the next offset it will read); None where it committed none."""
    consumer = make_consumer(bootstrap, **{"group.id": group, "enable.auto.commit": False})
    try:
        wanted = [TopicPartition(topic, p) for p in _partitions(bootstrap, topic, timeout_s)]
        try:
            found = consumer.committed(wanted, timeout=timeout_s)
        except KafkaException as exc:
            msg = f"cannot read the committed offsets of group {group} on {topic} ({exc.args[0].str()}); is the broker up?"
            raise SluiceError(msg) from exc
        return {tp.partition: (None if tp.offset == OFFSET_INVALID or tp.offset < 0 else tp.offset) for tp in found}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """Partition -> the end offset the broker reports for `topic` (the offset the next record will get; may undercount on Tansu)."""
    wanted = [(topic, p) for p in _partitions(bootstrap, topic, timeout_s)]
    return {p: end for (_, p), end in partition_ends(bootstrap, wanted, timeout_s).items()}


def partition_ends(bootstrap: str, partitions: list[tuple[str, int]], timeout_s: float) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the end offset the broker reports, all read within `timeout_s` in total.

    Raises SluiceError when the time runs out or the broker does not answer
    for one of them (an unknown partition included).
    """
    consumer = make_consumer(bootstrap, **{"group.id": "sluice-offsets", "enable.auto.commit": False})
    deadline = time.monotonic() + timeout_s
    try:
        ends = {}
        for topic, partition in partitions:
            left = deadline - time.monotonic()
            if left <= 0:
                msg = f"no end offsets for {len(partitions)} partitions within {timeout_s:g} s; is the broker up?"
                raise SluiceError(msg)
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=left)
            except KafkaException as exc:
                msg = f"cannot read the end offset of {topic}[{partition}] ({exc.args[0].str()}); is the broker up?"
                raise SluiceError(msg) from exc
            if high < 0:
                msg = f"the broker reports no end offset for {topic}[{partition}]"
                raise SluiceError(msg)
            ends[(topic, partition)] = high
        return ends
    finally:
        consumer.close()
