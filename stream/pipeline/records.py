"""The `predictions` and `prediction_log` records: written here, and read back here.

`predictions` (key: event id) is what consumers act on:

    {<event id field>, "entity", "score", "decision", "model_version", "route", "event_time", "scored_at",
     "fallback", "reasons" (positive decisions only)}

`score` is null only where rules alone decided (the last step of a fallback
chain); `fallback` is null, or why the routed version did not answer.
Where the deployment explores (stream/serving/explore.py), both records add
`explored` (a would-be block let through: its `decision` is false) and
`propensity` (the probability the event had of being let through), and the
log `would_block` (the decision before exploration); `exploration(record)`
reads them, with what they mean for a record written without them.

`prediction_log` (same key) adds the app id (the consumer group: several
groups may share one prediction log, and each one's monitor judges its own
records only), and everything needed to explain, audit,
evaluate and retrain on exactly what was served: the FeatureService, the
threshold, the full vector by feature name (missing values as null), every
version's score (`scores`: champion, shadows, challengers), the business rule
that decided (`rule`), the batch views with no online row (`batch_missing`),
the reason codes where computed, the
latencies, where the event was read at each stage, and the event itself as
its producer wrote it. `event_time` and `scored_at` are ISO-8601 UTC with
milliseconds, whatever form the event's own timestamp field had.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import orjson
from orjson import Fragment

from features.spec import FeaturePlan
from stream.pipeline.events import iso_ms
from stream.pipeline.outcomes import RECORD_OVERHEAD

if TYPE_CHECKING:
    from stream.serving.scorer import Answer

#: Widest JSON text of a float or an int64.
_NUMBER_WIDTH = 24
#: Most versions one event is scored by (champion, challengers, one fallback), reason codes per event,
#: and the longest version id, route, fallback reason or rule name the size budget allows for.
MAX_VERSIONS, MAX_REASONS, MAX_TEXT = 8, 10, 128
#: Room for what `PredictionRecords.fixed_overhead` does not itemise (punctuation, model versions).
_SLACK = 512


class PredictionRecords:
    """Writes one event's two records for a plan; `read_prediction` / `read_log` read them back."""

    def __init__(self, plan: FeaturePlan, entity_fields: tuple[str, ...], n_stages: int, app_id: str | None = None):
        self.plan = plan
        self.app_id = app_id
        self.id_field = plan.schema.event_id
        self.entity_fields = entity_fields
        self.vector_names = list(plan.vector)
        self.stage_keys = [f"features_{s}" for s in range(n_stages)]
        self._latency_keys = (*self.stage_keys, "batch_features", "score", "total")

    def write(
        self, record: dict, event_time: str, answer: Answer, deployment: int, scored_at: str, vector: list,
        latency_ms: dict, arrival: list, raw: bytes, batch_missing: list, clock: int = 0,
    ) -> tuple[bytes, bytes, bytes]:
        """(key, prediction, log record); raises TypeError (orjson.JSONEncodeError) if one cannot be written.

        `deployment`: the sequence number of the deployment that served.
        """
        event_id = str(record[self.id_field])
        prediction = {
            self.id_field: event_id,
            "entity": {k: record[k] for k in self.entity_fields},
            "score": answer.score,
            "decision": answer.decision,
            "model_version": answer.version,
            "route": answer.route,
            "event_time": event_time,
            "scored_at": scored_at,
            "fallback": answer.fallback,
        }
        reasons = answer.reasons
        if answer.decision and reasons is not None:
            prediction["reasons"] = reasons
        explored = answer.exploration
        if explored is not None:
            prediction["explored"], prediction["propensity"] = explored.explored, explored.propensity
        body = orjson.dumps(prediction)
        # The log record begins with the prediction's fields, in the same order: its text is spliced in
        # rather than written twice (`reasons`, when the prediction has it, keeps its place there).
        log = {
            "app_id": self.app_id,
            "feature_service": self.plan.service,
            "deployment": deployment,
            "threshold": answer.threshold,
            "features": dict(zip(self.vector_names, vector)),
            "scores": answer.scores,
            "rule": answer.rule,
            "batch_missing": batch_missing,
        }
        if "reasons" not in prediction:
            log["reasons"] = reasons
        log.update({
            "latency_ms": latency_ms,
            "arrival": arrival,
            "clock": clock,  # the event's arrival clock: with arrival[0], its place in the arrival order
            "event": Fragment(raw),  # as it came: it is valid JSON already
        })
        if explored is not None:
            log["would_block"] = explored.would_block
        return event_id.encode(), body, body[:-1] + b"," + orjson.dumps(log)[1:]

    @staticmethod
    def event_times(event_ts_ms: np.ndarray) -> list[str]:
        """ISO-8601 UTC text with milliseconds for a batch of epoch-ms times (what `iso_ms` gives, vectorised)."""
        text = np.datetime_as_string(np.asarray(event_ts_ms, dtype=np.int64).astype("datetime64[ms]"), unit="ms")
        return [t + "Z" for t in text.tolist()]

    def latency(self, stage_ms: list[float], batch_ms: float, score_ms: float, total_ms: float) -> dict:
        if len(stage_ms) == len(self.stage_keys):  # the usual case: one dict, built once
            return dict(zip(self._latency_keys, (*stage_ms, batch_ms, score_ms, total_ms)))
        latency = dict(zip(self.stage_keys, stage_ms))
        latency.update(batch_features=batch_ms, score=score_ms, total=total_ms)
        return latency

    def fixed_overhead(self) -> int:
        """Bytes an event's log record adds to the event, apart from the values it echoes from it.

        The log is the largest output of an event (forwarded records hold
        less of the same); everything in it but the event and its echoed
        values has a size known from the plan.
        """
        words = ["entity", "score", "decision", "model_version", "event_time", "scored_at", "feature_service"]
        words += ["route", "fallback", "scores", "rule", "batch_missing", "reasons", "deployment"]
        words += ["threshold", "features", "latency_ms", "arrival", "clock", "event", "batch_features", "total", *self.entity_fields]
        words += ["explored", "propensity", "would_block", "false", "false"]
        words += [*self.stage_keys, self.id_field, self.plan.service, "app_id", self.app_id or ""]
        named = sum(len(orjson.dumps(w)) + 2 for w in words)
        vector = sum(len(orjson.dumps(name)) + 2 + _NUMBER_WIDTH for name in self.vector_names)
        numbers = (len(self.stage_keys) * 3 + 11) * _NUMBER_WIDTH  # latencies, arrival, score, threshold, propensity
        # Serving fields whose size the deployment bounds: scores of every version, reason codes of the
        # answering one, the route, the fallback reason, the rule and the views with missing rows.
        longest_name = max((len(orjson.dumps(n)) for n in self.vector_names), default=0)
        serving = MAX_VERSIONS * (MAX_TEXT + _NUMBER_WIDTH + 2) + MAX_REASONS * (longest_name + _NUMBER_WIDTH + 4)
        serving += 4 * MAX_TEXT + sum(len(orjson.dumps(v.name)) + 1 for v in self.plan.batch_views)
        return RECORD_OVERHEAD + _SLACK + named + vector + numbers + serving + 2 * len(iso_ms(0)) + 4


def read_prediction(value: bytes) -> dict:
    """A `predictions` record."""
    return orjson.loads(value)


def read_log(value: bytes) -> dict:
    """A `prediction_log` record; `event` is the event as its producer wrote it, parsed."""
    return orjson.loads(value)


def exploration(record: dict) -> tuple[bool, bool, float]:
    """(would_block, explored, propensity) of a prediction, log or labeled record.

    A record written without exploration fields was served by a deployment
    that did not explore: its decision is the would-be one, nothing was
    explored, and a block had no chance of being let through (propensity 0).
    """
    if "propensity" in record:
        explored = bool(record.get("explored"))
        would_block = bool(record.get("would_block", bool(record.get("decision")) or explored))
        return would_block, explored, float(record["propensity"])
    blocked = bool(record.get("decision"))
    return blocked, False, 0.0 if blocked else 1.0
