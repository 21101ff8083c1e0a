"""The one way Sluice's tools read topics back: from the beginning, every partition.

`read_topic` reads in the caller's thread until a count, a quiet spell or a
deadline; `TopicReader` reads in the background while a system under test
runs, keeping what `keep` returns for each message (by default only the key
and the broker timestamp, so that reading costs almost no CPU on a machine
the system shares). A broker's end offsets are not used to decide when a
topic is read through (Tansu's undercount: its end offset is the newest
batch's first offset plus one): readers stop when nothing more arrives.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import Consumer, TopicPartition

from stream.kafka.clients import make_consumer, topic_partitions


def assigned_consumer(bootstrap: str, topic: str, partitions: int | None = None, **extra) -> Consumer:
    """A consumer of every partition of `topic` from offset 0, in no consumer group's way (no commits)."""
    consumer = make_consumer(
        bootstrap, **{"group.id": f"sluice-reader-{uuid.uuid4().hex}", "enable.auto.commit": False, **extra}
    )
    n = partitions if partitions is not None else topic_partitions(bootstrap, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(n)])
    return consumer


def read_topic(
    bootstrap: str, topic: str, *, expect: int | None = None, timeout_s: float = 30.0, idle_s: float = 3.0, stop=None,
) -> Iterator:
    """Yield every message of `topic` from the beginning.

    Stops after `expect` messages, once nothing arrived for `idle_s`, at `timeout_s`, or when `stop` is set.
    """
    consumer = assigned_consumer(bootstrap, topic)
    try:
        seen, deadline, last = 0, time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() < deadline:
            if (expect is not None and seen >= expect) or (stop is not None and stop.is_set()):
                return
            batch = consumer.consume(10000, timeout=0.2)
            if not batch:
                if time.monotonic() - last > idle_s:
                    return
                continue
            last = time.monotonic()
            for msg in batch:
                if msg.error():
                    continue
                seen += 1
                yield msg
    finally:
        consumer.close()


def key_and_timestamp(msg) -> tuple[bytes, int]:
    return msg.key(), msg.timestamp()[1]


class TopicReader(threading.Thread):
    """Reads a topic in the background; `records` holds `keep(message)` for each message, in arrival order."""

    def __init__(
        self, bootstrap: str, topic: str, *, partitions: int | None = None, keep: Callable = key_and_timestamp,
        poll_s: float = 0.1, one_at_a_time: bool = False, fetch_wait_ms: int = 50,
    ):
        super().__init__(name=f"reader-{topic}", daemon=True)
        self.consumer = assigned_consumer(bootstrap, topic, partitions, **{"fetch.wait.max.ms": fetch_wait_ms})
        self.keep, self.poll_s = keep, poll_s
        # `consume(n, timeout)` holds what arrived until n messages or the
        # timeout: fine for broker timestamps, wrong where `keep` notes the
        # moment a message is received (then read one message per poll).
        self.one_at_a_time = one_at_a_time
        self.records: list = []
        self._halt = threading.Event()

    def run(self) -> None:
        keep, records, consumer = self.keep, self.records, self.consumer
        try:
            while not self._halt.is_set():
                if self.one_at_a_time:
                    msg = consumer.poll(self.poll_s)
                    if msg is not None and not msg.error():
                        records.append(keep(msg))
                    continue
                for msg in consumer.consume(10_000, timeout=self.poll_s):
                    if not msg.error():
                        records.append(keep(msg))
        finally:
            self.consumer.close()

    def wait_for(self, count: int, *, idle_s: float, limit_s: float) -> bool:
        """Until `count` records were read; False after `idle_s` without progress or `limit_s` overall."""
        deadline, last_n, last_t = time.monotonic() + limit_s, -1, time.monotonic()
        while len(self.records) < count:
            now = time.monotonic()
            if len(self.records) != last_n:
                last_n, last_t = len(self.records), now
            if now - last_t > idle_s or now > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)
