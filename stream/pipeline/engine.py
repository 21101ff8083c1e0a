"""One micro-batch through one stage: validate, aggregate, score, shape the outputs.

`Engine` knows nothing of Faust; the Faust agent (stream/worker/app.py) hands it
messages and a state mapping, produces what it returns, waits for delivery,
and only then stores the returned state. Tests and the benchmark drive the
same class directly.

Every input message gets exactly one outcome, and none can raise: a
prediction (with its log record), a late record or a dead letter. The
original bytes of an event travel with it and are spliced, never
re-serialized, into what carries them (the forwarded record, the prediction
log, the late and dead-letter copies): what a producer wrote cannot make an
output fail. Whether an event's outputs fit `max_message_bytes` is decided
where it enters, before it enters any window (see `_outputs_fit`); an output
that could not be written all the same is replaced by a dead letter for its
event, never produced.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import orjson

from features.columns import EventColumns
from features.online import StageAggregator
from features.spec import FeaturePlan
from stream import metrics
from stream.pipeline import forwarded, scoring
from stream.pipeline.events import MAX_KEY_BYTES, EventValidator, clip, columns_of, iso_ms
from stream.pipeline.forwarded import UNREADABLE, Carried
from stream.pipeline.outcomes import RECORD_OVERHEAD, BatchOutcome, Message, Output, copy_of, oversize
from stream.pipeline.records import PredictionRecords
from stream.pipeline.vectors import BatchFeatures, assemble
from stream.serving.scorer import Serving, score

__all__ = ["BatchOutcome", "Engine", "Message", "Output"]


class Engine:
    """The computation of every stage, for one FeaturePlan and one model."""

    def __init__(
        self,
        plan: FeaturePlan,
        topics,  # stream.kafka.topics.AppTopics: every name by role, and repartition(stage)
        app_id: str,
        model=None,
        batch_cache=None,
        batch_max: int = 2000,
        batch_within_s: float = 0.005,
        n_sources: int = 0,
        max_message_bytes: int = 1_000_000,
        max_event_ahead_ms: int = 3_600_000,
        max_abs_value: float = 1e15,
    ):
        self.plan = plan
        self.max_message_bytes = max_message_bytes
        self.n_sources = n_sources  # partitions of the events topic
        self.batch_max = batch_max
        self.batch_within_s = batch_within_s
        self.topics = topics
        self.app_id = app_id
        self.serving = Serving.alone(model) if model is not None else None
        self.batch_cache = batch_cache
        self.batch = BatchFeatures(batch_cache) if batch_cache is not None else None
        self.id_field = plan.schema.event_id
        self.stages = plan.stages()
        self.aggregators = [StageAggregator(plan, s) for s in range(len(self.stages))]
        key_fields = tuple(dict.fromkeys(k for v in plan.stream_views for k in v.join_keys))
        self.entity_fields = tuple(dict.fromkeys(key_fields + tuple(k for v in plan.batch_views for k in v.join_keys)))
        self.validator = EventValidator(
            plan.schema,
            self.entity_fields,
            partition_key=plan.partition_key,
            max_message_bytes=max_message_bytes,
            max_event_ahead_ms=max_event_ahead_ms,
            max_abs_value=max_abs_value,
            outputs_fit=self._outputs_fit,
        )
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

    @property
    def last_stage(self) -> int:
        return len(self.stages) - 1

    # -- input -------------------------------------------------------------

    def _decode(self, stage: int, messages: list[Message], outcome: BatchOutcome, done_before: int, partition: int):
        """The batch's valid events as columns plus what travels with them."""
        if stage > 0:
            return self._decode_forwarded(stage, messages, outcome, done_before, partition)
        values = [m.value for m in messages]
        keys = [m.key for m in messages]
        parsed = self.validator.parse(values, [m.offset for m in messages], keys, [m.timestamp_ms for m in messages])
        events_topic = self.topics["events"]
        for i, reason, kind in parsed.rejects:
            m = messages[i]
            if m.offset >= done_before:
                self._dead_letter(outcome, kind, reason, m.key, m.value, f"{events_topic}/{partition}/{m.offset}")
        index = parsed.index.tolist()
        carried = Carried(
            t0=np.array([messages[i].timestamp_ms for i in index], dtype=np.float64),
            arrival=[[[partition, messages[i].offset]] for i in index],
            features=np.zeros((len(index), 0)),
            names=[],
            stage_ms=[],
            source_wm=np.zeros(len(index), dtype=np.int64),
            raw=[values[i] for i in index],
            keys=[keys[i] for i in index],
        )
        return parsed.columns, parsed.records, carried

    def _decode_forwarded(self, stage: int, messages: list[Message], outcome, done_before: int, partition: int):
        """Records an earlier stage forwarded, validated again; anything else on the topic is dead-lettered."""
        problem = self.validator.problem
        rows, records, raws, kept, bad = [], [], [], [], []
        for m in messages:
            try:
                row, raw = forwarded.decode(m.value)
                event = row.event
            except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                bad.append((m, str(exc)))
                continue
            invalid = problem(event, times=False)
            if invalid is not None:
                bad.append((m, invalid.reason))
                continue
            row.arrival.append([partition, m.offset])
            rows.append(row)
            records.append(event)
            raws.append(raw)
            kept.append(m)
        try:
            columns, carried = self._forwarded_columns(stage, rows, records, raws, kept)
        except UNREADABLE:
            # Some record has the right shape but not the right contents: find it.
            good = []
            for j, m in enumerate(kept):
                try:
                    self._forwarded_columns(stage, rows[j : j + 1], records[j : j + 1], raws[j : j + 1], [m])
                    good.append(j)
                except UNREADABLE as exc:
                    bad.append((m, f"unreadable contents ({exc!r})"))
            rows, records, raws, kept = ([x[j] for j in good] for x in (rows, records, raws, kept))
            columns, carried = self._forwarded_columns(stage, rows, records, raws, kept)
        topic = self.repartition_topics[stage]
        for m, why in bad:
            if m.offset >= done_before:
                reason = f"not valid JSON: not a record forwarded by stage {stage - 1}: {clip(why, 200)}"
                self._dead_letter(outcome, "invalid_json", reason, m.key, m.value, f"{topic}/{partition}/{m.offset}")
        return columns, records, carried

    def _forwarded_columns(self, stage: int, rows: list, records: list[dict], raws: list[bytes], messages: list[Message]):
        names = self.stage_names[stage - 1]
        arrival = [r.arrival for r in rows]
        source_wm = np.array([r.source_wm for r in rows], dtype=np.int64)
        sources = np.column_stack(
            [
                np.array([a[0][0] for a in arrival], dtype=np.int64),
                np.array([a[0][1] for a in arrival], dtype=np.int64),
                source_wm,
            ]
        )
        carried = Carried(
            t0=np.array([r.t0_ms for r in rows], dtype=np.float64),
            arrival=arrival,
            features=np.array([r.features for r in rows], dtype=np.float64).reshape(len(rows), len(names)),
            names=names,
            stage_ms=[list(r.stage_ms) for r in rows],
            source_wm=source_wm,
            raw=raws,
            keys=None,
            sources=sources,
        )
        ts = np.array([r.event_ts_ms for r in rows], dtype=np.int64)
        offsets = np.array([m.offset for m in messages], dtype=np.int64)
        columns = EventColumns(ts, offsets, columns_of(self.plan.schema, records))
        return columns, carried

    # -- output sizes ----------------------------------------------------------

    def _outputs_fit(self, raw: bytes, event: dict) -> str | None:
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

    def _oversize(self, what: str, key: bytes, payload: bytes) -> str | None:
        """Reason an output cannot be produced because of its size, or None (`_outputs_fit` should prevent it)."""
        return oversize(what, key, payload, self.max_message_bytes)

    # -- dead letters ----------------------------------------------------------

    def _copy(self, topic: str, key: bytes | None, value: bytes | None, reason: str, source: str) -> Output:
        return copy_of(topic, key, value, reason, source, self.max_message_bytes, app_id=self.app_id)

    def _dead_letter(self, outcome, kind: str, reason: str, key, value, source: str) -> None:
        metrics.DLQ.labels(kind).inc()
        outcome.dlq += 1
        outcome.outputs.append(copy_of(self.topics["dlq"], key, value, reason, source, self.max_message_bytes, kind, self.app_id))

    def _origin(self, carried, i: int, record: dict) -> tuple[bytes | None, str]:
        """A valid event's Kafka key and events-topic position (topic/partition/offset), at any stage.

        Later stages rebuild the key from the partition key's value, which
        the first stage checked it equals.
        """
        key = carried.keys[i] if carried.keys is not None else str(record[self.plan.partition_key]).encode()
        partition, offset = carried.arrival[i][0]
        return key, f"{self.topics['events']}/{partition}/{offset}"

    def _event_dead_letter(self, outcome, carried, i: int, record: dict, kind: str, reason: str) -> None:
        """Dead-letter a valid event whose outputs cannot be produced."""
        key, source = self._origin(carried, i, record)
        self._dead_letter(outcome, kind, reason, key, carried.raw[i], source)

    # -- the batch -----------------------------------------------------------

    def process(self, stage: int, partition: int, messages: list[Message], state: Mapping[str, bytes]) -> BatchOutcome:
        return self.process_many(stage, [(partition, messages)], state)[0]

    def process_many(
        self, stage: int, parts: list[tuple[int, list[Message]]], state: Mapping[str, bytes]
    ) -> list[BatchOutcome]:
        """One micro-batch per partition (at most one each), computed together.

        Each partition gets its own outcome (outputs, state writes, counts),
        exactly what `process` would give it alone; the window work runs once
        for all of them (see StageAggregator.process_many).
        """
        outcomes = [BatchOutcome() for _ in parts]
        aggregator = self.aggregators[stage]
        label = str(stage)
        decoded = []
        for (partition, messages), outcome in zip(parts, outcomes):
            metrics.EVENTS_IN.labels(label).inc(len(messages))
            metrics.BATCH_SIZE.labels(label).observe(len(messages))
            done_before = aggregator.outputs_done_before(state, partition)
            columns, records, carried = self._decode(stage, messages, outcome, done_before, partition)
            if len(columns):
                decoded.append((partition, outcome, done_before, columns, records, carried))
        if not decoded:
            return outcomes
        t_feat = time.perf_counter()
        inputs = []
        for partition, _, _, columns, _, carried in decoded:
            inputs.append((partition, columns, carried.sources))
        results = aggregator.process_many(state, inputs, n_sources=self.n_sources)
        feat_ms = (time.perf_counter() - t_feat) * 1000
        metrics.STAGE_SECONDS.labels("features").observe(feat_ms / 1000)
        for (_, outcome, done_before, columns, records, carried), result in zip(decoded, results):
            self._finish(stage, outcome, done_before, columns, records, carried, result, feat_ms)
        return outcomes

    def _finish(self, stage, outcome, done_before, columns, records, carried, result, feat_ms) -> None:
        """One partition's outputs from its features: late records, then forwarded rows or predictions."""
        outcome.writes = result.writes
        skip = result.replayed | (columns.seq < done_before)
        outcome.replayed = int(skip.sum())
        metrics.REPLAYED.labels(str(stage)).inc(outcome.replayed)
        for i in np.flatnonzero(result.late & ~skip).tolist():
            outcome.late += 1
            metrics.LATE.labels(str(stage)).inc()
            reason = f"late: event time is more than {self.plan.schema.allowed_lateness_ms} ms behind stream time"
            key, source = self._origin(carried, i, records[i])
            outcome.outputs.append(self._copy(self.topics["late"], key, carried.raw[i], reason, source))
        keep = np.flatnonzero(~result.late & ~skip)
        names = [n for n in self.stream_names if n in result.features]
        own = np.column_stack([result.features[n][keep] for n in names]) if names else np.zeros((len(keep), 0))
        features = np.hstack([carried.features[keep], own])
        all_names = carried.names + names
        stage_ms = [list(carried.stage_ms[i]) + [feat_ms] for i in keep.tolist()] if stage else [[feat_ms]] * len(keep)
        if stage < self.last_stage:
            self._forward(stage + 1, keep, records, carried, columns, features, result, stage_ms, outcome)
        else:
            self._score(keep, records, carried, columns.ts, features, all_names, stage_ms, outcome)

    def _forward(self, stage: int, keep, records, carried, columns, features, result, stage_ms, outcome) -> None:
        """Hand the events on to the next stage, keyed by its entity.

        Each record is a `forwarded.ForwardedRow`: the event's original
        bytes, spliced in, and what the next stage needs beside them.
        """
        key_fields = self.stages[stage]
        topic = self.repartition_topics[stage]
        rows = features.tolist()
        # The first stage hands on its own watermark; later stages pass theirs through.
        wm = result.watermark if stage == 1 else carried.source_wm
        t0, ts = carried.t0.tolist(), columns.ts.tolist()
        single = len(key_fields) == 1
        raws, outputs = carried.raw, outcome.outputs
        roomy = self.max_message_bytes - RECORD_OVERHEAD
        for row, i in enumerate(keep.tolist()):
            record = records[i]
            key = (str(record[key_fields[0]]) if single else "\x1f".join(str(record[k]) for k in key_fields)).encode()
            raw = raws[i]
            try:
                payload = forwarded.encode(raw, rows[row], carried.arrival[i], t0[i], int(wm[i]), ts[i], stage_ms[row])
            except TypeError as exc:  # orjson.JSONEncodeError
                reason = f"cannot write the forwarded record: {clip(str(exc), 200)}"
                self._event_dead_letter(outcome, carried, i, record, "unserializable", reason)
                continue
            if len(payload) + len(key) > roomy:
                too_large = self._oversize("forwarded record", key, payload)
                if too_large is not None:
                    self._event_dead_letter(outcome, carried, i, record, "too_large", too_large)
                    continue
            outputs.append(Output(topic, key, payload))

    def _score(self, keep, records, carried, event_ts, features, names, stage_ms, outcome: BatchOutcome) -> None:
        n = len(keep)
        if not n:
            return
        serving = self.serving  # one deployment per batch: a swap applies at a batch boundary
        rows = keep.tolist()
        assembled = assemble(self.plan, names, features, records, rows, self.batch)
        matrix, batch_ms = assembled.matrix, assembled.batch_ms
        batch_records = [records[i] for i in rows]
        missing = scoring.missing_views(assembled, n)
        untrusted = scoring.problems(assembled, missing, serving)
        scored = score(
            serving, matrix, batch_records, [str(r[self.plan.partition_key]) for r in batch_records],
            [str(r[self.id_field]) for r in batch_records], untrusted,
        )
        score_ms = scored.score_ms
        metrics.STAGE_SECONDS.labels("batch_features").observe(batch_ms / 1000)
        metrics.STAGE_SECONDS.labels("score").observe(score_ms / 1000)
        if scored.reason_ms:
            metrics.STAGE_SECONDS.labels("reasons").observe(scored.reason_ms / 1000)
        for version in scored.errors:
            metrics.MODEL_ERRORS.labels(version).inc()
        now_ms = time.time() * 1000
        scored_at = iso_ms(int(now_ms))
        # NaN (missing) becomes None, which JSON writes as null.
        vectors = np.where(np.isnan(matrix), None, matrix.astype(object)).tolist()
        t0s, event_times = carried.t0.tolist(), self.records.event_times(event_ts)
        predictions_topic, log_topic = self.topics["predictions"], self.topics["prediction_log"]
        outputs, raws, write, latency = outcome.outputs, carried.raw, self.records.write, self.records.latency
        roomy = self.max_message_bytes - RECORD_OVERHEAD
        served = list(zip(
            scored.scores, scored.decisions, scored.versions, scored.routes, scored.fallback, scored.rule,
            scored.all_scores, scored.thresholds, scored.reasons, [serving.deployment.seq] * n,
        ))
        unanswered = dict(scored.unanswered)
        produced = []
        for row, i in enumerate(rows):
            record = records[i]
            if row in unanswered:
                metrics.UNANSWERED.inc()
                self._event_dead_letter(outcome, carried, i, record, "unanswered", unanswered[row])
                continue
            total_ms = now_ms - t0s[i]
            try:
                key, body, logged = write(
                    record, event_times[i], served[row], scored_at, vectors[row],
                    latency(stage_ms[row], batch_ms, score_ms, total_ms), carried.arrival[i], raws[i],
                    missing[row],
                )
            except TypeError as exc:  # orjson.JSONEncodeError
                self._event_dead_letter(outcome, carried, i, record, "unserializable", f"cannot write the prediction: {exc}")
                continue
            if len(logged) + len(key) > roomy:  # the prediction is smaller than its log record
                too_large = self._oversize("prediction log record", key, logged)
                if too_large is not None:
                    self._event_dead_letter(outcome, carried, i, record, "too_large", too_large)
                    continue
            outputs.append(Output(predictions_topic, key, body))
            outputs.append(Output(log_topic, key, logged))
            outcome.latencies_s.append(total_ms / 1000)
            produced.append(row)
        outcome.predictions += len(produced)
        scoring.count(scored, produced)
        metrics.LATENCY.observe_many(outcome.latencies_s)
