"""A Faust transport that delivers each fetched run of records as one message.

Faust hands every Kafka message to its streams one by one, creating several
asyncio futures per message (about 25 µs); that alone caps a worker near
12,000 events/s. Sluice works in micro-batches anyway, so this consumer
subclass turns all the records one fetch returned for a partition into a
single `ChunkMessage`. Everything else stays Faust's: group membership,
rebalancing, table recovery and offset commits.

Only the agents' input topics are chunked: table changelogs, which Faust
reads itself to restore state, still arrive record by record.

Commit semantics are kept exact: every chunk's offset span is recorded in a
`Ledger` when it is fetched and marked done when it is acked (after its
records and every earlier chunk of its partition are processed, see
stream/worker/committer.py). The offset committed is the end of the run of
done spans from the head, so it never passes a chunk that was fetched and
lost on the way to the agent; see `ChunkingConsumer._new_offset` for why
Faust's own accounting (acked offsets plus "gaps") is not used for them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import faust
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import TP, ConsumerMessage

from stream.worker.ends import mark_ends
from stream.worker.ledger import Ledger, Span
from stream.worker.membership import leave_for_predecessor
from stream.worker.prefetch import fetch_ahead_once_started

log = logging.getLogger("sluice.worker")


class ChunkMessage(ConsumerMessage):
    """One partition's fetched records: `records` is a list of (key, value, offset, timestamp_ms)."""

    records: list[tuple[bytes | None, bytes, int, int]]
    span: Span | None = None  # its offsets in the consumer's ledger; done when acked
    fetched_ms: float = 0.0  # when getmany handed it over (stream.worker.timeline)


class ShortFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust fixes the consumer's fetch wait at 1,500 ms; a broker that
    answers late when nothing is there adds part of it to every event's
    latency (Tansu looks again after half the wait, then half of what is
    left, and answers at the first look that finds data: a record that
    arrives just after a look waits up to half the wait). Sluice waits at
    most the app's `fetch_max_wait_ms` instead (default 50). Nor may it be
    too short on Tansu: a look lists every batch the partition holds and
    stops listing when the wait runs out, so a partition holding more
    batches than can be listed in the wait is never read at its end
    (docs/performance.md, "Why the embedded broker's cost grows").
    Shorter is not always better: every chunk costs a fixed ~0.5 ms of
    compute and a few broker round trips, so tiny chunks cost throughput.
    Measured with grouped commits, one worker, event-to-prediction p50 / p99
    at 1,000 events/s: 5 ms wait 54 / 115 ms; 20 ms 50 / 94; 50 ms 47 / 85;
    100 ms 57 / 103; 200 ms 65 / 142 (at 5,000/s every wait gave p50
    160-250 ms, within run-to-run noise).

    With the app's `prefetch_wait_ms` above 0, the consumer also fetches
    ahead: see stream/worker/prefetch.py."""

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        app = self.consumer.app
        # Read by AIOKafkaConsumer.start(); the app carries the worker's setting.
        consumer._fetch_max_wait_ms = app.fetch_max_wait_ms
        if app.prefetch_wait_ms > 0:
            fetch_ahead_once_started(consumer, app.prefetch_wait_ms)
        return consumer

    async def subscribe(self, topics) -> None:
        """Subscribe; the first time, drop this data directory's killed predecessor from the group first.

        Faust subscribes again when its topics change; the predecessor's id
        (read at process start) is handed out once, so no later call sends a
        LeaveGroup, least of all for this worker's own id
        (stream/worker/membership.py).
        """
        topics = set(topics)
        member_file = self.consumer.app.member_file
        member_id = member_file.take_predecessor() if member_file is not None else None
        if member_id:
            await self.call_thread(self._leave_for, member_id)
        await super().subscribe(topics)

    async def _leave_for(self, member_id: str) -> None:
        await leave_for_predecessor(self._ensure_consumer()._coordinator, member_id)

    async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
        member_file = self.consumer.app.member_file
        if member_file is not None:  # what a restart on this data directory sends a LeaveGroup for
            member_file.remember(self._ensure_consumer()._coordinator.member_id)
        await super().on_partitions_assigned(assigned, generation_id)

    def verify_event_path(self, now: float, tp: TP):
        """Faust's livelock check, skipping a partition that has no position yet.

        The check reads each assigned partition's position, which aiokafka
        asserts is set; a partition being reset to its start (see
        `seek_to_committed`) has none until its next fetch. The check runs
        every 2.5 commit intervals (1.25 s here), and caught such a moment
        twice in one CI run: the assertion ended the worker (an idle
        partition, never committed, is reset at every seek).
        """
        try:
            state = self._ensure_consumer()._fetcher._subscriptions.subscription.assignment.state_value(
                TopicPartition(tp.topic, tp.partition))
        except AttributeError:  # no assignment (yet): Faust's own check copes with that
            state = None
        if state is not None and not state.has_valid_position:
            return None
        return super().verify_event_path(now, tp)

    async def seek_to_committed(self):
        """Seek to committed offsets, and input partitions without one back to their start.

        Faust drops the records of a fetch that a rebalance interrupts and
        relies on this seek to read them again. aiokafka seeks only where an
        offset was committed (`if offset and offset > 0`), so a partition not
        yet committed in a new group keeps its advanced position and those
        records are never read: two workers joining a new group together lost
        about half the stream, 1 run in 4. With `auto_offset_reset` earliest,
        no committed offset means "from the start", which this seek restores.
        """
        committed = await super().seek_to_committed()
        app = self.consumer.app
        if app.conf.consumer_auto_offset_reset == "earliest":
            fresh = [tp for tp, offset in committed.items() if not offset and tp.topic in app.chunked_topics]
            if fresh:
                await self.seek_to_beginning(*fresh)
        return committed


class ChunkingConsumer(faust_aiokafka.Consumer):
    #: A stream record was handed over since the last seek to the committed offsets.
    _delivered_since_seek: bool = False
    #: Seek again before the next fetch (see resume_flow, and getmany for fetches thrown away).
    _seek_before_fetch: bool = False
    #: Seeks so far: records fetched across a seek are thrown away (see getmany).
    _seeks: int = 0
    #: Seeks to the committed offsets under way (Faust's and getmany's may overlap): records fetched meanwhile go too.
    _seeking: int = 0

    def _new_consumer_thread(self):
        return ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_empty(self) -> None:
        """Wait for the chunks being computed, not for those a later stage holds in arrival order.

        A rebalance (and a stop) waits here for every delivered chunk to be
        acked. A later stage's arrival merge acks a chunk only once every
        upstream partition has passed its records (stream/pipeline/clock.py),
        and the rebalance stops the upstream partitions too: the wait lasted
        the clock's whole bound (30 s, measured in a standby takeover), after
        which the records went out of arrival order and features differed
        from a replay's. The holders let go of such chunks instead; never
        acked, they are read again after the rebalance's seek.
        """
        for holder in list(self.app.holders):
            self.forget(await holder.let_go())
        await super().wait_empty()

    def forget(self, messages) -> None:
        """Stop waiting for `messages` to be acked: they are dropped, and read again after the next seek."""
        for message in messages:
            self._unacked_messages.discard(message)

    async def highwaters(self, *partitions: TP):
        """End offsets; exact ones (see `mark_ends`) for the app's marked topics (table changelogs)."""
        marked = [tp for tp in partitions if tp.topic in self.app.marked_topics]
        result = dict(await super().highwaters(*[tp for tp in partitions if tp not in marked]))
        if marked:
            loop = asyncio.get_running_loop()
            result.update(await loop.run_in_executor(None, mark_ends, self.app.bootstrap_servers, marked))
        return result

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic in self.app.chunked_topics:
            return  # the ledger accounts for every offset (see _new_offset)
        await super()._add_gap(tp, offset_from, offset_to)

    @functools.cached_property
    def ledger(self) -> Ledger:
        return Ledger()

    def ack(self, message) -> bool:
        span = getattr(message, "span", None)
        if span is not None:
            span.done = True
        return super().ack(message)

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit: for a chunked topic, the end of the head run of done chunks.

        Faust commits the end of the first consecutive run of acked offsets,
        counting offsets it registered as a "gap" (never delivered) as acked.
        Its fetch loop registers, for every message, the offsets from the
        previous message's + 1 through the message's own as a gap, so a
        chunk's last offset is both in a gap and acked: the sorted list holds
        it twice, which ends the run there. Each commit then moved past one
        chunk only (one every `broker_commit_interval`), so the committed
        offset fell further behind for as long as records came faster
        (measured: 300 events/s, committed ~8 records/s per partition, lag
        growing without bound, and a restart re-reading all of it). Worse,
        a gap also covers a chunk that was fetched and then lost (a stream
        buffer emptied by a rebalance): once a later chunk was acked, the
        lost one counted as done.

        The ledger knows every fetched chunk's span, so a lost chunk holds
        the committed offset below it until a seek reads it again.
        """
        if tp.topic not in self.app.chunked_topics:
            return super()._new_offset(tp)
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        self._gap.pop(tp, None)
        return self.ledger.progress(tp, self._committed_offset[tp])

    async def seek(self, partition: TP, offset: int) -> None:
        if partition.topic in self.app.chunked_topics:  # (table recovery seeks changelogs: not counted)
            self._seeks += 1
            self.ledger.reset(partition)
        await super().seek(partition, offset)

    def stop_flow(self) -> None:
        self._delivered_since_seek = False  # a rebalance: its own seek rewinds what came before
        super().stop_flow()

    async def perform_seek(self) -> None:
        """Seek to the committed offsets; a fetch returning while this runs is thrown away and asks for another.

        Faust seeks at the end of a rebalance while its fetch loop runs, one
        partition after another. A fetch that returns meanwhile may hold
        records from after a partition's new position, which it has moved
        past: thrown away (see getmany), they are read again only by a seek
        after this one. Clearing that request at the end of this seek (with
        the thrown-away span, forgotten by the ledger) let the next fetch go
        on after them and the committed offset pass them, with no outcome
        (tests/stream/worker/test_consumer_accounting.py, part 4).
        """
        self._delivered_since_seek = False
        self._seek_before_fetch = False  # this is the seek asked for; a fetch thrown away while it runs asks again
        self._seeking += 1
        self._seeks += 1  # a fetch returning while the seek runs may hold records from either side of it
        self.ledger.reset()
        try:
            await super().perform_seek()
        except BaseException:
            self._seek_before_fetch = True  # not done: the next fetch tries again
            raise
        finally:
            self._seeking -= 1
        self._seeks += 1
        self.ledger.reset()

    def resume_flow(self) -> None:
        """Resume fetching; seek to the committed offsets first if a stream buffer may have lost records.

        At the end of a rebalance Faust resumes the stream partitions, seeks
        them to the committed offsets (`perform_seek`), and only then
        resumes flow control, which empties every stream's buffer; then it
        calls this. A fetch that lands between the seek and the emptying is
        thrown away while the position has moved past it, so its records
        were never processed: one whole chunk (batch_max events) of a
        clean start had no prediction, ever. Seeking again here reads them
        again (chunks an actor already took are replayed, which the engine
        recognises).
        """
        if self._delivered_since_seek:
            self._seek_before_fetch = True
        super().resume_flow()

    async def getmany(self, timeout: float):
        """One fetch: a `ChunkMessage` per chunked partition, records one by one for other topics.

        Records of a chunked topic that are fetched and not handed over (the
        flow stopped, the generation changed, the partition was paused, or a
        seek ran while the fetch was out, so they may come from either side
        of it) have moved the position past them: they are recorded in the
        ledger as never done, and the consumer seeks to the committed offsets
        before its next fetch, which reads them again. Other topics' records
        follow Faust's rule (dropped only when the flow stops or the
        generation changes): a table's recovery seeks its changelogs as it
        goes, and throwing their records away lost window state.
        """
        if not self.flow_active:
            await self.wait(self.can_resume_flow)  # as _wait_next_records does: a seek asked for comes after it
        if self._seek_before_fetch:
            if not self.assignment():  # nothing to read again (and aiokafka refuses to seek no partitions)
                self._seek_before_fetch = False
            else:
                try:
                    await self.perform_seek()
                except Exception as exc:  # noqa: BLE001 - fetching before the seek could skip records: retry
                    log.warning("could not seek to the committed offsets (%r); trying again in 1 s", exc)
                    await asyncio.sleep(1.0)
                    return
        seeks = self._seeks
        records, active = await self._wait_next_records(timeout)
        if records is None or self.should_stop:
            return
        generation_id = self.app.consumer_generation_id
        chunked = self.app.chunked_topics
        stopped = False
        for tp, batch in records.items():
            if not batch:
                continue
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                stopped = True  # this partition's records and every later one's go (as in Faust)
            is_chunked = tp.topic in chunked
            if (
                stopped
                or not (active is None or tp in active or tp in self._buffered_partitions)
                or (is_chunked and (self._seeks != seeks or self._seeking))
            ):
                if is_chunked:
                    self.ledger.fetched(tp, batch[0].offset, batch[-1].offset)  # never done
                    self._seek_before_fetch = True
                    if self._seeks != seeks or self._seeking:
                        log.info("%s offsets %d-%d fetched across a seek (%s): thrown away, read again after the next seek",
                                 tp, batch[0].offset, batch[-1].offset,
                                 "returned after it" if not self._seeking
                                 else "began before it, returned while it ran" if self._seeks != seeks
                                 else "began and returned while it ran")
                continue
            if not self._is_changelog_tp(tp):
                self._delivered_since_seek = True
            if not is_chunked:
                for record in batch:
                    yield tp, self._to_message(tp, record)
                continue
            last = batch[-1]
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            message = ChunkMessage(
                tp.topic,
                tp.partition,
                last.offset,
                (last.timestamp or 0) / 1000.0,
                last.timestamp_type,
                None,
                None,
                b"",
                None,
                0,
                sum(r.serialized_value_size for r in batch),
                tp,
                generation_id=generation_id,
            )
            message.records = [(r.key, r.value, r.offset, r.timestamp or 0) for r in batch]
            message.span = self.ledger.fetched(tp, batch[0].offset, last.offset)
            message.fetched_ms = time.time() * 1000
            yield tp, message


class ChunkingTransport(faust_aiokafka.Transport):
    Consumer = ChunkingConsumer


class ChunkingApp(faust.App):
    """A Faust app whose consumer delivers chunks for `chunked_topics` (producers are unchanged)."""

    chunked_topics: frozenset[str] = frozenset()
    marked_topics: frozenset[str] = frozenset()  # read to an exact end on recovery (see mark_ends)
    bootstrap_servers: str = ""
    fetch_max_wait_ms: int = 50  # SLUICE_FETCH_MAX_WAIT_MS (see ShortFetchConsumerThread)
    prefetch_wait_ms: int = 0  # SLUICE_PREFETCH_WAIT_MS: above 0, fetch ahead (stream/worker/prefetch.py)
    rebalance_log = None  # stream.worker.rebalance_log.RebalanceLog, told when a rebalance begins
    member_file = None  # stream.worker.membership.MemberFile: the group member ids of this data directory

    def on_rebalance_start(self) -> None:
        super().on_rebalance_start()
        if self.rebalance_log is not None:
            self.rebalance_log.began()

    def _new_transport(self):
        return ChunkingTransport(self.conf.broker_consumer, self)

    @functools.cached_property
    def holders(self) -> set:
        """What holds chunks unacked while it waits on other partitions (stream.worker.agents.Ordered): let go
        in a rebalance (see ChunkingConsumer.wait_empty)."""
        return set()
