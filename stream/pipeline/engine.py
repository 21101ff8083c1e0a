"""One micro-batch through one stage: validate, aggregate, score, shape the outputs.

`Engine` knows nothing of Faust; the Faust agent (stream/worker/app.py) hands it
messages and a state mapping, produces what it returns, waits for delivery,
and only then stores the returned state. Tests and the benchmark drive the
same class directly.

A micro-batch goes through steps, each a function or small object that
takes its inputs and returns what it produced as a named record: decode and
validate (`decode.Decoder`: events and dead letters), the windows
(`features.online.StageAggregator`: features and state writes), the sift
after them (`windowed.sift`: late copies, replays, the events that go on),
then forward (`handoff.forward`: rows for the next stage) or score
(`predict.Predictor`: batch features, scoring, rules, predictions and log
records). The engine composes them into one `BatchOutcome` per partition.

Every input message gets exactly one outcome, and none can raise: a
prediction (with its log record), a late record or a dead letter. The
original bytes of an event travel with it and are spliced, never
re-serialized, into what carries them (the forwarded record, the prediction
log, the late and dead-letter copies): what a producer wrote cannot make an
output fail. Whether an event's outputs fit `max_message_bytes` is decided
where it enters, before it enters any window (see `Engine.outputs_fit`); an output
that could not be written all the same is replaced by a dead letter for its
event, never produced.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import orjson

from features.history import STREAM_TIME_KEY, append_history, history_before
from features.online import StageAggregator
from features.spec import FeaturePlan
from stream import metrics
from stream.pipeline.clock import first_stage_clock, marks
from stream.pipeline.copies import Copies
from stream.pipeline.decode import Decoded, Decoder
from stream.pipeline.events import MAX_KEY_BYTES, EventValidator
from stream.pipeline.handoff import forward
from stream.pipeline.outcomes import BatchOutcome, Message, Output
from stream.pipeline.predict import Part, Predictor
from stream.pipeline.records import PredictionRecords
from stream.pipeline.vectors import BatchFeatures
from stream.pipeline.windowed import Windowed, sift
from stream.serving.scorer import Serving

__all__ = ["BatchOutcome", "Engine", "Message", "Output"]


class Engine:
    """The computation of every stage, for one FeaturePlan and one deployment.

    What serves comes as `serving` (or as a lone `model`), batch features
    through `batch` (or a bare `batch_cache`); both may be swapped between
    batches (`engine.serving = ...`): each batch reads them once.
    """

    def __init__(
        self,
        plan: FeaturePlan,
        topics,  # stream.kafka.topics.AppTopics: every name by role (topics["late"]), and repartition(stage)
        app_id: str,
        model=None,
        batch_cache=None,
        batch_max: int = 2000,
        n_sources: int = 0,
        max_message_bytes: int = 1_000_000,
        max_event_ahead_ms: int = 3_600_000,
        max_abs_value: float = 1e15,
        serving: Serving | None = None,
        batch: BatchFeatures | None = None,
    ):
        self.plan = plan
        self.max_message_bytes = max_message_bytes
        self.n_sources = n_sources  # partitions of the events topic
        self.batch_max = batch_max
        self.topics = topics
        self.app_id = app_id
        if serving is None and model is not None:
            serving = Serving.alone(model)
        self.serving = serving
        if batch is None and batch_cache is not None:
            batch = BatchFeatures(batch_cache)
        self.batch = batch
        self.id_field = plan.schema.event_id
        self.stages = plan.stages()
        self.aggregators = [StageAggregator(plan, s) for s in range(len(self.stages))]
        key_fields = tuple(dict.fromkeys(k for v in plan.stream_views for k in v.join_keys))
        self.entity_fields = tuple(dict.fromkeys(key_fields + tuple(k for v in plan.batch_views for k in v.join_keys)))
        self.repartition_topics = [topics.repartition(s) for s in range(len(self.stages))]
        self.stream_names = [f"{v.name}__{a.name}" for v in plan.stream_views for a in v.aggs]
        # Names each stage adds to the vector, cumulated: what a forwarded row carries.
        self.stage_names: list[list[str]] = []
        so_far: list[str] = []
        for stage in range(len(self.stages)):
            so_far = so_far + [
                f"{v.name}__{a.name}" for v in plan.stream_views if plan.stage_of(v) == stage for a in v.aggs
            ]
            self.stage_names.append(so_far)
        self.records = PredictionRecords(plan, self.entity_fields, len(self.stages), app_id)
        self._fixed_overhead = self.records.fixed_overhead()
        # An event's echoed values (id twice, entity keys) at their longest.
        self._largest_overhead = self._fixed_overhead + (2 * len(self.entity_fields) + 4) * (2 * MAX_KEY_BYTES + 2)
        self.validator = EventValidator(
            plan.schema,
            self.entity_fields,
            partition_key=plan.partition_key,
            max_message_bytes=max_message_bytes,
            max_event_ahead_ms=max_event_ahead_ms,
            max_abs_value=max_abs_value,
            outputs_fit=self.outputs_fit,
        )
        self.copies = Copies(topics, app_id, plan.partition_key, max_message_bytes)
        self.decoder = Decoder(plan, self.validator, self.copies, self.stage_names, self.repartition_topics)
        self.predictor = Predictor(plan, self.records, self.copies)
        # Each stage's metric children, looked up once (a `labels` call costs microseconds, per partition and call).
        self._counted = [(metrics.EVENTS_IN.labels(str(s)), metrics.BATCH_SIZE.labels(str(s))) for s in range(len(self.stages))]
        self._feature_seconds = metrics.STAGE_SECONDS.labels("features")

    @property
    def last_stage(self) -> int:
        return len(self.stages) - 1

    def outputs_fit(self, raw: bytes, event: dict) -> str | None:
        """Why a valid event's outputs would not fit the message limit, or None (deterministic: sizes only)."""
        limit = self.max_message_bytes
        if len(raw) + self._largest_overhead <= limit:
            return None
        schema = self.plan.schema
        event_id = event[schema.event_id]
        echoed = [event_id, *(event[k] for k in self.entity_fields)]
        size = len(raw) + self._fixed_overhead + len(orjson.dumps(echoed)) + len(str(event_id).encode())
        if size <= limit:
            return None
        return (
            f"too large: its prediction log record, which carries the event ({len(raw):,} bytes), "
            f"could be {size:,} bytes; the limit is {limit:,} (SLUICE_MAX_MESSAGE_BYTES)"
        )

    # -- the batch -----------------------------------------------------------

    def process(self, stage: int, partition: int, messages: list[Message], state: Mapping[str, bytes]) -> BatchOutcome:
        return self.process_many(stage, [(partition, messages)], state)[0]

    def process_many(
        self,
        stage: int,
        parts: list[tuple[int, list[Message]]],
        state: Mapping[str, bytes],
        passed: Mapping[int, tuple[int, int, int]] | None = None,
        counted: bool = True,
    ) -> list[BatchOutcome]:
        """One micro-batch per partition (at most one each), computed together.

        Each partition gets its own outcome (outputs, state writes, counts),
        exactly what `process` would give it alone; decoding and the window
        work run once for all of them (Decoder.decode_many,
        StageAggregator.process_many). A stage before
        the last ends each partition's outputs with marks for the next stage
        (stream.pipeline.clock): the first stage from its own clock, a later
        one from `passed` (what its partition's arrival merge has passed).
        `counted` False: questions (`stream.pipeline.ask`), which the
        stream's metrics must not count and whose window state writes are
        not computed (a question stores nothing; the other writes are cheap).
        """
        clocked = [self._clock(stage, partition, messages, state, passed) for partition, messages in parts]
        outcomes = self._process_many(stage, parts, state, [c[0] for c in clocked], counted)
        for (partition, messages), outcome, (_, writes, sent) in zip(parts, outcomes, clocked):
            outcome.writes.update(writes)
            outcome.outputs.extend(sent)
            if stage:
                self._note_position(partition, messages, state, outcome.writes)
        return outcomes

    def _note_position(self, partition: int, messages: list[Message], state, writes: dict) -> None:
        """Record where a later stage's batch ended, even when it held no valid event.

        A later stage numbers the records it releases on from the last
        recorded position (stream.worker.agents.Ordered); a batch of records
        that all went to the dead letters must move it on too, or a replay
        would number what follows differently.
        """
        key = STREAM_TIME_KEY.format(partition=partition)
        placed = [m.seq for m in messages if m.seq is not None and m.seq >= 0]
        if placed and key not in writes:
            append_history(state, key, max(placed) + 1, history_before(state, key, min(placed)), writes)

    def _clock(self, stage, partition, messages, state, passed):
        """(each message's arrival clock at the first stage, the clock's state write, the marks to send)."""
        if stage == 0:
            clocks, writes = first_stage_clock(state, partition, messages)
            at = (int(clocks[-1]), partition, messages[-1].offset) if messages else None
        else:
            clocks, writes = np.zeros(0, dtype=np.int64), {}
            at = (passed or {}).get(partition)
        if stage == self.last_stage or at is None:
            return clocks, writes, []
        return clocks, writes, marks(self.repartition_topics[stage + 1], self.n_sources, partition, at)

    def _process_many(self, stage, parts, state, clocks, counted: bool = True) -> list[BatchOutcome]:
        aggregator = self.aggregators[stage]
        events_in, batch_size = self._counted[stage]
        reading = []
        for (partition, messages), part_clocks in zip(parts, clocks):
            if counted:
                events_in.inc(len(messages))
                batch_size.observe(len(messages))
            reading.append((partition, messages, aggregator.outputs_done_before(state, partition), part_clocks))
        # Every partition's messages read together (one pass, the arrays built once per call).
        decoded: list[tuple[int, int, Decoded]] = [
            (partition, done_before, d)
            for (partition, _, done_before, _), d in zip(reading, self.decoder.decode_many(stage, reading))
        ]
        valid = [(partition, d.columns, d.carried.sources) for partition, _, d in decoded if len(d.columns)]
        if not valid:
            return [_outcome(d) for _, _, d in decoded]
        t_feat = time.perf_counter()
        call = decoded[0][2].call  # the parts' columns as decode_many built them: the window step joins nothing
        if call is None or any(d.call is not call for _, _, d in decoded):
            call = None
        results = iter(aggregator.process_many(state, valid, n_sources=self.n_sources, store=counted, events=call))
        feat_ms = (time.perf_counter() - t_feat) * 1000
        if counted:
            self._feature_seconds.observe(feat_ms / 1000)
        serving, batch = self.serving, self.batch  # one deployment per batch: a swap applies at a batch boundary
        lateness_ms = self.plan.schema.allowed_lateness_ms
        outcomes: list = []
        scoring: list[tuple[int, Decoded, Windowed, dict]] = []  # last stage: scored together, after the loop
        for _, done_before, d in decoded:
            if not len(d.columns):
                outcomes.append(_outcome(d))
                continue
            result = next(results)
            windowed = sift(
                stage, result, d.columns, d.records, d.carried, done_before, feat_ms, self.stream_names, self.copies,
                lateness_ms,
            )
            if stage < self.last_stage:
                nxt = stage + 1
                sent = forward(
                    nxt, self.repartition_topics[nxt], self.stages[nxt], windowed, d.records, d.carried, d.columns.ts,
                    result.watermark, self.copies,
                )
                outcomes.append(_outcome(d, windowed, result.writes, sent.rows, sent.dead_letters))
            else:
                scoring.append((len(outcomes), d, windowed, result.writes))
                outcomes.append(None)
        if scoring:
            parts = [Part(w, d.records, d.carried, d.columns.ts) for _, d, w, _ in scoring]
            predicted = self.predictor.predict_many(serving, batch, parts, counted)
            for (at, d, windowed, writes), p in zip(scoring, predicted):
                outcomes[at] = _outcome(d, windowed, writes, p.records, p.dead_letters, p.latencies_s)
        return outcomes


def _outcome(
    decoded: Decoded,
    windowed: Windowed | None = None,
    writes: dict[str, bytes] | None = None,
    produced: Sequence[Output] = (),
    dead_letters: Sequence[Output] = (),
    latencies_s: list[float] | None = None,
) -> BatchOutcome:
    """One partition's outcome from what its steps returned (an event's copies come before the records)."""
    if windowed is None:
        return BatchOutcome(outputs=list(decoded.dead_letters), dlq=len(decoded.dead_letters))
    return BatchOutcome(
        outputs=[*decoded.dead_letters, *windowed.late, *dead_letters, *produced],
        writes=writes,
        predictions=len(latencies_s) if latencies_s is not None else 0,
        dlq=len(decoded.dead_letters) + len(dead_letters),
        late=len(windowed.late),
        replayed=windowed.replayed,
        latencies_s=latencies_s if latencies_s is not None else [],
    )
