"""Real-shaped records for the status page's tests, written by the engine's own writers.

Prediction log records come from `PredictionRecords` over a small hand-made
plan, dead-letter and late copies from `copy_of`; monitoring, deployments and
labeled records follow the shapes their writers document.
"""

from __future__ import annotations

import random
import time

import orjson

from features.spec import EventSchema, FeaturePlan, StreamView, make_agg
from stream.pipeline.events import iso_ms
from stream.pipeline.outcomes import copy_of
from stream.pipeline.records import PredictionRecords
from stream.serving.scorer import Answer

SCHEMA = EventSchema(
    fields=(("transaction_id", "string"), ("card_id", "string"), ("amount", "double"), ("ts", "timestamp")),
    event_id="transaction_id", timestamp_field="ts", topic="txn", allowed_lateness_ms=60_000,
)
PLAN = FeaturePlan(
    service="fraud_v1", schema=SCHEMA,
    stream_views=(StreamView("card", ("card_id",), (make_agg("card", "n_1h", "count", "amount", 3_600_000, None),)),),
    batch_views=(), vector=("card__n_1h", "card__amount_sum_1h", "profile__age_days"), partition_key="card_id",
)
WRITER = PredictionRecords(PLAN, ("card_id",), 1)
#: (version, route) of the rows, in proportion 4 : 1.
ARMS = (("v1", "champion"),) * 4 + (("v2", "canary"),)


def prediction_logs(n: int, seed: int, start: int = 0) -> list[dict]:
    """`n` prediction log records as the worker writes them (parsed back), with varied latencies and nulls."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    out = []
    for i in range(start, start + n):
        version, route = ARMS[i % len(ARMS)]
        score = rng.random()
        decision = score > 0.8
        fallback = "store_slow" if i % 25 == 0 else None
        vector = [float(rng.randint(0, 9)), rng.random() * 100, None if i % 10 == 0 else float(rng.randint(1, 900))]
        event = {"transaction_id": f"t{i}", "card_id": f"c{i % 17}", "amount": 12.5, "ts": iso_ms(now_ms)}
        answer = Answer(score, decision, version, route, fallback, None, {version: score}, 0.8, None)
        total_ms = rng.uniform(2.0, 40.0)
        latency = WRITER.latency([total_ms * 0.3], 0.4, 0.6, total_ms)
        _, _, log = WRITER.write(
            event, iso_ms(now_ms), answer, 3, iso_ms(now_ms), vector, latency, [[0, i]], orjson.dumps(event),
            ["profile"] if i % 10 == 0 else [],
        )
        out.append(orjson.loads(log))
    return out


#: Dead letters (reason, count) and late copies (count) the tests write.
DEAD_LETTERS = (("not valid JSON: unexpected character at line 1", 4), ("missing field 'card_id'", 3))
LATE = 5


def dead_letters(events_topic: str) -> list:
    out = []
    for reason, count in DEAD_LETTERS:
        for i in range(count):
            out.append(copy_of(f"{events_topic}.dlq", b"k", b"{bad", reason, f"{events_topic}/0/{i}", 1_000_000))
    return out


def late_copies(events_topic: str) -> list:
    reason = "late: event time is more than 60000 ms behind stream time"
    return [copy_of(f"{events_topic}.late", b"c1", b"{}", reason, f"{events_topic}/1/{i}", 1_000_000) for i in range(LATE)]


FEATURES = ("card__n_1h", "card__amount_sum_1h", "profile__age_days")
#: PSI per feature in four windows: amount_sum drifts in the last one (open), n_1h crosses and recovers.
PSI = {
    "card__n_1h": [0.02, 0.3, 0.05, 0.04],
    "card__amount_sum_1h": [0.01, 0.03, 0.08, 0.35],
    "profile__age_days": [0.0, 0.01, 0.02, 0.01],
}


def _window(w: int) -> dict:
    return {"start": f"2026-11-01T0{w}:00:00.000Z", "end": f"2026-11-01T0{w + 1}:00:00.000Z", "events": 5000,
            "sub_windows": 24, "time": "event"}


def alert_records() -> list[dict]:
    """What the drift monitor's AlertBook writes to `monitoring` for the PSI values above (default PSI rule)."""
    from stream.monitor.alerts import AlertBook, Check
    from stream.monitor.thresholds import DEFAULT_RULES

    book, out = AlertBook(hysteresis=0.2, clear_after=1), []
    for w in range(4):
        for feature in FEATURES:
            window = _window(w)
            check = Check("v1", feature, "psi", PSI[feature][w], None, window, window["start"], window["end"])
            record = book.observe(check, DEFAULT_RULES["psi"], f"2026-11-01T0{w + 1}:00:05.000Z")
            if record is not None:
                out.append(record)
    return out


#: The monitor's missing share of profile__age_days per model version: two versions, one feature and statistic.
MISSING_SHARE = {"v1": 0.75, "v2": 1.0}
#: Consumer-lag series the monitor exports: a gauge per (group, topic, partition), 48 of them.
LAG_PARTITIONS = 24


def drift_gauges(w: int) -> list:
    """The monitor's gauges after judging window `w`: (gauge, labels, value) updates, then the window's bounds."""
    updates = [("DRIFT", {"model_version": "v1", "feature": f, "statistic": "psi"}, PSI[f][w]) for f in FEATURES]
    updates += [("DRIFT", {"model_version": "v1", "feature": f, "statistic": "js"}, PSI[f][w] / 3) for f in FEATURES]
    for version, share in MISSING_SHARE.items():
        updates.append(("QUALITY", {"model_version": version, "feature": "profile__age_days", "statistic": "missing_share"}, share))
    updates.append(("set_window", {"version": "v1", "window": _window(w)}, None))
    return updates


def lag_gauges() -> list:
    """Consumer lag per partition of the workers' input and the monitor's own: many raw gauge series."""
    return [
        ("CONSUMER_LAG", {"group": group, "topic": topic, "partition": str(p)}, float(p % 7))
        for group, topic in (("ui-app", "txn"), ("ui-app-monitor", "prediction_log"))
        for p in range(LAG_PARTITIONS)
    ]


def deployment_records() -> list[dict]:
    return [
        {"seq": 2, "champion": "v1", "canary": None, "reason": "first deployment"},
        {"seq": 3, "champion": "v1", "canary": {"version": "v2", "share": 0.2}, "reason": "canary step"},
    ]


def labeled(logs: list[dict]) -> tuple[list[tuple[bytes, bytes]], dict[str, tuple]]:
    """`labeled` records of every third prediction, by the label join's writer, and each event's final row.

    Labels: fraud where the score is above 0.7. The first row is then
    corrected (its label flipped), the second one re-sent as after a crash,
    and one more prediction is written as unlabeled (its window closed with
    no label). Two more windows close with the FeatureService's default label
    (0, as the demo's "legitimate after 7 days"); a fraud label then corrects
    one of them: that row is labeled only through a correction.
    Rows: event id -> (version, label or None, flagged at its threshold).
    """
    import math

    import numpy as np

    from stream.lifecycle.label_state import Entry, Prediction
    from stream.lifecycle.labeled import labeled_record

    now_ms = int(time.time() * 1000)
    out, rows = [], {}

    def entry(r: dict, label, revision: int, from_window: bool = False) -> Entry:
        vector = np.array([math.nan if v is None else v for v in r["features"].values()])
        pred = Prediction(now_ms, now_ms, r["threshold"], b"\0" * 8, vector, r["model_version"], r["route"], r["scores"], r["fallback"])
        return Entry(has_pred=True, has_label=label is not None, revision=revision, label=math.nan if label is None else float(label),
                     label_ms=now_ms, pred=pred, from_window=from_window, closed=from_window)

    names = (PLAN.service, list(PLAN.vector))

    def write(*args, **kwargs) -> bytes:
        record = labeled_record(*args, **kwargs)
        return record if isinstance(record, bytes) else orjson.dumps(record)

    for r in logs[::3]:
        label = int(r["score"] > 0.7)
        out.append((r["transaction_id"].encode(), write(
            SCHEMA.event_id, r["transaction_id"], "joined", entry(r, label, 1), names)))
        rows[r["transaction_id"]] = (r["model_version"], label, r["score"] >= r["threshold"])
    first = logs[0]
    version, label, flagged = rows[first["transaction_id"]]
    out.append((first["transaction_id"].encode(), write(
        SCHEMA.event_id, first["transaction_id"], "correction", entry(first, 1 - label, 2), names, previous=(label, "label"))))
    rows[first["transaction_id"]] = (version, 1 - label, flagged)
    out.append(out[1])  # re-sent, identical
    out.append((logs[1]["transaction_id"].encode(), write(
        SCHEMA.event_id, logs[1]["transaction_id"], "unlabeled", entry(logs[1], None, 0), names)))
    rows[logs[1]["transaction_id"]] = (logs[1]["model_version"], None, logs[1]["score"] >= logs[1]["threshold"])
    for r in (logs[2], logs[5]):  # windows closed with the default label
        out.append((r["transaction_id"].encode(), write(
            SCHEMA.event_id, r["transaction_id"], "unlabeled", entry(r, 0, 0, from_window=True), names)))
        rows[r["transaction_id"]] = (r["model_version"], 0, r["score"] >= r["threshold"])
    corrected = logs[2]  # a fraud label after the window's default: labeled only through this correction
    out.append((corrected["transaction_id"].encode(), write(
        SCHEMA.event_id, corrected["transaction_id"], "correction", entry(corrected, 1, 1), names, previous=(0, "window"))))
    rows[corrected["transaction_id"]] = (corrected["model_version"], 1, corrected["score"] >= corrected["threshold"])
    return out, rows
