"""The `labeled` records the label join writes, and the rows they add up to.

A record (key: event id) is one of the join's outcomes (see
`stream.lifecycle.label_join`):

    {"kind": "joined" | "correction" | "duplicate" | "unlabeled" | "unmatched_label",
     <event id field>, "revision", "label" (null: none), "label_time", "label_source": "label" | "window",
     "previous_label", "previous_label_source" (correction only),
     and where the prediction is known (not on duplicates):
     "model_version", "route", "scores" {version: score}, "threshold", "feature_service",
     "features" {name: value | null} (the exact vector served), "event_time", "scored_at", "fallback",
     and where the deployment explored: "would_block", "explored", "propensity" (stream/serving/explore.py)}

(event id, kind, revision) identifies a record; after a crash the same record
may come twice, identical. An event's *row* is its latest record that
carries the prediction (highest revision; at a tie a correction or a join
after the window's default): the vector that was served and the label known
now. `rows` turns records into those rows; `to_frame` makes them a table for
parquet and training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from stream.pipeline.events import iso_ms

#: Kinds whose record carries the prediction (vector, scores).
ROW_KINDS = ("joined", "correction", "unlabeled")
#: At equal revision the later kind wins ("unlabeled" with the default, then a label).
_KIND_RANK = {"unlabeled": 0, "joined": 1, "correction": 2}


def _label_value(x: float):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return int(x) if float(x).is_integer() else float(x)


_MINUTES: dict[int, str] = {}  # epoch minute -> "YYYY-MM-DDTHH:MM:"
_SECONDS = [f"{s:02d}." for s in range(60)]
_MILLIS = [f"{m:03d}Z" for m in range(1000)]


def fast_iso_ms(epoch_ms: int) -> str:
    """`iso_ms` from cached parts: three of these per record cost more than the rest of the record."""
    seconds, ms = divmod(int(epoch_ms), 1000)
    minute, second = divmod(seconds, 60)
    prefix = _MINUTES.get(minute)
    if prefix is None:
        if len(_MINUTES) > 100_000:
            _MINUTES.clear()
        prefix = _MINUTES[minute] = iso_ms(minute * 60_000)[:17]
    return prefix + _SECONDS[second] + _MILLIS[ms]


def labeled_record(id_field: str, event_id: str, kind: str, entry, names, previous=None, at_ms=None) -> dict:
    """One outcome record for `entry` (a label_state.Entry).

    `names`: (FeatureService, feature names), or None; `previous`: (label, source) a correction replaces.
    """
    record = {
        "kind": kind,
        id_field: event_id,
        "revision": entry.revision,
        "label": _label_value(entry.label) if entry.has_label else None,
        "label_time": None if entry.label_ms < -(2**61) else fast_iso_ms(at_ms if at_ms is not None else entry.label_ms),
        "label_source": ("window" if entry.from_window else "label") if entry.has_label else None,
    }
    if kind == "duplicate":
        return record
    if previous is not None:
        record["previous_label"] = _label_value(previous[0])
        record["previous_label_source"] = previous[1]
    p = entry.pred
    if p is not None and names is not None:
        service, names = names
        values = [None if v != v else v for v in p.vector.tolist()]  # NaN (missing) as null
        record.update(
            model_version=p.model_version,
            score=p.scores.get(p.model_version),
            route=p.route,
            scores=p.scores,
            threshold=None if math.isnan(p.threshold) else p.threshold,
            feature_service=service,
            features=dict(zip(names, values)),
            event_time=fast_iso_ms(p.event_ms),
            scored_at=fast_iso_ms(p.scored_ms),
            fallback=p.fallback,
        )
        if p.exploration is not None:
            record["would_block"], record["explored"], record["propensity"] = p.exploration
    return record


def record_id(record: dict, id_field: str) -> tuple[str, str, int]:
    """What identifies a record (the same after a crash re-sent it)."""
    return str(record[id_field]), record["kind"], int(record["revision"])


def rows(records: Iterable[dict], id_field: str) -> dict[str, dict]:
    """Event id -> its row: the latest record that carries the prediction (see the module docstring)."""
    out: dict[str, dict] = {}
    for record in records:
        if record["kind"] not in ROW_KINDS or "features" not in record:
            continue
        event_id = str(record[id_field])
        rank = (int(record["revision"]), _KIND_RANK[record["kind"]])
        held = out.get(event_id)
        if held is None or rank >= (int(held["revision"]), _KIND_RANK[held["kind"]]):
            out[event_id] = record
    return out


def to_frame(records: Iterable[dict], id_field: str) -> pd.DataFrame:
    """Records as a table: one column per feature (float64), scores as `score__<version>`; text as `string`."""
    records = list(records)
    names = list(dict.fromkeys(n for r in records if "features" in r for n in r["features"]))
    versions = sorted({v for r in records for v in (r.get("scores") or {})})
    n = len(records)
    frame = pd.DataFrame({
        id_field: [str(r[id_field]) for r in records],
        "kind": [r["kind"] for r in records],
        "revision": np.array([r["revision"] for r in records], dtype=np.int64),
        "label": np.array([np.nan if r.get("label") is None else r["label"] for r in records], dtype=np.float64),
        "label_time": pd.to_datetime([r.get("label_time") for r in records], utc=True, format="ISO8601"),
        "label_source": [r.get("label_source") for r in records],
        "model_version": [r.get("model_version") for r in records],
        "route": [r.get("route") for r in records],
        "threshold": np.array([np.nan if r.get("threshold") is None else r["threshold"] for r in records], dtype=np.float64),
        "event_time": pd.to_datetime([r.get("event_time") for r in records], utc=True, format="ISO8601"),
        "scored_at": pd.to_datetime([r.get("scored_at") for r in records], utc=True, format="ISO8601"),
        "fallback": [r.get("fallback") for r in records],
        "feature_service": [r.get("feature_service") for r in records],
        # Exploration (NaN where the deployment did not explore): what training weighs rows by.
        "would_block": pd.array([r.get("would_block") for r in records], dtype="boolean"),
        "explored": pd.array([r.get("explored") for r in records], dtype="boolean"),
        "propensity": np.array([np.nan if r.get("propensity") is None else r["propensity"] for r in records], dtype=np.float64),
    })
    for v in versions:
        frame[f"score__{v}"] = np.array([(r.get("scores") or {}).get(v, np.nan) for r in records], dtype=np.float64)
    for name in names:
        col = np.full(n, np.nan)
        for i, r in enumerate(records):
            value = (r.get("features") or {}).get(name)
            if value is not None:
                col[i] = value
        frame[name] = col
    # pandas 3 writes text as large_string, which other parquet readers (and Feast) refuse.
    for col in (id_field, "kind", "label_source", "model_version", "route", "fallback", "feature_service"):
        frame[col] = frame[col].astype("string")
    return frame

