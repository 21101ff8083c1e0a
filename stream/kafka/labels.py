"""Produce labels (and the label source's clock) where the label join reads them.

A label must land in the partition of its event's prediction-log record:
the worker produces that record keyed by event id with librdkafka's default
partitioner (CRC32 of the key), so the partition is computed here the same
way (`label_join.partition_for`) and given explicitly; a producer in
another language (Java's default is murmur2) would be rerouted by the join,
at the cost of one more hop. Clock records go to every partition.
"""

from __future__ import annotations

import orjson

from features.errors import SluiceError
from stream.kafka.clients import ensure_topics, make_producer, topic_partitions
from stream.lifecycle.label_join import CLOCK_KEY, partition_for
from stream.pipeline.events import iso_ms


class LabelSender:
    def __init__(self, bootstrap: str, topic: str, partitions: int, *, id_field: str, label_field: str,
                 time_field: str = "label_time"):
        ensure_topics(bootstrap, [topic], partitions)
        found = topic_partitions(bootstrap, topic)
        if found != partitions:
            msg = f"labels topic {topic} has {found} partitions, the prediction log {partitions}; they must match (recreate {topic})"
            raise SluiceError(msg)
        self.topic, self.partitions = topic, partitions
        self.id_field, self.label_field, self.time_field = id_field, label_field, time_field
        self.producer = make_producer(bootstrap)
        self.sent = 0

    def send(self, event_id: str, label, label_time_ms: int) -> None:
        key = str(event_id).encode()
        value = orjson.dumps({self.id_field: str(event_id), self.label_field: label, self.time_field: iso_ms(label_time_ms)})
        self._produce(key, value, partition_for(key, self.partitions))
        self.sent += 1

    def clock(self, ms: int) -> None:
        """Tell every partition that no label with an earlier time is still to come."""
        value = orjson.dumps({"clock": iso_ms(ms)})
        for partition in range(self.partitions):
            self._produce(CLOCK_KEY, value, partition)

    def _produce(self, key: bytes, value: bytes, partition: int) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key, partition=partition)
                return
            except BufferError:
                self.producer.poll(0.05)

    def flush(self, timeout_s: float = 30.0) -> None:
        if self.producer.flush(timeout_s):
            msg = f"labels not delivered to {self.topic} within {timeout_s:g} s"
            raise SluiceError(msg)
