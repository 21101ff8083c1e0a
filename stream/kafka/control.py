"""A control topic (the `deployments` topic): one key, every change a record, read by every worker.

The topic has one partition and `cleanup.policy=compact`: on Apache Kafka
compaction keeps the latest record (and the history until it runs); the
history is what `sluice deploy history` prints. Tansu does not compact, so
there the whole history stays. Records are `record.to_json()` under the key
`deployment`. What a record means is the caller's: readers are given a
`decode` (e.g. `Deployment.from_json`); a record it refuses with a
SluiceError is skipped and logged, never applied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from features.errors import SluiceError
from stream.kafka.clients import make_admin, make_consumer, make_producer

log = logging.getLogger("sluice.deployments")

KEY = b"deployment"
R = TypeVar("R")


class ControlRecord(Protocol):
    def to_json(self) -> bytes: ...


class ControlTopicError(SluiceError):
    """A record could not be written to a control topic."""


def ensure_control_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> None:
    admin = make_admin(bootstrap)
    if topic in admin.list_topics(timeout=timeout_s).topics:
        return
    spec = NewTopic(topic, num_partitions=1, replication_factor=1, config={"cleanup.policy": "compact"})
    for future in admin.create_topics([spec]).values():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    deadline = time.monotonic() + timeout_s
    while topic not in admin.list_topics(timeout=timeout_s).topics and time.monotonic() < deadline:
        time.sleep(0.1)


def publish(bootstrap: str, topic: str, record: ControlRecord, timeout_s: float = 30.0) -> None:
    """Write one record and wait until the broker has it."""
    ensure_control_topic(bootstrap, topic)
    producer = make_producer(bootstrap)
    errors: list = []
    producer.produce(topic, key=KEY, value=record.to_json(), on_delivery=lambda err, _m: err and errors.append(err))
    left = producer.flush(timeout_s)
    if left or errors:
        msg = f"the record was not written to {topic}: {errors or 'delivery timed out'}; check that the brokers are reachable"
        raise ControlTopicError(msg)


def history(bootstrap: str, topic: str, decode: Callable[[bytes], R], idle_s: float = 1.0, timeout_s: float = 30.0) -> list[R]:
    """Every record on the topic, decoded, oldest first (read until quiet)."""
    follower = Follower(bootstrap, topic, decode)
    seen: list[R] = []
    follower.read(seen.append, idle_s=idle_s, timeout_s=timeout_s)
    follower.close()
    return seen


class Follower:
    """Reads the control topic from its start; `read` hands each decoded record to a callback."""

    def __init__(self, bootstrap: str, topic: str, decode: Callable[[bytes], object]):
        ensure_control_topic(bootstrap, topic)
        self.topic, self.decode = topic, decode
        self.consumer = make_consumer(bootstrap, **{"group.id": "sluice-deployments", "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic, 0, 0)])

    def catch_up(self, apply: Callable, timeout_s: float) -> int:
        """Apply every record the topic held when called, then return (how many): no wait for the topic to go quiet.

        A worker catches up at every start, and `read`'s quiet second cost
        each restart a second before it asked to join the group, while its
        partitions waited (docs/operations.md, "Start-up time"). Records
        written meanwhile are left to `follow`, which reads on from where this
        stopped; so are the rest of the newest batch where a broker's end
        offset counts only that batch's first record (the embedded one's
        does): they are applied moments later, never skipped.
        """
        partition = TopicPartition(self.topic, 0)
        low, end = self.consumer.get_watermark_offsets(partition, timeout=timeout_s)
        count, deadline = 0, time.monotonic() + timeout_s
        while end > low and time.monotonic() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is None:
                position = self.consumer.position([partition])[0].offset
                if position >= end:
                    return count
                continue
            count += self._apply(msg, apply)
            if msg.offset() + 1 >= end:
                return count
        if end > low:
            log.warning("%s: read %d records, not its end (offset %d), within %.0f s", self.topic, count, end, timeout_s)
        return count

    def _apply(self, msg, apply: Callable) -> int:
        if msg.error() or msg.key() != KEY:
            return 0
        try:
            record = self.decode(msg.value())
        except SluiceError as exc:
            log.error("skipping record at %s/0/%d: %s", self.topic, msg.offset(), exc)
            return 0
        apply(record)
        return 1

    def read(self, apply: Callable, idle_s: float, timeout_s: float, stop=None) -> int:
        """Apply records until nothing arrived for `idle_s`, `timeout_s` passed or `stop` is set; returns how many."""
        count, last, deadline = 0, time.monotonic(), time.monotonic() + timeout_s
        while time.monotonic() < deadline and (stop is None or not stop.is_set()):
            msg = self.consumer.poll(0.2)
            if msg is None:
                if time.monotonic() - last > idle_s:
                    break
                continue
            last = time.monotonic()
            count += self._apply(msg, apply)
        return count

    def follow(self, apply: Callable, stop: threading.Event) -> threading.Thread:
        """Keep applying new records in a daemon thread until `stop` is set."""

        def loop() -> None:
            while not stop.is_set():
                self.read(apply, idle_s=3600.0, timeout_s=3600.0, stop=stop)

        thread = threading.Thread(target=loop, name="sluice-deployments", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.consumer.close()
