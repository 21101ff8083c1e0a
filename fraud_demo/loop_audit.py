"""The loop demo's JSON line, read back from the topics (never from what the demo assumed).

`read_back` reads the deployments, monitoring, labeled and prediction-log
topics once the loop has settled and computes every number of the line:
labels joined, the first drift alert, the promotion and its trigger, the
AUCs of champion and candidate on the same labeled events, and the
promotions whose candidate was not better (false promotions).
"""

from __future__ import annotations

import numpy as np
import orjson

from stream.kafka.control import history
from stream.kafka.reader import read_topic
from stream.kafka.topics import AppTopics
from stream.lifecycle import autopilot as ap
from stream.lifecycle.evaluation import auc
from stream.lifecycle.labeled import rows as latest_rows
from stream.serving.deployment import Deployment
from stream.services import labels as labeled_sink


def read_back(bootstrap: str, topics: AppTopics, id_field: str, champion: str, switch_ms: int,
              labeled: list[dict]) -> dict:
    """The JSON line, from the topics: deployments, monitoring, labeled, prediction_log, events."""
    events = sum(1 for _ in read_topic(bootstrap, topics.events, idle_s=2.0, timeout_s=300))
    log = labeled_sink.log_records(bootstrap, topics.prediction_log, id_field, idle_s=2.0)
    deployments = ap.applied(history(bootstrap, topics.deployments, Deployment.from_json))
    alerts = [orjson.loads(m.value()) for m in read_topic(bootstrap, topics.monitoring, idle_s=2.0, timeout_s=120)]
    rows = [r for r in latest_rows(labeled, id_field).values() if r.get("label") is not None]
    mine = [d for d in deployments if d.by == ap.BY]
    promotions = [d for d in mine if d.autopilot.get("stage") == ap.PROMOTED]
    first = promotions[0] if promotions else None
    candidate = first.autopilot["candidate"] if first else None
    before = [r for r in rows if ap.ms_of(r["event_time"]) < switch_ms]
    after = [r for r in rows if ap.ms_of(r["event_time"]) >= switch_ms]
    both = [r for r in after if candidate and _score(r, champion) is not None and _score(r, candidate) is not None]
    post_log = [r for r in log if ap.ms_of(r["event_time"]) >= switch_ms]
    return {
        "events": events,
        "labels_joined": sum(1 for r in labeled if r["kind"] == "joined"),
        "drift_alert_after_events": _first_alert(alerts, champion, switch_ms, post_log),
        "retrain_trigger": first.autopilot.get("trigger") if first else None,
        "candidate_version": candidate,
        "promoted": first is not None,
        "auc_champion_before_drift": _auc(before, champion),
        "auc_champion_after_drift": _auc(both, champion),
        "auc_promoted_after_drift": _auc(both, candidate) if candidate else None,
        "events_from_drift_to_promotion": (sum(1 for r in post_log if int(r.get("deployment") or 0) < first.seq)
                                           if first else None),
        "experiment_p_value": (first.autopilot.get("experiment") or {}).get("p_value") if first else None,
        "false_promotions": false_promotions(promotions, after),
    }


def false_promotions(promotions: list[Deployment], after: list[dict]) -> int:
    """Promotions whose candidate is not better than the champion it replaced on the same post-drift labeled events."""
    count = 0
    for record in promotions:
        new, old = record.autopilot["candidate"], record.autopilot.get("previous_champion")
        same = [r for r in after if _score(r, new) is not None and _score(r, old) is not None]
        a_new, a_old = _auc(same, new), _auc(same, old)
        count += a_new is None or a_old is None or a_new <= a_old
    return count


def _first_alert(alerts: list[dict], champion: str, switch_ms: int, post_log: list[dict]) -> int | None:
    """Events after the switch up to the last event of the first drift alert's window about the champion."""
    drift = [a for a in ap.drift_alerts(alerts, champion, None)
             if a.get("last_event_time") and ap.ms_of(_iso(a["last_event_time"])) >= switch_ms]
    if not drift:
        return None
    end = min(ap.ms_of(_iso(a["last_event_time"])) for a in drift)
    return sum(1 for r in post_log if ap.ms_of(r["event_time"]) <= end)


def _iso(text: str) -> str:
    return text[:-1] + "+00:00" if text.endswith("Z") else text


def _score(row: dict, version: str | None):
    return (row.get("scores") or {}).get(version) if version else None


def _auc(rows: list[dict], version: str | None) -> float | None:
    scored = [r for r in rows if _score(r, version) is not None]
    if not scored:
        return None
    value = auc(np.array([r["label"] >= 0.5 for r in scored]), np.array([_score(r, version) for r in scored]))
    return round(float(value), 4) if np.isfinite(value) else None
