"""The label join's results read back: the `labeled` topic to parquet (the labeled sink), per-version online metrics.

* `sink`: the `labeled` topic as a parquet dataset partitioned by day
  (`day=YYYY-MM-DD/`, the day of the prediction's event time; of the label
  time for records without a prediction), one record per (event id, kind,
  revision). A snapshot: it reads the topic from the start until quiet and
  replaces the dataset (`sluice labeled-sink`).
* `online_metrics`: what the status page and `sluice models show` display:
  per version, route and window of prediction time, realized metrics, the
  CBPE estimate, coverage, label delay and whether the window is provisional,
  computed from the `labeled` and `prediction_log` topics.

The pure step (one label joined to one prediction) is
stream.lifecycle.label_join; the counts `sluice demo --labels` checks are
measured by stream.tools.label_audit.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import orjson

from stream.kafka.reader import read_topic
from stream.lifecycle.labeled import record_id, to_frame
from stream.lifecycle.online_eval import OnlineEvaluation


def labeled_records(bootstrap: str, topic: str, id_field: str, idle_s: float = 5.0, timeout_s: float = 300.0) -> list[dict]:
    """Every record of the `labeled` topic once (a crash may have sent one twice, identical)."""
    seen, out = set(), []
    for msg in read_topic(bootstrap, topic, idle_s=idle_s, timeout_s=timeout_s):
        record = orjson.loads(msg.value())
        key = record_id(record, id_field)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def log_records(bootstrap: str, topic: str, id_field: str, idle_s: float = 5.0, timeout_s: float = 300.0) -> list[dict]:
    """Every prediction-log record once (the first of each event id)."""
    seen, out = set(), []
    for msg in read_topic(bootstrap, topic, idle_s=idle_s, timeout_s=timeout_s):
        if msg.key() not in seen:
            seen.add(msg.key())
            out.append(orjson.loads(msg.value()))
    return out


def write_dataset(records: list[dict], path: str | Path, id_field: str) -> int:
    """Replace the dataset at `path` with `records`, partitioned by day; returns the rows written."""
    path = Path(path)
    frame = to_frame(records, id_field)
    when = frame["event_time"].fillna(frame["label_time"])
    day = when.dt.strftime("%Y-%m-%d").fillna("unknown")
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    for value in sorted(day.unique()):
        part = staging / f"day={value}"
        part.mkdir()
        frame[(day == value).to_numpy()].to_parquet(part / "part-0.parquet", index=False)
    if path.exists():
        shutil.rmtree(path)
    staging.rename(path)
    return len(frame)


def sink(bootstrap: str, topic: str, path: str | Path, id_field: str, idle_s: float = 5.0) -> int:
    return write_dataset(labeled_records(bootstrap, topic, id_field, idle_s=idle_s), path, id_field)


def online_metrics(bootstrap: str, *, labeled_topic: str, prediction_log_topic: str, id_field: str,
                   window_ms: int = 86_400_000, label_window_ms: int = 7 * 86_400_000, idle_s: float = 3.0) -> list[dict]:
    """Per (version, route, window) metrics from the topics (see OnlineEvaluation.report)."""
    evaluation = OnlineEvaluation(id_field, window_ms=window_ms, label_window_ms=label_window_ms)
    for record in log_records(bootstrap, prediction_log_topic, id_field, idle_s=idle_s):
        evaluation.add_prediction(record, dedupe=False)
    for record in labeled_records(bootstrap, labeled_topic, id_field, idle_s=idle_s):
        evaluation.add_labeled(record, dedupe=False)
    return evaluation.report()


def version_summary(report: list[dict], version: str) -> dict:
    """For `sluice models show V`: per route, the latest matured window (realized) and the latest window (estimate).

    `report` is what `online_metrics` returns. A route with no matured window
    yet shows only the estimate, and the realized values of its provisional
    window so far, marked provisional.
    """
    out: dict[str, dict] = {}
    for row in report:
        if row["version"] != version:
            continue
        route = out.setdefault(row["route"], {"matured": None, "latest": None})
        if not row["provisional"]:
            route["matured"] = row
        route["latest"] = row
    return out
