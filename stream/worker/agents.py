"""The stage agent: binds the engine to a stage's topic, one actor per partition."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from stream import metrics
from stream.pipeline.clock import ArrivalMerge
from stream.pipeline.engine import Engine, Message
from stream.pipeline.outcomes import NO_PLACE
from stream.worker.committer import Committer, crash
from stream.worker.gather import Gather
from stream.worker import timeline
from stream.worker.state import TableState

log = logging.getLogger("sluice.worker")


def stage_agent(
    engine: Engine, stage: int, state: TableState, pusher=None, debug: bool = False, clock_wait_ms: float = 30000.0,
    ticker=None, served=None, app=None,
):
    # `app` (stream.worker.consumer.ChunkingApp): its consumer lets go of what later stages hold in a rebalance.
    # `served` (stream.worker.serve.Served): answers given by /score, compared with the last stage's predictions.
    gather = Gather(engine, stage, state, served if stage == engine.last_stage else None)  # shared by the stage's actors

    async def agent(stream):
        # Each event is a chunk: one partition's records from one fetch. The
        # stage computes it (with other partitions' chunks of the same fetch,
        # reading earlier chunks' pending state) and sends its outputs; the partition's committer waits for them, writes
        # the state and acks. Acks are manual: a chunk is acked after its
        # outputs and its state are on the broker, and after every earlier
        # chunk of the partition. A later stage first puts its records in
        # arrival order (Ordered), so a computation may hold records of
        # several fetches, and a fetch is acked with the computation that
        # releases its last record.
        committer: Committer | None = None
        ordered: Ordered | None = None
        try:
            async for event in stream.noack().events():
                partition = event.message.partition
                if timeline.TIMELINE is not None:
                    timeline.TIMELINE.taken(stage, partition, event.message)
                try:
                    if committer is None:
                        committer = Committer(stage, state, pusher, partition, debug)
                    await committer.room()
                    messages = [Message(k, v, o, t) for k, v, o, t in event.message.records]
                    if stage == 0:
                        committer.add(await gather.compute(partition, messages, [event]))
                        continue
                    if ordered is None:
                        ordered = Ordered(engine, stage, state, gather, committer, partition, clock_wait_ms, ticker, app)
                    await ordered.add(event, messages)
                except asyncio.CancelledError:
                    raise
                except BaseException:
                    crash(stage, partition)
        finally:
            # The partition was revoked or the worker stops: what is not
            # committed is replayed by whoever reads the partition next.
            if ordered is not None:
                ordered.close()
            if committer is not None:
                await committer.close()

    agent.__name__ = f"stage_{stage}"
    return agent


class Ordered:
    """A later stage's partition: records folded in arrival order (stream.pipeline.clock.ArrivalMerge).

    Records are released when every upstream partition has passed them, on
    arrival of a record or a mark, or by a timer once the oldest held one
    has waited `wait_ms`. Each release is numbered on from the partition's
    last computed position (the stream-time history's head), so a replay
    after a crash gives every record the place the first run gave it.
    """

    def __init__(
        self, engine: Engine, stage: int, state: TableState, gather: Gather, committer: Committer, partition: int,
        wait_ms: float, ticker=None, app=None,
    ):
        self.engine, self.stage, self.state, self.gather = engine, stage, state, gather
        self.ticker = ticker  # stream.worker.ticks.Ticker: asks idle events partitions to move on (stage 1 only)
        self.committer, self.partition = committer, partition
        aggregator = engine.aggregators[stage]
        self.aggregator = aggregator
        self.merge = ArrivalMerge(stage, engine.n_sources, wait_ms, aggregator.sources_seen(state, partition))
        self.lock = asyncio.Lock()
        self.timer = asyncio.ensure_future(self._timer())
        self.label = str(stage)
        self.app = app
        if app is not None:
            app.holders.add(self)

    async def add(self, event, messages: list[Message]) -> None:
        async with self.lock:
            if self.app is not None and not self.app.consumer.flow_active:
                # A rebalance is under way: the upstream partitions are stopped, so this could only be held.
                self.app.consumer.forget([event.message])
                return
            self.merge.add(event, messages, time.time() * 1000)
            await self._release()

    async def let_go(self) -> list:
        """Stop holding records (a rebalance); returns their fetches' messages, which must not be acked.

        The upstream partitions that would pass the held records stop with
        the rebalance, so waiting for them to be released would wait out the
        clock's bound and then release them out of order. Not acked, they
        are read again after the rebalance (from the committed offset, which
        stays below them) by whoever then reads this partition.
        """
        async with self.lock:
            tokens = self.merge.let_go()
            metrics.CLOCK_HELD.labels(self.label, str(self.partition)).set(0)
        if tokens:
            log.info("stage %s partition %s: a rebalance; %d held fetches will be read again", self.stage,
                     self.partition, len(tokens))
        return [event.message for event in tokens]

    def close(self) -> None:
        self.timer.cancel()
        if self.app is not None:
            self.app.holders.discard(self)
        metrics.CLOCK_HELD.labels(self.label, str(self.partition)).set(0)

    async def _release(self) -> None:
        waited_on = {q: self.merge.frontier.get(q) for q in self.merge.lagging()}
        out = self.merge.release(time.time() * 1000)
        label = self.label
        if out.duplicates:
            metrics.REPLAYED.labels(label).inc(out.duplicates)
        if out.early:
            metrics.CLOCK_EARLY.labels(label).inc(out.early)
            log.warning(
                "stage %s partition %s released %d records after waiting %.0f ms for upstream partitions that had "
                "not passed them (their last known places: %s); their features may differ from a replay's",
                self.stage, self.partition, out.early, self.merge.wait_ms, waited_on,
            )
        if out.out_of_order:
            metrics.CLOCK_OUT_OF_ORDER.labels(label).inc(out.out_of_order)
        metrics.CLOCK_HELD.labels(label, str(self.partition)).set(len(self.merge))
        if not out.messages:
            for event in out.done:
                event.ack()  # nothing of it is computed: marks, or records forwarded twice
            return
        seq = max(self.aggregator.outputs_done_before(self.state, self.partition), 0)
        messages = []
        for m in out.messages:
            if m.seq == NO_PLACE:
                messages.append(m)  # not a forwarded record: dead-lettered, with no place in the order
            else:
                messages.append(dataclasses.replace(m, seq=seq))
                seq += 1
        await self.committer.room()
        self.committer.add(await self.gather.compute(self.partition, messages, out.done, self.merge.passed()))

    async def _timer(self) -> None:
        """Release what is due by the bound; ask the events partitions a held record waits on for ticks."""
        tick_s = self.ticker.tick_ms / 1000 if self.ticker is not None else None
        try:
            while True:
                due = self.merge.next_deadline_ms()
                delay = self.merge.wait_ms / 1000 if due is None else max(0.0, due / 1000 - time.time()) + 0.001
                if tick_s is not None:
                    delay = min(delay, tick_s / 2)
                await asyncio.sleep(delay)
                now_ms = time.time() * 1000
                oldest = self.merge.oldest_held_ms()
                if tick_s is not None and oldest is not None and now_ms - oldest >= tick_s * 1000:
                    self.ticker.request(self.merge.lagging())
                due = self.merge.next_deadline_ms()
                if due is not None and due <= now_ms:
                    async with self.lock:
                        await self._release()
        except asyncio.CancelledError:
            raise
        except BaseException:
            crash(self.stage, self.partition)
