"""Ticks: an idle events partition's clock moved on in the log itself.

A stage after a repartition hop releases a record once every events
partition has passed its place in the arrival order (stream.pipeline.clock).
A partition with no new events would hold it forever, and a wall-clock
timeout would make features depend on timing. So the worker reading an
events partition that has brought nothing for `tick_ms` appends a tick to
it: an empty record keyed `TICK_KEY`, whose broker timestamp moves the
partition's clock on. The tick is part of the log: a replay, another run and
the offline path (features/arrival.py) see it at the same offset, so the
order stays a function of the log alone.

A tick costs one small record per idle partition per `tick_ms`. Other
readers of the events topic must skip records keyed `\\x00tick` (Sluice's
own readers do). `SLUICE_CLOCK_TICK_MS=0` turns ticks off; a later stage
then waits up to `SLUICE_CLOCK_WAIT_MS` for an idle partition.
"""

from __future__ import annotations

import logging
import time

from stream import metrics
from stream.kafka.delivery import Deliveries
from stream.pipeline.clock import TICK_KEY

log = logging.getLogger("sluice.worker")


class Ticker:
    """Appends a tick to each assigned events partition that has brought nothing for `tick_ms`."""

    def __init__(self, topic: str, deliveries: Deliveries, tick_ms: float):
        self.topic, self.deliveries, self.tick_ms = topic, deliveries, tick_ms
        self.last_seen: dict[int, float] = {}  # events partition -> when a chunk of it last came (monotonic s)
        self.counter = metrics.CLOCK_TICKS

    def seen(self, partition: int) -> None:
        self.last_seen[partition] = time.monotonic()

    def tick(self, assigned: list[int]) -> int:
        """Append a tick to every partition in `assigned` idle for `tick_ms`; returns how many."""
        now = time.monotonic()
        idle = []
        for partition in assigned:
            last = self.last_seen.setdefault(partition, now)  # newly assigned: give it a period
            if (now - last) * 1000 >= self.tick_ms:
                idle.append(partition)
                self.last_seen[partition] = now  # one tick per period; its own arrival also counts
        if idle:
            # Not awaited: a tick lost to a broker fault only delays the clock; the next period sends another.
            sent = self.deliveries.send([(self.topic, TICK_KEY, b"", None, p) for p in idle])
            sent.add_done_callback(_logged)
            self.counter.inc(len(idle))
        return len(idle)


def _logged(sent) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.warning("a tick was not delivered (%s); the next period sends another", sent.exception())
