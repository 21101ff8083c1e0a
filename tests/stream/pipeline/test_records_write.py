"""An event's two records: the log record is the prediction's fields, then its own, whatever answered the event."""

from __future__ import annotations

import orjson
import pytest
from orjson import Fragment

from features.spec import EventSchema, FeaturePlan
from stream.pipeline.records import PredictionRecords
from stream.serving.explore import Outcome
from stream.serving.scorer import Answer

PLAN = FeaturePlan(
    service="svc",
    schema=EventSchema(fields=(("id", "string"), ("card", "string"), ("t", "timestamp")), event_id="id",
                       timestamp_field="t", topic="events", allowed_lateness_ms=1000),
    stream_views=(),
    batch_views=(),
    vector=("cv__n", "cv__s"),
    partition_key="card",
)


def _written_plainly(records: PredictionRecords, record, event_time, answer, deployment, scored_at, vector, latency,
                     arrival, raw, missing, clock) -> tuple[bytes, bytes]:
    """The two records as two dicts, each serialized on its own: what `write` must give, byte for byte."""
    prediction = {"id": str(record["id"]), "entity": {"card": record["card"]}, "score": answer.score,
                  "decision": answer.decision, "model_version": answer.version, "route": answer.route,
                  "event_time": event_time, "scored_at": scored_at, "fallback": answer.fallback}
    if answer.decision and answer.reasons is not None:
        prediction["reasons"] = answer.reasons
    if answer.exploration is not None:
        prediction["explored"] = answer.exploration.explored
        prediction["propensity"] = answer.exploration.propensity
    log = {**prediction, "app_id": records.app_id, "feature_service": "svc", "deployment": deployment,
           "threshold": answer.threshold, "features": dict(zip(PLAN.vector, vector)), "scores": answer.scores,
           "rule": answer.rule, "batch_missing": missing, "reasons": answer.reasons, "latency_ms": latency,
           "arrival": arrival, "clock": clock, "event": Fragment(raw)}
    if answer.exploration is not None:
        log["would_block"] = answer.exploration.would_block
    return orjson.dumps(prediction), orjson.dumps(log)


@pytest.mark.parametrize(
    "answer",
    [
        Answer(0.1, False, "v1", "champion", None, None, {"v1": 0.1}, 0.5, None),
        Answer(0.1, False, "v1", "champion", None, None, {"v1": 0.1}, 0.5, [["cv__n", 0.2]]),
        Answer(0.9, True, "v1", "champion", None, None, {"v1": 0.9, "v2": 0.7}, 0.5, [["cv__n", 0.4], ["cv__s", -0.1]]),
        Answer(0.9, True, "v1", "champion", None, None, {"v1": 0.9}, 0.5, None),
        Answer(None, True, None, "champion", "model_error", "amount_cap:over", {}, None, None),
        Answer(0.9, False, "v1", "explore", None, None, {"v1": 0.9}, 0.5, [["cv__s", 1.5]], Outcome(True, True, 0.05)),
        Answer(0.9, True, "v1", "explore", None, None, {"v1": 0.9}, 0.5, [["cv__s", 1.5]], Outcome(True, False, 0.05)),
    ],
    ids=["no-reasons", "reasons-not-blocked", "reasons-blocked", "blocked-no-reasons", "rules", "explored", "not-explored"],
)
def test_the_log_record_is_the_prediction_then_its_own_fields(answer):
    records = PredictionRecords(PLAN, ("card",), 2, app_id="app")
    raw = b'{"id":"e1","card":"c\\u00e9","t":"2026-12-07T00:00:00Z"}'
    args = ({"id": "e1", "card": "c\u00e9"}, "2026-12-07T00:00:00.000Z", answer, 3, "2026-12-07T00:00:01.000Z",
            [1.0, None], {"features_0": 0.5, "features_1": 0.25, "total": 12.0}, [[0, 7], [2, 9]], raw, ["profile"], 41)
    key, prediction, log = records.write(*args)
    assert key == b"e1"
    assert (prediction, log) == _written_plainly(records, *args)
