"""Ticks: an events partition's clock moved on in the log itself, when a later stage waits on it.

A stage after a repartition hop releases a record once every events
partition has passed its place in the arrival order (stream.pipeline.clock).
A partition with no new events would hold it forever, and a wall-clock
timeout would make features depend on timing. So when a later stage's
partition has held a record for `tick_ms` and some events partition has not
passed it, the worker appends a tick to that events partition: an empty
record keyed `TICK_KEY`, whose broker timestamp moves the partition's clock
on. Whoever reads the partition processes the tick and sends its marks. The
tick is part of the log: a replay, another run and the offline path
(features/arrival.py) see it at the same offset, so the order stays a
function of the log alone.

Ticks are asked for by what waits, not sent on a timer: an idle system
writes none, and a busy one needs none (its partitions move on their own).
Each events partition gets at most one tick per `tick_ms` from a worker.
Other readers of the events topic must skip records keyed `\\x00tick`
(Sluice's own readers do). `SLUICE_CLOCK_TICK_MS=0` turns ticks off; a later
stage then waits up to `SLUICE_CLOCK_WAIT_MS` for an idle partition.
"""

from __future__ import annotations

import logging
import time

from stream import metrics
from stream.kafka.delivery import Deliveries
from stream.pipeline.clock import TICK_KEY

log = logging.getLogger("sluice.worker")


class Ticker:
    """Appends ticks to the events partitions a later stage waits on, at most one per partition per `tick_ms`."""

    def __init__(self, topic: str, deliveries: Deliveries, tick_ms: float):
        self.topic, self.deliveries, self.tick_ms = topic, deliveries, tick_ms
        self.sent: dict[int, float] = {}  # events partition -> when this worker last ticked it (monotonic s)

    def request(self, partitions: list[int]) -> int:
        """Tick those of `partitions` not ticked within `tick_ms`; returns how many ticks went out."""
        now = time.monotonic()
        due = [p for p in partitions if (now - self.sent.get(p, float("-inf"))) * 1000 >= self.tick_ms]
        if due:
            for p in due:
                self.sent[p] = now
            # Not awaited: a tick lost to a broker fault only delays the clock; the next request sends another.
            sent = self.deliveries.send([(self.topic, TICK_KEY, b"", None, p) for p in due])
            sent.add_done_callback(_logged)
            metrics.CLOCK_TICKS.inc(len(due))
        return len(due)


def _logged(sent) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.warning("a tick was not delivered (%s); the next request sends another", sent.exception())
