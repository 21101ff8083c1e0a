"""One micro-batch through one stage: validate, aggregate, score, shape the outputs.

`Engine` knows nothing of Faust; the Faust agent (stream/worker.py) hands it
messages and a state mapping, produces what it returns, waits for delivery,
and only then stores the returned state. Tests and the benchmark drive the
same class directly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import orjson

from features.columns import EventColumns
from features.online import StageAggregator
from features.spec import FeaturePlan
from stream import metrics
from stream.events import EventValidator, iso_ms

HEADER_REASON = "sluice.reason"
HEADER_SOURCE = "sluice.source"


@dataclass
class Message:
    """What the engine needs of a consumed Kafka message."""

    key: bytes | None
    value: bytes
    offset: int
    timestamp_ms: int


@dataclass
class Output:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


@dataclass
class BatchOutcome:
    outputs: list[Output] = field(default_factory=list)
    writes: dict[str, bytes] = field(default_factory=dict)
    predictions: int = 0
    dlq: int = 0
    late: int = 0
    replayed: int = 0
    latencies_s: list[float] = field(default_factory=list)


def _nan_to_none(value: float):
    return None if value != value else value  # NaN is the only value unequal to itself


class Engine:
    """The computation of every stage, for one FeaturePlan and one model."""

    def __init__(
        self,
        plan: FeaturePlan,
        topics: dict[str, str],
        app_id: str,
        model=None,
        batch_cache=None,
        batch_max: int = 2000,
        batch_within_s: float = 0.005,
        n_sources: int = 0,
    ):
        self.plan = plan
        self.n_sources = n_sources  # partitions of the events topic
        self.batch_max = batch_max
        self.batch_within_s = batch_within_s
        self.topics = topics
        self.model = model
        self.batch_cache = batch_cache
        self.stages = plan.stages()
        self.aggregators = [StageAggregator(plan, s) for s in range(len(self.stages))]
        key_fields = tuple(dict.fromkeys(k for v in plan.stream_views for k in v.join_keys))
        self.entity_fields = tuple(dict.fromkeys(key_fields + tuple(k for v in plan.batch_views for k in v.join_keys)))
        self.validator = EventValidator(plan.schema, key_fields)
        self.repartition_topics = [self.repartition_topic(app_id, s) for s in range(len(self.stages))]
        self.stream_names = [f"{v.name}__{a.name}" for v in plan.stream_views for a in v.aggs]

    def repartition_topic(self, app_id: str, stage: int) -> str:
        if stage == 0:
            return self.plan.schema.topic
        return f"{app_id}-repartition-{'-'.join(self.stages[stage])}"

    @property
    def last_stage(self) -> int:
        return len(self.stages) - 1

    # -- input -------------------------------------------------------------

    def _decode(self, stage: int, messages: list[Message], outcome: BatchOutcome, done_before: int, partition: int):
        """Valid events of the batch as columns, with per-event context."""
        offsets = [m.offset for m in messages]
        if stage == 0:
            parsed = self.validator.parse([m.value for m in messages], offsets)
            for i, reason in parsed.rejects:
                metrics.DLQ.labels(reason.split(" ")[0]).inc()
                if messages[i].offset < done_before:
                    continue
                outcome.dlq += 1
                source = f"{self.topics['events']}/{partition}/{messages[i].offset}".encode()
                outcome.outputs.append(
                    Output(
                        self.topics["dlq"],
                        messages[i].key,
                        messages[i].value,
                        [(HEADER_REASON, reason.encode()), (HEADER_SOURCE, source)],
                    )
                )
            contexts = [
                {"f": {}, "a": [[partition, messages[i].offset]], "t0": messages[i].timestamp_ms, "lat": {}}
                for i in parsed.index.tolist()
            ]
            return parsed.columns, parsed.records, contexts
        records, contexts = [], []
        for m in messages:
            fwd = orjson.loads(m.value)
            fwd["a"].append([partition, m.offset])
            records.append(fwd.pop("e"))
            contexts.append(fwd)
        fields = {}
        for name, kind in self.plan.schema.fields:
            if kind in ("double", "long"):
                fields[name] = np.fromiter((r[name] for r in records), dtype=np.float64, count=len(records))
            else:
                col = np.empty(len(records), dtype=object)
                col[:] = [r[name] for r in records]
                fields[name] = col
        ts = np.fromiter((r[self.plan.schema.timestamp_field] for r in records), dtype=np.int64, count=len(records))
        return EventColumns(ts, np.asarray(offsets, dtype=np.int64), fields), records, contexts

    # -- the batch -----------------------------------------------------------

    def process(self, stage: int, partition: int, messages: list[Message], state: Mapping[str, bytes]) -> BatchOutcome:
        started = time.perf_counter()
        outcome = BatchOutcome()
        metrics.EVENTS_IN.labels(str(stage)).inc(len(messages))
        metrics.BATCH_SIZE.labels(str(stage)).observe(len(messages))
        aggregator = self.aggregators[stage]
        done_before = aggregator.outputs_done_before(state, partition)
        columns, records, contexts = self._decode(stage, messages, outcome, done_before, partition)
        if not len(columns):
            return outcome
        t_feat = time.perf_counter()
        sources = None
        if stage > 0:
            sources = np.array([[c["w"][0], c["a"][0][1], c["w"][1]] for c in contexts], dtype=np.int64).reshape(-1, 3)
        result = aggregator.process(state, partition, columns, sources=sources, n_sources=self.n_sources)
        feat_ms = (time.perf_counter() - t_feat) * 1000
        metrics.STAGE_SECONDS.labels("features").observe(feat_ms / 1000)
        outcome.writes = result.writes
        skip = result.replayed | (columns.seq < done_before)
        outcome.replayed = int(skip.sum())
        metrics.REPLAYED.labels(str(stage)).inc(outcome.replayed)
        for i in np.flatnonzero(result.late & ~skip).tolist():
            outcome.late += 1
            metrics.LATE.labels(str(stage)).inc()
            reason = f"late: event time is more than {self.plan.schema.allowed_lateness_ms} ms behind stream time"
            outcome.outputs.append(
                Output(self.topics["late"], None, self._event_bytes(records[i]), [(HEADER_REASON, reason.encode())])
            )
        keep = np.flatnonzero(~result.late & ~skip)
        names = [n for n in self.stream_names if n in result.features]
        values = np.column_stack([result.features[n][keep] for n in names]) if names else np.zeros((len(keep), 0))
        queue_ms = [max(0.0, time.time() * 1000 - contexts[i]["t0"]) for i in keep.tolist()] if stage == 0 else None
        for row, i in enumerate(keep.tolist()):
            ctx = contexts[i]
            ctx["f"].update(zip(names, values[row].tolist()))
            lat = ctx["lat"]
            lat[f"features_{stage}"] = feat_ms
            if queue_ms is not None:
                lat["queue"] = queue_ms[row]
                ctx["w"] = [partition, int(result.watermark[i])]
        if stage < self.last_stage:
            self._forward(stage + 1, keep, records, contexts, outcome)
        else:
            self._score(keep, records, contexts, outcome, started)
        return outcome

    def _event_bytes(self, record: dict) -> bytes:
        ts_field = self.plan.schema.timestamp_field
        event = dict(record)
        event[ts_field] = iso_ms(record[ts_field])
        return orjson.dumps(event)

    def _forward(self, stage: int, keep, records, contexts, outcome: BatchOutcome) -> None:
        key_fields = self.stages[stage]
        topic = self.repartition_topics[stage]
        for i in keep.tolist():
            ctx = contexts[i]
            ctx["e"] = records[i]
            key = "\x1f".join(str(records[i][k]) for k in key_fields).encode()
            outcome.outputs.append(Output(topic, key, orjson.dumps(ctx, option=orjson.OPT_SERIALIZE_NUMPY)))

    def _score(self, keep, records, contexts, outcome: BatchOutcome, started: float) -> None:
        n = len(keep)
        if not n:
            return
        t0 = time.perf_counter()
        columns = {}
        for view in self.plan.batch_views:
            keys = [tuple(str(records[i][k]) for k in view.join_keys) for i in keep.tolist()]
            block = self.batch_cache.lookup(view, keys) if self.batch_cache else np.full((n, len(view.features)), np.nan)
            for j, feature in enumerate(view.features):
                columns[f"{view.name}__{feature}"] = block[:, j]
        batch_ms = (time.perf_counter() - t0) * 1000
        for name in self.stream_names:
            if name in self.plan.vector:
                columns[name] = np.array([contexts[i]["f"][name] for i in keep.tolist()], dtype=np.float64)
        matrix = np.column_stack([columns[name] for name in self.plan.vector])
        t1 = time.perf_counter()
        scores = self.model.predict(matrix)
        score_ms = (time.perf_counter() - t1) * 1000
        metrics.STAGE_SECONDS.labels("batch_features").observe(batch_ms / 1000)
        metrics.STAGE_SECONDS.labels("score").observe(score_ms / 1000)
        version = self.model.version
        threshold = self.model.threshold
        id_field = self.plan.schema.event_id
        ts_field = self.plan.schema.timestamp_field
        now_ms = time.time() * 1000
        scored_at = iso_ms(int(now_ms))
        vector_rows = matrix.tolist()
        for row, i in enumerate(keep.tolist()):
            record, ctx = records[i], contexts[i]
            event_id = str(record[id_field])
            score = float(scores[row])
            prediction = {
                id_field: event_id,
                "entity": {k: record[k] for k in self.entity_fields},
                "score": score,
                "decision": bool(score >= threshold),
                "model_version": version,
                "event_time": iso_ms(record[ts_field]),
                "scored_at": scored_at,
            }
            total_ms = now_ms - ctx["t0"]
            latency = dict(ctx["lat"], batch_features=batch_ms, score=score_ms, total=total_ms)
            log = dict(
                prediction,
                feature_service=self.plan.service,
                threshold=threshold,
                features={name: _nan_to_none(v) for name, v in zip(self.plan.vector, vector_rows[row])},
                latency_ms=latency,
                arrival=ctx["a"],
                event=dict(record, **{ts_field: iso_ms(record[ts_field])}),
            )
            key = event_id.encode()
            outcome.outputs.append(Output(self.topics["predictions"], key, orjson.dumps(prediction)))
            outcome.outputs.append(Output(self.topics["prediction_log"], key, orjson.dumps(log)))
            outcome.latencies_s.append(total_ms / 1000)
        outcome.predictions += n
        metrics.PREDICTIONS_OUT.labels(version).inc(n)
        for latency in outcome.latencies_s:
            metrics.LATENCY.observe(latency)
