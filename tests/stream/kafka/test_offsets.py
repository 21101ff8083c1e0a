"""A group's committed offsets and a topic's end offsets, read from outside the group (embedded broker)."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition

from features.errors import SluiceError
from stream.kafka.clients import ensure_topics, make_consumer, make_producer
from stream.kafka.offsets import committed_offsets, end_offsets


def test_committed_and_end_offsets_per_partition(broker, unique):
    bootstrap = broker.bootstrap_servers
    topic, group = unique("offsets"), unique("group")
    ensure_topics(bootstrap, [topic], 2)
    producer = make_producer(bootstrap)
    for i in range(5):
        producer.produce(topic, b"v%d" % i, partition=0)
    assert producer.flush(10) == 0
    assert committed_offsets(bootstrap, group, topic) == {0: None, 1: None}
    member = make_consumer(bootstrap, **{"group.id": group, "enable.auto.commit": False})
    try:
        member.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
    finally:
        member.close()
    assert committed_offsets(bootstrap, group, topic) == {0: 3, 1: None}
    ends = end_offsets(bootstrap, topic)
    assert set(ends) == {0, 1} and ends[1] == 0
    assert 1 <= ends[0] <= 5  # the embedded broker may report less than the true end (see the module)


def test_a_missing_topic_is_an_error_that_names_it(broker, unique):
    topic = unique("missing")
    with pytest.raises(SluiceError, match=topic):
        committed_offsets(broker.bootstrap_servers, unique("group"), topic)
    with pytest.raises(SluiceError, match=topic):
        end_offsets(broker.bootstrap_servers, topic)
