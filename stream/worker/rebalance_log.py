"""A timeline of each rebalance in the worker's log (logger `sluice.rebalance`, at info level).

What a rebalance's stall is made of, per worker: the wait for the chunks in
flight before the partitions go (revoke), the join and sync with the group,
the table recovery (changelog records read per partition) and the moment
the streams resume. `sluice chaos` with `SLUICE_LOG_LEVEL=info` leaves these
lines in each worker's log; docs/operations.md ("Rebalances") reads them.
Faust's own recovery lines go quiet after the first assignment (see
stream.worker.app), these do not.
"""

from __future__ import annotations

import logging
import time

import faust

log = logging.getLogger("sluice.rebalance")


class RebalanceLog:
    """Seconds since the rebalance began at each step, and what the recovery read."""

    def __init__(self, app: faust.App):
        self.app = app
        self.started = time.monotonic()
        self.start_offsets: dict = {}

    def _name(self, tp) -> str:
        return f"{tp.topic.removeprefix(self.app.conf.id + '-')}[{tp.partition}]"

    def since(self) -> float:
        return time.monotonic() - self.started

    def began(self) -> None:
        self.started = time.monotonic()
        log.info("rebalance: began (generation %s)", self.app.consumer_generation_id)

    def revoked(self, revoked) -> None:
        log.info("rebalance: +%.2f s revoked %d partitions (chunks in flight done)", self.since(), len(revoked))

    def assigned(self, assigned) -> None:
        recovery = self.app.tables.recovery
        self.start_offsets = {}
        for tp in recovery.active_tps:
            table = recovery.tp_to_table.get(tp)
            persisted = table.data.persisted_offset(tp) if table is not None else None
            self.start_offsets[tp] = -1 if persisted is None else persisted
        streams = sorted(self._name(tp) for tp in assigned if tp.topic in self.app.chunked_topics)
        log.info(
            "rebalance: +%.2f s assigned (generation %s): %s; standby changelog partitions %d",
            self.since(), self.app.consumer_generation_id, ", ".join(streams) or "no stream partitions",
            len(recovery.standby_tps),
        )

    def completed(self) -> None:
        recovery = self.app.tables.recovery
        read = {
            self._name(tp): max(0, (recovery.active_offsets.get(tp) or -1) - start)
            for tp, start in self.start_offsets.items()
        }
        log.info(
            "rebalance: +%.2f s recovered and resumed: %d changelog records read (%s)",
            self.since(), sum(read.values()), ", ".join(f"{k} {v}" for k, v in sorted(read.items()) if v) or "none",
        )


def install(app: faust.App) -> RebalanceLog:
    """Log each rebalance of `app` (the app's `rebalance_log` calls `began`; the signals do the rest)."""
    timeline = RebalanceLog(app)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        timeline.revoked(revoked)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        timeline.assigned(assigned)

    @app.on_rebalance_complete.connect
    async def on_complete(sender, **kwargs) -> None:
        timeline.completed()

    app.rebalance_log = timeline
    return timeline
