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
from typing import NamedTuple

import numpy as np
import orjson

from features.columns import EventColumns
from features.online import StageAggregator
from features.spec import FeaturePlan
from stream import metrics
from stream.events import EventValidator, columns_of, iso_ms

HEADER_REASON = "sluice.reason"
HEADER_SOURCE = "sluice.source"


@dataclass
class Message:
    """What the engine needs of a consumed Kafka message."""

    key: bytes | None
    value: bytes
    offset: int
    timestamp_ms: int


class Output(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None  # None: the key decides


@dataclass
class BatchOutcome:
    outputs: list[Output] = field(default_factory=list)
    writes: dict[str, bytes] = field(default_factory=dict)
    predictions: int = 0
    dlq: int = 0
    late: int = 0
    replayed: int = 0
    latencies_s: list[float] = field(default_factory=list)


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
        # Names each stage adds to the vector, cumulated: what a forwarded row carries.
        self.stage_names: list[list[str]] = []
        so_far: list[str] = []
        for stage in range(len(self.stages)):
            so_far = so_far + [
                f"{v.name}__{a.name}" for v in plan.stream_views if plan.stage_of(v) == stage for a in v.aggs
            ]
            self.stage_names.append(so_far)

    def repartition_topic(self, app_id: str, stage: int) -> str:
        if stage == 0:
            return self.plan.schema.topic
        return f"{app_id}-repartition-{'-'.join(self.stages[stage])}"

    @property
    def last_stage(self) -> int:
        return len(self.stages) - 1

    # -- input -------------------------------------------------------------

    def _decode(self, stage: int, messages: list[Message], outcome: BatchOutcome, done_before: int, partition: int):
        """The batch's valid events as columns plus what travels with them."""
        offsets = [m.offset for m in messages]
        if stage == 0:
            parsed = self.validator.parse([m.value for m in messages], offsets)
            for i, reason in parsed.rejects:
                if messages[i].offset < done_before:
                    continue
                metrics.DLQ.labels(_reason_kind(reason)).inc()
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
            index = parsed.index.tolist()
            carried = Carried(
                t0=np.array([messages[i].timestamp_ms for i in index], dtype=np.float64),
                arrival=[[[partition, messages[i].offset]] for i in index],
                features=np.zeros((len(index), 0)),
                names=[],
                stage_ms=[],
                source_wm=np.zeros(len(index), dtype=np.int64),
            )
            return parsed.columns, parsed.records, carried
        rows = [orjson.loads(m.value) for m in messages]
        records = [r[0] for r in rows]
        for r, m in zip(rows, messages):
            r[2].append([partition, m.offset])
        names = self.stage_names[stage - 1]
        carried = Carried(
            t0=np.array([r[3] for r in rows], dtype=np.float64),
            arrival=[r[2] for r in rows],
            features=np.array([r[1] for r in rows], dtype=np.float64).reshape(len(rows), len(names)),
            names=names,
            stage_ms=[r[6] for r in rows],
            source_wm=np.array([r[4] for r in rows], dtype=np.int64),
        )
        ts = np.array([r[5] for r in rows], dtype=np.int64)
        columns = EventColumns(ts, np.asarray(offsets, dtype=np.int64), columns_of(self.plan.schema, records))
        return columns, records, carried

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
            sources = None
            if stage > 0:
                sources = np.column_stack(
                    [[a[0][0] for a in carried.arrival], [a[0][1] for a in carried.arrival], carried.source_wm]
                ).astype(np.int64)
            inputs.append((partition, columns, sources))
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
            outcome.outputs.append(
                Output(self.topics["late"], None, orjson.dumps(records[i]), [(HEADER_REASON, reason.encode())])
            )
        keep = np.flatnonzero(~result.late & ~skip)
        names = [n for n in self.stream_names if n in result.features]
        own = np.column_stack([result.features[n][keep] for n in names]) if names else np.zeros((len(keep), 0))
        features = np.hstack([carried.features[keep], own])
        all_names = carried.names + names
        stage_ms = [list(carried.stage_ms[i]) + [feat_ms] for i in keep.tolist()] if stage else [[feat_ms]] * len(keep)
        if stage < self.last_stage:
            self._forward(stage + 1, keep, records, carried, columns, features, result, stage_ms, outcome)
        else:
            self._score(keep, records, carried, features, all_names, stage_ms, outcome)

    def _forward(self, stage: int, keep, records, carried, columns, features, result, stage_ms, outcome) -> None:
        """Hand the events on to the next stage, keyed by its entity (compact JSON rows)."""
        key_fields = self.stages[stage]
        topic = self.repartition_topics[stage]
        rows = features.tolist()
        # The first stage hands on its own watermark; later stages pass theirs through.
        wm = result.watermark if stage == 1 else carried.source_wm
        t0, ts = carried.t0.tolist(), columns.ts.tolist()
        single = len(key_fields) == 1
        for row, i in enumerate(keep.tolist()):
            record = records[i]
            key = (str(record[key_fields[0]]) if single else "\x1f".join(str(record[k]) for k in key_fields)).encode()
            source_wm = int(wm[i])
            payload = orjson.dumps([record, rows[row], carried.arrival[i], t0[i], source_wm, ts[i], stage_ms[row]])
            outcome.outputs.append(Output(topic, key, payload))

    def _score(self, keep, records, carried, features, names, stage_ms, outcome: BatchOutcome) -> None:
        n = len(keep)
        if not n:
            return
        t0 = time.perf_counter()
        columns = dict(zip(names, features.T))
        for view in self.plan.batch_views:
            keys = [tuple(str(records[i][k]) for k in view.join_keys) for i in keep.tolist()]
            block = self.batch_cache.lookup(view, keys) if self.batch_cache else np.full((n, len(view.features)), np.nan)
            for j, feature in enumerate(view.features):
                columns[f"{view.name}__{feature}"] = block[:, j]
        batch_ms = (time.perf_counter() - t0) * 1000
        matrix = np.column_stack([columns[name] for name in self.plan.vector])
        t1 = time.perf_counter()
        scores = self.model.predict(matrix)
        score_ms = (time.perf_counter() - t1) * 1000
        metrics.STAGE_SECONDS.labels("batch_features").observe(batch_ms / 1000)
        metrics.STAGE_SECONDS.labels("score").observe(score_ms / 1000)
        version, threshold = self.model.version, self.model.threshold
        id_field, ts_field = self.plan.schema.event_id, self.plan.schema.timestamp_field
        now_ms = time.time() * 1000
        scored_at = iso_ms(int(now_ms))
        # NaN (missing) becomes None, which JSON writes as null.
        vectors = np.where(np.isnan(matrix), None, matrix.astype(object)).tolist()
        vector_names = list(self.plan.vector)
        stage_keys = [f"features_{s}" for s in range(len(self.stages))]
        decisions = (scores >= threshold).tolist()
        score_list = scores.tolist()
        t0s = carried.t0.tolist()
        entity_fields = self.entity_fields
        predictions_topic, log_topic = self.topics["predictions"], self.topics["prediction_log"]
        outputs = outcome.outputs
        for row, i in enumerate(keep.tolist()):
            record = records[i]
            event_id = str(record[id_field])
            prediction = {
                id_field: event_id,
                "entity": {k: record[k] for k in entity_fields},
                "score": score_list[row],
                "decision": decisions[row],
                "model_version": version,
                "event_time": record[ts_field],
                "scored_at": scored_at,
            }
            total_ms = now_ms - t0s[i]
            latency = dict(zip(stage_keys, stage_ms[row]))
            latency.update(batch_features=batch_ms, score=score_ms, total=total_ms)
            log = {
                **prediction,
                "feature_service": self.plan.service,
                "threshold": threshold,
                "features": dict(zip(vector_names, vectors[row])),
                "latency_ms": latency,
                "arrival": carried.arrival[i],
                "event": record,
            }
            key = event_id.encode()
            outputs.append(Output(predictions_topic, key, orjson.dumps(prediction)))
            outputs.append(Output(log_topic, key, orjson.dumps(log)))
            outcome.latencies_s.append(total_ms / 1000)
        outcome.predictions += n
        metrics.PREDICTIONS_OUT.labels(version).inc(n)
        metrics.LATENCY.observe_many(outcome.latencies_s)


@dataclass
class Carried:
    """What travels with each valid event from stage to stage."""

    t0: np.ndarray  # Kafka timestamp (ms) of the original event: the start of its latency
    arrival: list  # [[partition, offset], ...] per stage so far
    features: np.ndarray  # stream features computed by earlier stages
    names: list[str]  # their qualified names
    stage_ms: list  # per event: feature time (ms) of each earlier stage's batch
    source_wm: np.ndarray  # first-stage watermark carried by each event


def _reason_kind(reason: str) -> str:
    """A small, fixed set of metric label values for DLQ reasons."""
    if reason.startswith("not valid JSON") or reason.startswith("not a JSON"):
        return "invalid_json"
    if reason.startswith("missing field"):
        return "missing_field"
    if reason.startswith("key field"):
        return "bad_key"
    return "wrong_type"


def forwarded_event(payload: bytes) -> dict:
    """The original event inside a record on a repartition topic."""
    return orjson.loads(payload)[0]
