"""Reading the label join's results back: the `labeled` topic to parquet, per-version online metrics, the audit.

* `sink`: the `labeled` topic as a parquet dataset partitioned by day
  (`day=YYYY-MM-DD/`, the day of the prediction's event time; of the label
  time for records without a prediction), one record per (event id, kind,
  revision). A snapshot: it reads the topic from the start until quiet and
  replaces the dataset (`sluice labeled-sink`).
* `online_metrics`: what the status page and `sluice models show` display:
  per version, route and window of prediction time, realized metrics, the
  CBPE estimate, coverage, label delay and whether the window is provisional,
  computed from the `labeled` and `prediction_log` topics.
* `audit`: every count of `sluice demo --labels`, measured from the topics and
  the dataset.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

from stream.kafka.clients import topic_partitions
from stream.kafka.reader import assigned_consumer, read_topic
from stream.lifecycle import label_state as ls
from stream.lifecycle.label_join import CLOCK_KEY
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


def pending_bytes(bootstrap: str, changelog_topic: str) -> tuple[float, int]:
    """(mean bytes a pending prediction holds in the join's changelog: key, value and its index id; how many seen).

    A pending prediction is an entry with a prediction and no label yet, as
    it was written (the changelog keeps every version of every entry). The
    changelog is read to a marker appended to each partition, not until quiet.
    """
    sizes = []
    for msg in _read_to_end(bootstrap, changelog_topic):
        key, value = msg.key() or b"", msg.value()
        if not key.startswith(ls.ENTRY_PREFIX.encode()) or not value:
            continue
        entry = ls.decode(value)
        if entry.has_pred and not entry.has_label and not entry.closed:
            index = len(key) - len(ls.ENTRY_PREFIX) + 1  # its id in one bucket segment, and a separator
            sizes.append(len(key) + len(value) + index)
    return (float(np.mean(sizes)) if sizes else float("nan")), len(sizes)


def _read_to_end(bootstrap: str, topic: str, timeout_s: float = 300.0):
    """Every message of a table changelog, up to a marker appended to each partition now (exact on any broker)."""
    from faust.types.tuples import TP

    from stream.worker.consumer import mark_ends

    n = topic_partitions(bootstrap, topic)
    ends = {tp.partition: end for tp, end in mark_ends(bootstrap, [TP(topic, p) for p in range(n)]).items()}
    consumer = assigned_consumer(bootstrap, topic, n)
    try:
        done, deadline = set(), time.monotonic() + timeout_s
        while len(done) < n and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=0.5):
                if msg.error():
                    continue
                if msg.offset() >= ends[msg.partition()] - 1:
                    done.add(msg.partition())
                if msg.offset() < ends[msg.partition()] - 1:
                    yield msg
    finally:
        consumer.close()


def audit(bootstrap: str, *, labels_topic: str, labeled: list[dict], predictions: int) -> dict:
    """The join's counts: labels sent (read from the labels topic) and the outcome records by kind."""
    sent = sum(1 for m in read_topic(bootstrap, labels_topic, idle_s=2.0, timeout_s=300) if m.key() != CLOCK_KEY)
    kinds = Counter(r["kind"] for r in labeled)
    return {
        "labels_sent": sent,
        "labels_joined": kinds["joined"],
        "labels_duplicate": kinds["duplicate"],
        "labels_corrected": kinds["correction"],
        "labels_unmatched": kinds["unmatched_label"],
        "predictions_unlabeled": kinds["unlabeled"],
        "accounted": sent == kinds["joined"] + kinds["duplicate"] + kinds["correction"] + kinds["unmatched_label"],
        "predictions_accounted": predictions == kinds["joined"] + kinds["unlabeled"],
    }


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
