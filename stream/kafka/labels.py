"""Produce records to chosen partitions of one topic (the labels topic): a thin producer, no label semantics.

The caller decides each record's partition: the label join needs a label in
the partition of its prediction, which the worker's producer chose with
librdkafka's default partitioner; what a label or a clock record looks
like, and which partition it belongs to, is decided above this module
(stream.worker.labels.LabelSender).
"""

from __future__ import annotations

from features.errors import SluiceError
from stream.kafka.clients import ensure_topics, make_producer, topic_partitions


class PartitionSender:
    """Records to explicit partitions of `topic`, which must have exactly `partitions` partitions."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        ensure_topics(bootstrap, [topic], partitions)
        found = topic_partitions(bootstrap, topic)
        if found != partitions:
            msg = f"topic {topic} has {found} partitions, the prediction log {partitions}; they must match (recreate {topic})"
            raise SluiceError(msg)
        self.topic, self.partitions = topic, partitions
        self.producer = make_producer(bootstrap)

    def produce(self, key: bytes, value: bytes, partition: int) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key, partition=partition)
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                self.producer.poll(0.05)

    def flush(self, timeout_s: float = 30.0) -> None:
        if self.producer.flush(timeout_s):
            msg = f"records not delivered to {self.topic} within {timeout_s:g} s; check that the brokers are reachable"
            raise SluiceError(msg)
