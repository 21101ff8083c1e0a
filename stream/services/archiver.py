"""`sluice archive`: keep the events archive (stream/lifecycle/archive.py) up with the events topic.

A thin loop: read every partition from where the archive ends, and write a
run of each partition's messages every `flush_s` seconds or
`flush_records` messages. The position comes from the archive's files, so
the reader is in no consumer group and commits nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from stream.health_http import ServiceHealth
from stream.kafka.clients import make_admin, make_consumer, topic_partitions
from stream.lifecycle.archive import EventsArchive

log = logging.getLogger("sluice.archive")
#: The archiver's own metrics (it is not a worker: none of the worker's series).
REGISTRY = CollectorRegistry()
ARCHIVED = Counter("sluice_archived_total", "Messages written to the events archive", ["partition"], registry=REGISTRY)


def archive_topic(
    bootstrap: str,
    topic: str,
    root: str | Path,
    *,
    idle_s: float | None = None,
    stop: threading.Event | None = None,
    flush_s: float = 2.0,
    flush_records: int = 20_000,
    beat: Callable[[], None] = lambda: None,
) -> int:
    """Archive `topic` into `root` until `stop` is set (or nothing arrived for `idle_s`); messages archived."""
    archive = EventsArchive(root)
    resume = archive.next_offsets()
    partitions = topic_partitions(bootstrap, topic)
    consumer = make_consumer(
        bootstrap, **{"group.id": f"sluice-archive-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, resume.get(p, OFFSET_BEGINNING)) for p in range(partitions)])
    log.info("archiving %s (%d partitions) into %s from %s", topic, partitions, root, resume or "the start")
    expected = dict(resume)  # next offset per partition: a message below it is archived already
    pending: dict[int, list] = {}
    archived = held = 0
    flushed = last_message = time.monotonic()

    def flush() -> None:
        nonlocal archived, held, flushed
        for partition, rows in pending.items():
            if rows:
                archive.write(partition, rows)
                archived += len(rows)
                ARCHIVED.labels(str(partition)).inc(len(rows))
        pending.clear()
        held, flushed = 0, time.monotonic()

    try:
        while not (stop is not None and stop.is_set()):
            beat()
            batch = consumer.consume(10_000, timeout=0.2)
            now = time.monotonic()
            for msg in batch:
                if msg.error():
                    log.warning("archive read error on %s: %s", topic, msg.error())
                    continue
                partition, offset = msg.partition(), msg.offset()
                if offset < expected.get(partition, 0):
                    continue
                expected[partition] = offset + 1
                pending.setdefault(partition, []).append((offset, msg.timestamp()[1], msg.key(), msg.value()))
                held += 1
            if batch:
                last_message = now
            if held and (held >= flush_records or now - flushed >= flush_s):
                flush()
            if idle_s is not None and now - last_message > idle_s:
                break
        flush()
    finally:
        consumer.close()
    return archived


def archiver_health(bootstrap: str, port: int, host: str) -> ServiceHealth:
    """/metrics, /livez (the read loop turns) and /readyz (and the broker answers) of `sluice archive`."""
    health = ServiceHealth("archive", make_admin(bootstrap).list_topics, working=lambda: None)
    return health.serve(port, host, REGISTRY)
