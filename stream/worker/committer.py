"""Per partition: commit computed chunks in order, in groups (see stream/worker/app.py)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass

from stream import metrics
from stream.kafka.clients import KafkaDeliveryError
from stream.worker.state import TableState

log = logging.getLogger("sluice.worker")
#: Chunks per partition computed but not yet committed (outputs + state on the broker, offsets acked).
MAX_IN_FLIGHT = 8
#: How long a revoked partition's committer waits for its sends in flight (see Committer.close).
DRAIN_TIMEOUT_S = 30.0
#: Committers of the partitions this worker holds (for the health check).
COMMITTERS: set = set()
#: Seconds between readings of the state size (a RocksDB property per partition).
STATE_COUNT_EVERY_S = 5.0


def crash(stage: int, partition: int) -> None:
    # Crash-only: carrying on could ack (and commit) a chunk whose outputs or
    # state may be missing. Exit without acking; a restarted worker replays
    # from the committed offsets.
    error = sys.exc_info()[1]
    if isinstance(error, KafkaDeliveryError):
        # The broker did not take outputs within the delivery timeout: an outage, not a bug; one line says so.
        log.critical(
            "stage %d partition %d: %s; exiting so that a restarted worker replays the uncommitted batches "
            "(check the broker and the network to it)", stage, partition, error,
        )
    else:
        log.exception("stage %d failed on a chunk of partition %d; exiting", stage, partition)
    logging.shutdown()
    os._exit(70)


_chunk_numbers = itertools.count()


def chunk_number() -> int:
    """A worker-wide increasing number: pending state records which chunk wrote it."""
    return next(_chunk_numbers)


@dataclass
class Chunk:
    number: int
    acks: list  # the Faust events (fetched chunks) whose records are all in this or earlier chunks: acked when committed
    messages: list
    outcome: object
    sent: asyncio.Future  # resolves when the broker has every output
    started: float
    computed: float
    age_ms: float  # of the chunk's first record when computing started
    together: int = 1  # chunks (partitions) computed in the same call


class Committer:
    """Commits one partition's chunks in order, in groups (see stream/worker/app.py)."""

    def __init__(self, stage: int, state: TableState, pusher, partition: int, debug: bool = False):
        self.stage, self.state, self.pusher, self.partition = stage, state, pusher, partition
        self.debug = debug  # log every committed group (SLUICE_DEBUG_BATCHES)
        self.chunks: collections.deque[Chunk] = collections.deque()
        self._added = asyncio.Event()
        self._freed = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())
        COMMITTERS.add(self)

    async def room(self) -> None:
        while len(self.chunks) >= MAX_IN_FLIGHT:
            self._freed.clear()
            await self._freed.wait()

    async def close(self) -> None:
        """Stop committing (the partition was revoked, or the worker stops).

        Uncommitted chunks are replayed by whoever reads the partition next.
        Before that worker may start, what this one already handed to the
        producer must be on the broker: a later stage drops forwarded rows
        whose first-stage offset is below the highest it has seen, so rows
        of ours landing after the new owner's replayed ones would make it
        drop the replayed ones; and state records landing after the new
        owner restored the table would be read by the next restore. So close
        waits (bounded by the delivery timeout) for every send in flight.
        Pending state of the uncommitted chunks goes too: if the partition
        comes back to this worker, its table is restored from the changelog,
        and a leftover pending value would hide what other workers wrote
        meanwhile.
        """
        self._task.cancel()
        COMMITTERS.discard(self)
        in_flight = [chunk.sent for chunk in self.chunks]
        if self.state.in_flight is not None:
            in_flight.append(self.state.in_flight)
        waiting = [f for f in in_flight if not f.done()]
        if waiting:
            _, not_done = await asyncio.wait([asyncio.shield(f) for f in waiting], timeout=DRAIN_TIMEOUT_S)
            if not_done:
                log.warning("stage %d p%d: %d sends still in flight after %.0f s at revocation", self.stage, self.partition, len(not_done), DRAIN_TIMEOUT_S)
        numbers = {chunk.number for chunk in self.chunks}
        self.state.discard(numbers, [key for chunk in self.chunks for key in chunk.outcome.writes])
        self.chunks.clear()
        self._freed.set()

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self._added.set()

    async def _run(self) -> None:
        try:
            while True:
                while not self.chunks:
                    self._added.clear()
                    await self._added.wait()
                await self._commit_group()
        except asyncio.CancelledError:
            raise
        except BaseException:
            crash(self.stage, self.partition)

    async def _commit_group(self) -> None:
        chunks, deliveries = self.chunks, self.state.deliveries
        await deliveries.wait(chunks[0].sent)
        delivered = time.perf_counter()
        group = [chunks[0]]
        for chunk in itertools.islice(chunks, 1, None):
            if not chunk.sent.done() or chunk.sent.exception() is not None:
                break  # a failed delivery is raised when it heads the queue
            group.append(chunk)
        if len(group) == 1:
            writes = group[0].outcome.writes
        else:
            writes = {}
            for chunk in group:
                writes.update(chunk.outcome.writes)
        await self.state.write(self.partition, writes, group[-1].number)
        written = time.perf_counter()
        metrics.STAGE_SECONDS.labels("deliver").observe(delivered - group[0].computed)
        metrics.STAGE_SECONDS.labels("state_write").observe(written - delivered)
        if written - self.state.counted_at > STATE_COUNT_EVERY_S:
            self.state.counted_at = written
            metrics.STATE_ENTITIES.labels(str(self.stage)).set(self.state.entities())
        for chunk in group:
            for event in chunk.acks:
                event.ack()
            chunks.popleft()
        self._freed.set()
        if self.pusher is not None and writes:
            self.pusher.offer(writes, group[0].messages[0].timestamp_ms)
        if self.debug:
            first, last = group[0], group[-1]
            log.warning(
                "stage %d p%d offsets %d-%d chunks %d together %d replayed %d age %.0fms compute %.1fms deliver %.1fms state %.1fms",
                self.stage, self.partition, first.messages[0].offset, last.messages[-1].offset, len(group), first.together,
                sum(c.outcome.replayed for c in group), first.age_ms, (first.computed - first.started) * 1e3,
                (delivered - first.computed) * 1e3, (time.perf_counter() - delivered) * 1e3,
            )
