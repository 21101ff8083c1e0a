"""Liveness and readiness as the orchestrator sees them (/livez, /readyz, sluice_ready)."""

from __future__ import annotations

import time

from stream import metrics

#: How often the event loop reports that it is alive and readiness is re-evaluated.
HEALTH_INTERVAL_S = 1.0
#: A partition whose oldest uncommitted chunk waits this long for the broker
#: makes the worker not ready (it exits once the delivery timeout is reached).
STALL_S = 15.0


class Health:
    """Liveness and readiness as the orchestrator sees them (/livez, /readyz, sluice_ready).

    Alive: the event loop runs this check every HEALTH_INTERVAL_S (a blocked
    loop stops the beats). Ready: the worker holds its partitions (no
    rebalance in progress), the broker answered its latest look (see
    stream.worker.broker_watch: an idle worker's clients would not notice a
    dead broker) and no partition has waited more than STALL_S for the
    broker to take its outputs or state.
    """

    def __init__(self, committers: set, watch=None):
        self.assigned = False
        self.committers = committers  # of the partitions this worker holds
        self.watch = watch  # a BrokerWatch, or None to trust the assignment alone

    def update(self) -> None:
        beat = getattr(metrics, "beat", None)
        if beat is not None:
            beat()
        now = time.perf_counter()
        stalled = [c for c in self.committers if c.chunks and now - c.chunks[0].computed > STALL_S]
        answering = self.watch is None or self.watch.answering()
        if not self.assigned:
            why = "a rebalance is in progress (partitions not assigned)"
        elif not answering:
            why = "the broker does not answer"
        elif stalled:
            why = f"{len(stalled)} partition(s) waited over {STALL_S:.0f} s for the broker to take their outputs or state"
        else:
            why = ""
        metrics.set_ready(not why, why)
