"""Continuous training, as decisions: when to retrain, on which rows, whether the candidate may serve, and what next.

The autopilot's state is the deployments topic. Each of its actions is a
deployment record (`by: autopilot`) whose `autopilot` field names the
stage, the candidate, the trigger and the seq the decision was based on:

    idle ─trigger─► training ─gate─► shadow ─experiment: promote─► canary ─events, no guardrail─► promoted
                          └──────► refused   └─ stop / no verdict ─► refused  └─ guardrail / stop ─► rolled_back

A record is written at seq = base + 1. Workers apply a record only when
its seq is above the one serving, so of two records with the same seq the
first on the topic is the one that counts; an autopilot that reads back a
record other than its own at its seq has lost, and does nothing. A
restarted autopilot reads the topic and is where the last record left it.

The offline gate compares the candidate with the champion on the same
recent labeled events, held out of training: the champion's scores are
those it served, the candidate's are computed on the same served vectors.
The comparison is the paired one of stream/lifecycle/experiments.py
(champion's log loss minus the candidate's, per event) with its interval;
the candidate passes when the interval's lower end is above -margin.

Pure: records and arrays in, decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from stream.lifecycle import experiments as ex
from stream.lifecycle.evaluation import auc
from stream.serving.deployment import Deployment

BY = "autopilot"
IDLE, TRAINING, SHADOW, CANARY = "idle", "training", "shadow", "canary"
PROMOTED, REFUSED, ROLLED_BACK, OVERRIDDEN = "promoted", "refused", "rolled_back", "overridden"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The monitor's statistics (stream/monitor/) whose alerts are drift, not data quality.
DRIFT_STATISTICS = ("psi", "js", "linf", "ndcg")
#: Stages in which a candidate is on its way; any other stage may start a new training.
ACTIVE = (TRAINING, SHADOW, CANARY)


@dataclass(frozen=True)
class Policy:
    """When the autopilot retrains and how strictly it judges; every field has a flag in `sluice autopilot`."""

    schedule_s: float | None = None  # retrain when the last training (or the champion) is older than this
    min_new_labels: int | None = 5000  # ... when this many mature labels arrived after the last training's data
    drift: bool = True  # ... when the monitor sends a drift alert about the champion
    max_auc_drop: float | None = 0.05  # ... when the champion's AUC on recent mature rows fell this far below its validation AUC
    metric_rows: int = 2000  # the recent mature rows that AUC is measured on (at least MIN_POSITIVES positives)
    gate_share: float = 0.2  # the most recent share of mature labeled rows, held out of training for the gate
    gate_margin: float = 0.0  # the candidate may be worse than this (log loss per event) at the interval's lower end
    gate_min_rows: int = 500
    experiment: ex.Settings = field(default_factory=ex.Settings)
    max_shadow_labeled: int = 50_000  # a shadow experiment without a verdict after this many labeled events is refused
    canary_share: float = 0.1
    canary_events: int = 2000  # events on the canary arm, with no guardrail crossed, before promotion
    training_timeout_s: float = 3600.0  # a training claim without an outcome after this long may be claimed again
    cooldown_s: float = 3600.0  # no trigger fires within this long of the last training claim (a refused candidate
    # leaves the drift or the metric drop that triggered it in place: without a pause it would retrain every turn)


@dataclass(frozen=True)
class State:
    """Where the autopilot is, read from the deployments topic."""

    stage: str = IDLE
    candidate: str | None = None
    trigger: str | None = None
    since: Deployment | None = None  # the autopilot's latest record (None: it never acted)
    current: Deployment | None = None  # what serves: the latest applied record
    last_training_at: str | None = None  # `at` of the latest training claim
    data_end_ms: int | None = None  # event time of the newest row the latest candidate was trained on


def applied(history: list[Deployment]) -> list[Deployment]:
    """The records that took effect, in topic order: each with a seq above every record before it."""
    out: list[Deployment] = []
    for record in history:
        if not out or record.seq > out[-1].seq:
            out.append(record)
    return out


def state_of(history: list[Deployment]) -> State:
    """The autopilot's state from every deployment record (topic order)."""
    effective = applied(history)
    if not effective:
        return State()
    current = effective[-1]
    mine = [r for r in effective if r.by == BY and r.autopilot]
    if not mine:
        return State(current=current)
    last = mine[-1]
    meta = last.autopilot
    trainings = [r for r in mine if r.autopilot.get("stage") == TRAINING]
    ends = [r.autopilot["data_window"]["end_ms"] for r in mine if (r.autopilot.get("data_window") or {}).get("end_ms")]
    stage = meta.get("stage", IDLE)
    if stage in (SHADOW, CANARY) and current.seq != last.seq and not _serves(current, stage, meta.get("candidate")):
        # Someone else ended the experiment: a guardrail of `sluice rollout`, or an operator's `sluice deploy`.
        stage = ROLLED_BACK if current.by == "guardrail" else OVERRIDDEN
    return State(
        stage=stage, candidate=meta.get("candidate"), trigger=meta.get("trigger"), since=last, current=current,
        last_training_at=trainings[-1].at if trainings else None, data_end_ms=max(ends) if ends else None,
    )


def _serves(record: Deployment, stage: str, candidate: str | None) -> bool:
    return record.mode == stage and candidate in record.challengers


def record(state: State, stage: str, reason: str, at: str, claim: str, *, trigger: str | None = None,
           candidate: str | None = None, **changes) -> Deployment:
    """The autopilot's next record: what serves now with `changes`, at seq + 1, naming the seq it is based on."""
    base = state.current
    meta = {"stage": stage, "candidate": candidate if candidate is not None else state.candidate,
            "trigger": trigger if trigger is not None else state.trigger, "base_seq": base.seq, "claim": claim}
    meta.update(changes.pop("autopilot", {}))
    return base.but(seq=base.seq + 1, at=at, by=BY, reason=f"autopilot: {reason}", autopilot=meta, **changes)


# -- triggers ---------------------------------------------------------------


def due(state: State, policy: Policy, *, now_ms: int, champion_created_ms: int | None, alerts: list[dict],
        new_mature_labels: int, champion_auc: tuple[float, float] | None) -> str | None:
    """Why to train now (the trigger), or None. Only when no candidate is on its way.

    `alerts`: the monitor's drift alerts about the champion since the last
    training; `champion_auc`: (AUC on recent mature rows, validation AUC).
    """
    if state.stage in ACTIVE and not stale(state, policy, now_ms):
        return None
    if state.last_training_at and now_ms - ms_of(state.last_training_at) < policy.cooldown_s * 1000:
        return None
    if policy.drift:
        for alert in alerts:
            return f"drift:{alert.get('feature')}/{alert.get('statistic')}"
    if policy.max_auc_drop is not None and champion_auc is not None:
        online, validation = champion_auc
        if np.isfinite(online) and np.isfinite(validation) and online < validation - policy.max_auc_drop:
            return f"metric:auc {online:.4f} < validation {validation:.4f} - {policy.max_auc_drop:g}"
    if policy.min_new_labels is not None and new_mature_labels >= policy.min_new_labels:
        return f"labels:{new_mature_labels} new mature labels"
    if policy.schedule_s is not None:
        last = ms_of(state.last_training_at) if state.last_training_at else champion_created_ms
        if last is None or now_ms - last >= policy.schedule_s * 1000:
            return f"schedule:every {policy.schedule_s:g} s"
    return None


def stale(state: State, policy: Policy, now_ms: int) -> bool:
    """A training claim whose autopilot died before writing its outcome."""
    return state.stage == TRAINING and state.since is not None and bool(state.since.at) and (
        now_ms - ms_of(state.since.at) >= policy.training_timeout_s * 1000)


def ms_of(text: str) -> int:
    """Epoch milliseconds of an ISO-8601 UTC time, as records and deployments carry them."""
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(milliseconds=1)


def drift_alerts(records: list[dict], champion: str, after_ms: int | None) -> list[dict]:
    """The monitor's drift alerts about the champion's inputs, score or attributions, emitted after `after_ms`.

    Data-quality alerts (missing values, out of range, unseen entities) are left out: a model retrained on
    broken inputs learns the breakage.
    """
    out = []
    for r in records:
        if r.get("kind") != "alert" or r.get("model_version") != champion or r.get("statistic") not in DRIFT_STATISTICS:
            continue
        emitted = r.get("emitted_at")
        if after_ms is not None and (not emitted or ms_of(emitted) <= after_ms):
            continue
        out.append(r)
    return out


def mature(rows: list[dict], window_ms: int) -> tuple[list[dict], int | None]:
    """Rows whose label is final: labeled, and their label window closed by the label clock (the latest label time).

    The same rule as `sluice train --from-labeled`. Returns (rows, label clock).
    """
    times = [ms_of(r["label_time"]) for r in rows if r.get("label_time")]
    if not times:
        return [], None
    clock = max(times)
    keep = [r for r in rows if r.get("label") is not None and r.get("event_time")
            and ms_of(r["event_time"]) + window_ms <= clock]
    return keep, clock


def champion_auc(rows: list[dict], champion: str, n: int) -> float:
    """The champion's AUC on the `n` most recent mature rows it scored."""
    scored = [r for r in rows if (r.get("scores") or {}).get(champion) is not None]
    scored.sort(key=lambda r: r["event_time"])
    recent = scored[-n:]
    if not recent:
        return float("nan")
    return auc(np.array([r["label"] >= 0.5 for r in recent]), np.array([r["scores"][champion] for r in recent]))


# -- training set and gate --------------------------------------------------


def split(rows: list[dict], gate_share: float) -> tuple[list[dict], list[dict]]:
    """(training rows, gate rows): the most recent `gate_share` of the mature rows by event time is the gate's."""
    ordered = sorted(rows, key=lambda r: (r["event_time"], str(r.get("_key", ""))))
    cut = len(ordered) - int(round(len(ordered) * gate_share))
    return ordered[:cut], ordered[cut:]


def gate(labels, champion, candidate, policy: Policy) -> dict:
    """The candidate against the champion on the same labeled events: effect, interval, p-value, passed.

    Effect = champion's mean log loss - candidate's (> 0: the candidate is
    better); the interval is the paired confidence sequence's at the
    experiment's alpha (valid at this one look too, a little wider than a
    fixed-sample interval). Passed when its lower end is above -margin.
    """
    labels = np.asarray(labels, dtype=np.float64)
    settings = policy.experiment
    report = ex.Paired().update(labels, champion, candidate).report(settings)
    lower = report["interval"][0]
    enough = report["n"] >= policy.gate_min_rows and report["positives"] >= settings.min_positives
    passed = bool(enough and lower is not None and lower > -policy.gate_margin)
    if not enough:
        why = (f"{report['n']} gate rows ({report['positives']} positive), below {policy.gate_min_rows} "
               f"({settings.min_positives} positive)")
    elif passed:
        why = f"lower end {lower:.5f} > -{policy.gate_margin:g}"
    else:
        why = f"lower end {lower:.5f} <= -{policy.gate_margin:g}"
    return {
        "passed": passed, "metric": report["metric"], "effect": report["effect"], "interval": report["interval"],
        "p_value": report["p_value"], "n": report["n"], "positives": report["positives"], "margin": policy.gate_margin,
        "alpha": settings.alpha, "why": why,
        "auc_champion": _finite(auc(labels >= 0.5, np.asarray(champion))),
        "auc_candidate": _finite(auc(labels >= 0.5, np.asarray(candidate))),
    }


def _finite(x: float) -> float | None:
    """None for NaN (no positives or no negatives): model.json and the records are JSON, which has no NaN."""
    return float(x) if np.isfinite(x) else None


# -- the experiment ---------------------------------------------------------


def after_shadow(report: dict, policy: Policy) -> tuple[str, str] | None:
    """Shadow → canary when the paired experiment says promote; refused when it says stop or never decides."""
    summary = (f"{report['n']} labeled events, effect {report['effect']} interval {report['interval']}, "
               f"always-valid p {report['p_value']}")
    if report["decision"] == ex.PROMOTE:
        return CANARY, f"experiment says promote ({summary})"
    if report["decision"] == ex.STOP:
        return REFUSED, f"experiment says stop: the candidate is worse ({summary})"
    if report["n"] >= policy.max_shadow_labeled:
        return REFUSED, f"no verdict after {report['n']} labeled events ({summary})"
    return None


def after_canary(report: dict, canary_events: int, breach: str | None, policy: Policy) -> tuple[str, str] | None:
    """Canary → promoted once its arm served enough events with no guardrail crossed; rolled back otherwise."""
    if breach:
        return ROLLED_BACK, breach
    if report["decision"] == ex.STOP:
        return ROLLED_BACK, f"experiment says stop (effect {report['effect']}, interval {report['interval']})"
    if canary_events >= policy.canary_events:
        return PROMOTED, (f"{canary_events} canary events, no guardrail crossed; experiment "
                          f"{report['decision']} (effect {report['effect']}, interval {report['interval']}, "
                          f"p {report['p_value']})")
    return None
