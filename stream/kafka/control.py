"""The `deployments` control topic: one key, every change a record, read by every worker.

The topic has one partition and `cleanup.policy=compact`: on Apache Kafka
compaction keeps the latest deployment (and the history until it runs);
the history is what `sluice deploy history` prints. Tansu does not compact,
so there the whole history stays. Records are `Deployment.to_json()` under
the key `deployment`; a record that is not a deployment is skipped and
logged, never applied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from stream.kafka.clients import make_admin, make_consumer, make_producer
from stream.serving.deployment import Deployment, DeploymentError

log = logging.getLogger("sluice.deployments")

KEY = b"deployment"


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


def publish(bootstrap: str, topic: str, deployment: Deployment, timeout_s: float = 30.0) -> None:
    """Write one deployment record and wait until the broker has it."""
    ensure_control_topic(bootstrap, topic)
    producer = make_producer(bootstrap)
    errors: list = []
    producer.produce(topic, key=KEY, value=deployment.to_json(), on_delivery=lambda err, _m: err and errors.append(err))
    left = producer.flush(timeout_s)
    if left or errors:
        msg = f"the deployment record was not written to {topic}: {errors or 'delivery timed out'}"
        raise DeploymentError(msg)


def history(bootstrap: str, topic: str, idle_s: float = 1.0, timeout_s: float = 30.0) -> list[Deployment]:
    """Every deployment record on the topic, oldest first (read until quiet)."""
    follower = Follower(bootstrap, topic)
    seen: list[Deployment] = []
    follower.read(seen.append, idle_s=idle_s, timeout_s=timeout_s)
    follower.close()
    return seen


class Follower:
    """Reads the control topic from its start; `read` hands each deployment record to a callback."""

    def __init__(self, bootstrap: str, topic: str):
        ensure_control_topic(bootstrap, topic)
        self.topic = topic
        self.consumer = make_consumer(bootstrap, **{"group.id": "sluice-deployments", "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic, 0, 0)])

    def read(self, apply: Callable[[Deployment], None], idle_s: float, timeout_s: float, stop=None) -> int:
        """Apply records until nothing arrived for `idle_s`, `timeout_s` passed or `stop` is set; returns how many."""
        count, last, deadline = 0, time.monotonic(), time.monotonic() + timeout_s
        while time.monotonic() < deadline and (stop is None or not stop.is_set()):
            msg = self.consumer.poll(0.2)
            if msg is None:
                if time.monotonic() - last > idle_s:
                    break
                continue
            last = time.monotonic()
            if msg.error() or msg.key() != KEY:
                continue
            try:
                record = Deployment.from_json(msg.value())
            except DeploymentError as exc:
                log.error("skipping record at %s/0/%d: %s", self.topic, msg.offset(), exc)
                continue
            apply(record)
            count += 1
        return count

    def follow(self, apply: Callable[[Deployment], None], stop: threading.Event) -> threading.Thread:
        """Keep applying new records in a daemon thread until `stop` is set."""

        def loop() -> None:
            while not stop.is_set():
                self.read(apply, idle_s=3600.0, timeout_s=3600.0, stop=stop)

        thread = threading.Thread(target=loop, name="sluice-deployments", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.consumer.close()
