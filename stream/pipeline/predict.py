"""The output step of the last stage: batch features, scoring and rules, then each event's two records.

`Predictor.predict` assembles the vectors (stream features plus batch
features), says which events' batch features are missing or untrusted,
has `stream.serving.scorer.score` route, score and decide the batch in one
call, and writes each answered event's prediction and log record. An event
nothing could answer, or whose records cannot be written or would not fit
the message limit, gets a dead letter instead.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import NamedTuple

import numpy as np

from features.spec import FeaturePlan
from stream import metrics
from stream.pipeline.copies import Copies
from stream.pipeline.events import iso_ms
from stream.pipeline.forwarded import Carried
from stream.pipeline.outcomes import RECORD_OVERHEAD, Output, oversize, tuple_new
from stream.pipeline.records import PredictionRecords
from stream.pipeline.vectors import Assembled, BatchFeatures, assemble
from stream.pipeline.windowed import Windowed
from stream.serving.scorer import Scored, Serving, score


class Predictions(NamedTuple):
    records: list[Output]  # per answered event: its prediction, then its log record
    dead_letters: list[Output]
    latencies_s: list[float]  # per answered event: from its Kafka timestamp to now


class Part(NamedTuple):
    """One partition's events after the window step, as `Predictor.predict_many` takes them."""

    windowed: Windowed
    records: list[dict]  # the decoded batch's events (`windowed.keep` indexes them)
    carried: Carried
    event_ts: np.ndarray  # event time (ms) per decoded event


class Predictor:
    """Scores the last stage's events for one plan."""

    def __init__(self, plan: FeaturePlan, writer: PredictionRecords, copies: Copies):
        self.plan = plan
        self.writer = writer
        self.copies = copies
        self.id_field = plan.schema.event_id

    def predict(
        self,
        serving: Serving,
        batch: BatchFeatures | None,
        windowed: Windowed,
        records: list[dict],
        carried: Carried,
        event_ts: np.ndarray,
        counted: bool = True,
    ) -> Predictions:
        """One partition's batch: `predict_many` with one part."""
        return self.predict_many(serving, batch, [Part(windowed, records, carried, event_ts)], counted)[0]

    def predict_many(self, serving: Serving, batch: BatchFeatures | None, parts: list[Part], counted: bool = True
                     ) -> list[Predictions]:
        """Several partitions' batches scored together; each gets its own records.

        `serving`: one deployment for the whole call (a swap applies at a
        call boundary). The events of every part are assembled, scored and
        decided in one call each (one batch-feature lookup, one model call
        per version): a fixed cost per call, not per partition. What an
        event is answered depends on the event alone (its route, sample
        and exploration draw are functions of its id and entity), so it is
        the same whichever events share its call.

        `counted` False: a question, not the stream (`stream.pipeline.ask`):
        the same records, and no metric counts them.
        """
        rows = [p.windowed.keep.tolist() for p in parts]
        n = sum(len(r) for r in rows)
        if not n:
            return [Predictions([], [], []) for _ in parts]
        batch_records = [p.records[i] for p, mine in zip(parts, rows) for i in mine]
        names = parts[0].windowed.names
        if any(p.windowed.names != names for p in parts):  # never in one stage: each part carries its stage's layout
            return [self.predict_many(serving, batch, [p], counted)[0] for p in parts]
        features = np.vstack([p.windowed.features for p in parts]) if len(parts) > 1 else parts[0].windowed.features
        assembled = assemble(self.plan, names, features, batch_records, list(range(n)), batch)
        matrix, batch_ms = assembled.matrix, assembled.batch_ms
        missing = missing_views(assembled, n)
        pk, id_field = self.plan.partition_key, self.id_field
        scored = score(
            serving, matrix, batch_records, [str(r[pk]) for r in batch_records],
            [str(r[id_field]) for r in batch_records], problems(assembled, missing, serving),
        )
        if counted:
            _count_stages(scored, batch_ms)
        now_ms = time.time() * 1000
        # NaN (missing) becomes None, which JSON writes as null.
        vectors = np.where(np.isnan(matrix), None, matrix.astype(object)).tolist()
        answers = scored.answers()
        unanswered = dict(scored.unanswered)
        context = (serving.deployment.seq, iso_ms(int(now_ms)), now_ms, batch_ms, scored.score_ms)
        # Every decoded event's time as text, for all parts in one conversion.
        stamps = self.writer.event_times(np.concatenate([p.event_ts for p in parts]))
        out, produced, first, at = [], [], 0, 0
        for part, mine in zip(parts, rows):
            times = stamps[at : at + len(part.event_ts)]
            out.append(self._write(part, mine, first, times, answers, vectors, missing, unanswered, context, produced, counted))
            first, at = first + len(mine), at + len(part.event_ts)
        if counted:
            count(scored, produced)
            metrics.LATENCY.observe_many([s for p in out for s in p.latencies_s])
        return out

    def _write(self, part: Part, rows: list[int], first: int, event_times: list[str], answers, vectors, missing,
               unanswered, context, produced: list[int], counted: bool) -> Predictions:
        """One part's records; `first`: its first row in the call's arrays, `event_times`: its events' times as text.

        Appends the rows written to `produced`.
        """
        deployment, scored_at, now_ms, batch_ms, score_ms = context
        records, carried, stage_ms = part.records, part.carried, part.windowed.stage_ms
        t0s = carried.t0.tolist()
        clocks = carried.clock.tolist()
        predictions_topic, log_topic = self.copies.topics["predictions"], self.copies.topics["prediction_log"]
        raws, write, latency, copies = carried.raw, self.writer.write, self.writer.latency, self.copies
        limit = copies.max_message_bytes
        roomy = limit - RECORD_OVERHEAD
        out, dead, latencies_s = [], [], []
        for j, i in enumerate(rows):
            row = first + j
            record = records[i]
            if row in unanswered:
                if counted:
                    metrics.UNANSWERED.inc()
                dead.append(copies.event_dead_letter(carried, i, record, "unanswered", unanswered[row]))
                continue
            total_ms = now_ms - t0s[i]
            try:
                key, body, logged = write(
                    record, event_times[i], answers[row], deployment, scored_at, vectors[row],
                    latency(stage_ms[j], batch_ms, score_ms, total_ms), carried.arrival[i], raws[i], missing[row],
                    clocks[i],
                )
            except TypeError as exc:  # orjson.JSONEncodeError
                dead.append(copies.event_dead_letter(carried, i, record, "unserializable", f"cannot write the prediction: {exc}"))
                continue
            if len(logged) + len(key) > roomy:  # the prediction is smaller than its log record
                too_large = oversize("prediction log record", key, logged, limit)
                if too_large is not None:
                    dead.append(copies.event_dead_letter(carried, i, record, "too_large", too_large))
                    continue
            out.append(tuple_new(Output, (predictions_topic, key, body, None, None)))
            out.append(tuple_new(Output, (log_topic, key, logged, None, None)))
            latencies_s.append(total_ms / 1000)
            produced.append(row)
        return Predictions(out, dead, latencies_s)


_CHILDREN: dict[tuple[int, str], tuple[object, object]] = {}


def _child(metric, label: str):
    """`metric.labels(label)`, looked up once per metric and label (a `labels` call costs microseconds, per call)."""
    entry = _CHILDREN.get((id(metric), label))
    if entry is None or entry[0] is not metric:
        entry = _CHILDREN[id(metric), label] = (metric, metric.labels(label))
    return entry[1]


def _count_stages(scored: Scored, batch_ms: float) -> None:
    _child(metrics.STAGE_SECONDS, "batch_features").observe(batch_ms / 1000)
    _child(metrics.STAGE_SECONDS, "score").observe(scored.score_ms / 1000)
    if scored.reason_ms:
        _child(metrics.STAGE_SECONDS, "reasons").observe(scored.reason_ms / 1000)
    for version in scored.errors:
        metrics.MODEL_ERRORS.labels(version).inc()


def missing_views(assembled: Assembled, n: int) -> list[list[str]]:
    """Per event: the batch views that had no online row for it."""
    views = [name for name, rows in assembled.missing.items() if rows.any()]
    if not views:
        return [[] for _ in range(n)]
    flags = list(zip(*(assembled.missing[name].tolist() for name in views)))  # per event: one flag per view
    return [[name for name, flag in zip(views, row) if flag] for row in flags]


def problems(assembled: Assembled, missing: list[list[str]], serving: Serving) -> list:
    """Per event: why its batch features cannot be trusted, or None.

    A store that failed or is bypassed concerns every event; an entity
    with no online row concerns only its event, and sends it to the
    fallback chain only where the deployment declares one (without one,
    the model scores it with those features missing, as it was trained to).
    """
    if assembled.problem is not None:
        return [assembled.problem] * len(missing)
    if not serving.deployment.fallback:
        return [None] * len(missing)
    return ["batch_features_missing" if views else None for views in missing]


def count(scored: Scored, produced: list[int]) -> None:
    """Counters once per batch and label value (a Prometheus increment per event costs microseconds)."""
    versions, routes, fallbacks, rules, shadows = Counter(), Counter(), Counter(), Counter(), Counter()
    reasons = explored = 0
    outcomes = scored.exploration
    for row in produced:
        if outcomes is not None and outcomes[row].explored:
            explored += 1
        version = scored.versions[row]
        versions[version] += 1
        routes[scored.routes[row]] += 1
        if scored.fallback[row] is not None:
            fallbacks[scored.fallback[row]] += 1
        if scored.rule[row] is not None:
            rules[scored.rule[row].split(":", 1)[0]] += 1
        if scored.reasons[row] is not None:
            reasons += 1
        if len(scored.all_scores[row]) > 1:
            shadows.update(v for v in scored.all_scores[row] if v != version)
    for version, n in versions.items():
        _child(metrics.PREDICTIONS_OUT, version or "rules").inc(n)
    for counter, counts in ((metrics.ROUTED, routes), (metrics.FALLBACKS, fallbacks),
                            (metrics.RULE_DECISIONS, rules), (metrics.SHADOW_SCORES, shadows)):
        for label, n in counts.items():
            _child(counter, label).inc(n)
    if reasons:
        metrics.REASON_CODES.inc(reasons)
    if explored:
        metrics.EXPLORED.inc(explored)
