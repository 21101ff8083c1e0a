"""Produce a group of messages and await exactly their delivery.

`Producer.flush()` waits for every message its producer holds, so a worker
that flushes can only have one batch in flight. `Deliveries.send` instead
returns a future that resolves when the broker has acknowledged every
message of that one group (or fails with the first delivery error), so a
partition can compute its next micro-batch while the previous one's outputs
and state are on their way.

librdkafka reports deliveries from `poll()`; one background (daemon) thread
per producer does nothing else, and hands each finished group back to the
event loop with `call_soon_threadsafe`. Nothing is flushed at exit: a chunk
whose deliveries were not awaited was not acked either, and is replayed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

from stream import metrics
from stream.kafka.clients import KafkaDeliveryError, make_producer

#: How long a group may take before the worker gives up on it (and exits, crash-only).
DELIVERY_TIMEOUT_S = 60.0


log = logging.getLogger("sluice.delivery")
#: Exit status of a worker whose Kafka client hit a fatal error (a supervisor restarts it).
EXIT_FATAL_CLIENT = 71


def _exit(reason: str) -> None:
    # Crash-only: a client that can never deliver again must not leave a
    # process that looks alive and scores nothing.
    log.critical("%s; exiting (status %d) so that a supervisor restarts the worker", reason, EXIT_FATAL_CLIENT)
    logging.shutdown()
    os._exit(EXIT_FATAL_CLIENT)


class _Group:
    __slots__ = ("left", "loop", "future", "error", "last_offset")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop, future: asyncio.Future):
        self.left = n
        self.loop = loop
        self.future = future
        self.error: str | None = None
        self.last_offset = -1  # the highest offset the broker gave one of the group's messages

    def __call__(self, err, msg) -> None:  # librdkafka delivery report, on the poll thread
        if err is not None and self.error is None:
            self.error = f"{msg.topic()}[{msg.partition()}]: {err}"
        elif err is None and msg.offset() > self.last_offset:
            self.last_offset = msg.offset()
        self.left -= 1
        if self.left == 0:
            self.loop.call_soon_threadsafe(_resolve, self.future, self.error, self.last_offset)


def _resolve(future: asyncio.Future, error: str | None, last_offset: int) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(last_offset)
    else:
        metrics.ERRORS.labels("delivery").inc()
        future.set_exception(KafkaDeliveryError(f"could not deliver an output ({error}); the batch will be reprocessed"))


class Deliveries:
    """A confluent-kafka producer whose deliveries resolve per-group futures."""

    def __init__(self, bootstrap: str, on_fatal: Callable[[str], None] | None = None, **config):
        self.on_fatal = on_fatal or _exit
        self.producer = make_producer(bootstrap, error_cb=self._on_error, **config)
        self._thread = threading.Thread(target=self._poll, name="sluice-deliveries", daemon=True)
        self._thread.start()

    def _on_error(self, error) -> None:
        # librdkafka retries transient errors itself; a fatal one (the
        # idempotent producer lost its sequence, e.g. after a broker restart
        # lost the log, or it was fenced) means this producer can never
        # deliver again, and waiting would leave a process that looks alive
        # but scores nothing.
        if error.fatal():
            metrics.ERRORS.labels("kafka_fatal").inc()
            self.on_fatal(f"Kafka producer fatal error: {error.str()} ({error.name()})")

    def _poll(self) -> None:
        poll = self.producer.poll
        try:
            while True:
                poll(0.05)
        except BaseException as exc:  # noqa: BLE001 - no delivery report can arrive any more
            self.on_fatal(f"delivery thread failed: {exc!r}")

    def send(self, messages) -> asyncio.Future:
        """Produce (topic, key, value, headers, partition) tuples; partition None lets the key decide.

        A record the client refuses outright (an unknown partition, over
        its size limit) raises KafkaException here, and the group's future
        never resolves: the caller crashes, and the batch is replayed. The
        engine never hands over such a record (sizes are checked where
        events enter, partitions come from the topics it created).
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not messages:
            future.set_result(None)
            return future
        group = _Group(len(messages), loop, future)
        produce = self.producer.produce
        for topic, key, value, headers, partition in messages:
            while True:
                try:
                    if partition is None:
                        produce(topic, value, key, headers=headers, on_delivery=group)
                    else:
                        produce(topic, value, key, partition=partition, headers=headers, on_delivery=group)
                    break
                except BufferError:
                    # The local queue is full: the poll thread drains it. (Polling
                    # here would run delivery callbacks on two threads.)
                    time.sleep(0.001)
        return future

    async def wait(self, future: asyncio.Future) -> int | None:
        """The highest offset of the group (None for an empty one), once the broker has all of it."""
        try:
            return await asyncio.wait_for(asyncio.shield(future), DELIVERY_TIMEOUT_S)
        except TimeoutError as exc:
            msg = f"outputs not acknowledged within {DELIVERY_TIMEOUT_S:g} s; the batch will be reprocessed"
            raise KafkaDeliveryError(msg) from exc
