"""Batch scoring: the last stage's output step over a table of events, as the stream would have answered them.

`score_frame` takes events with their windowed features (computed by the
offline kernel, `features.sharded`) and answers them with the worker's own
steps: the vector in FeatureService order with batch features from the same
lookup (`stream.pipeline.vectors.assemble`), route, score, fall back and
decide (`stream.serving.scorer.score`), the prediction record's fields
(`stream.pipeline.records.PredictionRecords`). Nothing here knows about files
or processes; the driver (`stream.tools.batch`) feeds it one shard at a time.

A row per event comes out: `outcome` is `prediction`, or `late` (the stream
writes those to `<events>.late` and publishes no prediction; their serving
fields are null). `scored_at` is not written: it is the only field of a
prediction that depends on when it was made.
"""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd

from features.spec import FeaturePlan
from stream.pipeline.predict import missing_views, problems
from stream.pipeline.records import PredictionRecords
from stream.pipeline.vectors import assemble
from stream.serving.scorer import Serving, score

#: Columns the driver adds to the events: position in the history, event time (ms), stage it was late at (-1: not).
ROW, TS, LATE = "_row", "_ts", "_late_stage"
#: Columns of the output besides the event id field and the vector.
SERVING_COLUMNS = ("entity", "score", "decision", "model_version", "route", "event_time", "fallback", "threshold",
                   "rule", "reasons", "outcome")


def entity_fields(plan: FeaturePlan) -> tuple[str, ...]:
    """The fields of a prediction's `entity`: every join key, stream views first (as the engine names them)."""
    keys = tuple(dict.fromkeys(k for v in plan.stream_views for k in v.join_keys))
    return tuple(dict.fromkeys(keys + tuple(k for v in plan.batch_views for k in v.join_keys)))


def stream_names(plan: FeaturePlan) -> list[str]:
    return [f"{v.name}__{a.name}" for v in plan.stream_views for a in v.aggs]


def score_frame(plan: FeaturePlan, serving: Serving, batch, frame: pd.DataFrame) -> pd.DataFrame:
    """The prediction of every event of `frame` (events, `_row`, `_ts`, `_late_stage`, stream features).

    `batch` is what the worker looks batch features up with
    (`stream.pipeline.vectors.BatchFeatures`, or None: every batch feature
    missing). Rows come out in `frame`'s order.
    """
    late = frame[LATE].to_numpy() >= 0
    scored = frame[~late]
    parts = [_answered(plan, serving, batch, scored)] if len(scored) else []
    if late.any():
        parts.append(_late(plan, frame[late]))
    if not parts:
        return _empty(plan)
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return out.sort_values(ROW, kind="stable").drop(columns=ROW).reset_index(drop=True)


def read_fields(plan: FeaturePlan, rules: dict) -> list[str]:
    """The event fields scoring reads: the id, the keys, and the fields the business rules name.

    Records hold only these: building a dict per event costs more than
    scoring it, and no other field reaches a prediction.
    """
    named = [rules[r]["field"] for r in ("threshold", "allow", "deny") if rules.get(r)]
    named += [spec.get("field") for spec in rules.get("fallback", ()) if isinstance(spec, dict)]
    wanted = {plan.schema.event_id, plan.partition_key, *entity_fields(plan), *filter(None, named)}
    return [name for name, _ in plan.schema.fields if name in wanted]


def _records(plan: FeaturePlan, frame: pd.DataFrame, rules: dict) -> list[dict]:
    return frame[[f for f in read_fields(plan, rules) if f in frame]].to_dict("records")


def _answered(plan: FeaturePlan, serving: Serving, batch, frame: pd.DataFrame) -> pd.DataFrame:
    names = stream_names(plan)
    records = _records(plan, frame, serving.deployment.rules)
    n = len(records)
    rows = list(range(n))
    assembled = assemble(plan, names, frame[names].to_numpy(dtype=np.float64), records, rows, batch)
    missing = missing_views(assembled, n)
    pk, id_field = plan.partition_key, plan.schema.event_id
    result = score(
        serving, assembled.matrix, records, [str(r[pk]) for r in records], [str(r[id_field]) for r in records],
        problems(assembled, missing, serving),
    )
    if result.unanswered:
        # The stream dead-letters these (`unanswered`); a batch run names them all the same.
        for row, why in result.unanswered:
            result.fallback[row] = f"unanswered: {why}"
    keys = entity_fields(plan)
    out = {
        id_field: [str(r[id_field]) for r in records],
        "entity": [orjson.dumps({k: r[k] for k in keys}).decode() for r in records],
        "score": np.array([np.nan if s is None else s for s in result.scores], dtype=np.float64),
        "decision": result.decisions,
        "model_version": result.versions,
        "route": result.routes,
        "event_time": PredictionRecords.event_times(frame[TS].to_numpy()),
        "fallback": result.fallback,
        "threshold": np.array([np.nan if t is None else t for t in result.thresholds], dtype=np.float64),
        "rule": result.rule,
        "reasons": [None if (r is None or not d) else orjson.dumps(r).decode() for r, d in zip(result.reasons, result.decisions)],
        "outcome": ["prediction"] * n,
        ROW: frame[ROW].to_numpy(),
    }
    table = pd.DataFrame(out)
    vector = pd.DataFrame(assembled.matrix, columns=list(plan.vector))
    return pd.concat([table, vector], axis=1)


def _late(plan: FeaturePlan, frame: pd.DataFrame) -> pd.DataFrame:
    n = len(frame)
    records = _records(plan, frame, {})
    keys = entity_fields(plan)
    out = {
        plan.schema.event_id: [str(r[plan.schema.event_id]) for r in records],
        "entity": [orjson.dumps({k: r[k] for k in keys}).decode() for r in records],
        "score": np.full(n, np.nan),
        "decision": [None] * n,
        "model_version": [None] * n,
        "route": [None] * n,
        "event_time": PredictionRecords.event_times(frame[TS].to_numpy()),
        "fallback": [None] * n,
        "threshold": np.full(n, np.nan),
        "rule": [None] * n,
        "reasons": [None] * n,
        "outcome": ["late"] * n,
        ROW: frame[ROW].to_numpy(),
    }
    vector = pd.DataFrame(np.full((n, len(plan.vector)), np.nan), columns=list(plan.vector))
    return pd.concat([pd.DataFrame(out), vector], axis=1)


def _empty(plan: FeaturePlan) -> pd.DataFrame:
    columns = [plan.schema.event_id, *SERVING_COLUMNS, *plan.vector]
    return pd.DataFrame({c: [] for c in columns})
