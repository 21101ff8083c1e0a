"""The autopilot's pure decisions: its state from deployment records, triggers, maturity, the gate, the experiment steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from stream.lifecycle import autopilot as ap
from stream.lifecycle import experiments as ex
from stream.serving.deployment import Deployment

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def _mine(seq, stage, candidate="v2", **kw) -> Deployment:
    meta = {"stage": stage, "candidate": candidate, "trigger": "manual", "base_seq": seq - 1, "claim": f"c{seq}"}
    meta.update(kw.pop("autopilot", {}))
    return Deployment(seq=seq, champion=kw.pop("champion", "v1"), by=ap.BY, autopilot=meta, at=_at(seq), **kw)


def test_the_first_record_at_a_seq_wins_and_later_losers_change_nothing():
    base = Deployment(seq=1, champion="v1")
    a = _mine(2, ap.TRAINING, candidate="")
    b = _mine(2, ap.TRAINING, candidate="", autopilot={"claim": "other"})
    shadow = _mine(3, ap.SHADOW, mode="shadow", challengers=("v2",))
    assert ap.applied([base, a, b, shadow]) == [base, a, shadow]
    state = ap.state_of([base, a, b, shadow])
    assert (state.stage, state.candidate, state.current.seq) == (ap.SHADOW, "v2", 3)
    assert state.last_training_at == a.at


def test_an_experiment_ended_by_someone_else_is_over():
    canary = _mine(3, ap.CANARY, mode="canary", challengers=("v2",), share=0.1)
    trip = canary.but(seq=4, mode="champion", challengers=(), share=0.0, by="guardrail", reason="guardrail: fallback")
    assert ap.state_of([canary, trip]).stage == ap.ROLLED_BACK
    manual = canary.but(seq=4, champion="v3", mode="champion", challengers=(), share=0.0, by="sluice deploy")
    assert ap.state_of([canary, manual]).stage == ap.OVERRIDDEN
    ramp = canary.but(seq=4, share=0.25, by="ramp")
    assert ap.state_of([canary, ramp]).stage == ap.CANARY


def test_record_is_based_on_what_serves():
    state = ap.state_of([Deployment(seq=5, champion="v1", fallback=("rules",))])
    rec = ap.record(state, ap.SHADOW, "gate passed", _at(1), "c", candidate="v2", mode="shadow", challengers=("v2",))
    assert (rec.seq, rec.by, rec.fallback, rec.autopilot["base_seq"], rec.autopilot["candidate"]) == (6, "autopilot", ("rules",), 5, "v2")
    assert Deployment.from_json(rec.to_json()) == rec


def test_triggers():
    policy = ap.Policy(schedule_s=3600, min_new_labels=100, max_auc_drop=0.05)
    idle = ap.State(current=Deployment(seq=1, champion="v1"))
    now = ap.ms_of(_at(10))
    quiet = dict(now_ms=now, champion_created_ms=ap.ms_of(_at(9.5)), alerts=[], new_mature_labels=99,
                 champion_auc=(0.93, 0.95))
    assert ap.due(idle, policy, **quiet) is None
    assert ap.due(idle, policy, **{**quiet, "new_mature_labels": 100}).startswith("labels:")
    assert ap.due(idle, policy, **{**quiet, "champion_auc": (0.89, 0.95)}).startswith("metric:auc")
    assert ap.due(idle, policy, **{**quiet, "champion_created_ms": ap.ms_of(_at(9))}).startswith("schedule:")
    alert = {"kind": "alert", "model_version": "v1", "feature": "amount", "statistic": "psi", "emitted_at": _at(9)}
    assert ap.due(idle, policy, **{**quiet, "alerts": [alert]}) == "drift:amount/psi"
    busy = ap.state_of([_mine(2, ap.SHADOW, mode="shadow", challengers=("v2",))])
    assert ap.due(busy, policy, **{**quiet, "alerts": [alert]}) is None
    # A training claim whose autopilot died: claimable again after the timeout.
    training = ap.state_of([_mine(2, ap.TRAINING, candidate="")])
    soon = ap.ms_of(_at(2.5))
    assert ap.due(training, policy, **{**quiet, "alerts": [alert], "now_ms": soon}) is None
    late = ap.ms_of(_at(2)) + int(policy.training_timeout_s * 1000)
    assert ap.due(training, policy, **{**quiet, "alerts": [alert], "now_ms": late}) == "drift:amount/psi"
    # After a refusal, what triggered it may still hold: nothing fires again within the cooldown.
    refused = ap.state_of([_mine(2, ap.TRAINING, candidate=""), _mine(3, ap.REFUSED)])
    drop = {**quiet, "champion_auc": (0.5, 0.95)}
    assert ap.due(refused, policy, **{**drop, "now_ms": ap.ms_of(_at(2.5))}) is None
    assert ap.due(refused, policy, **{**drop, "now_ms": ap.ms_of(_at(3))}).startswith("metric:auc")


def test_drift_alerts_only_about_the_champion_and_new():
    records = [
        {"kind": "alert", "model_version": "v1", "feature": "a", "statistic": "psi", "emitted_at": _at(1)},
        {"kind": "alert", "model_version": "v1", "feature": "b", "statistic": "psi", "emitted_at": _at(3)},
        {"kind": "alert", "model_version": None, "feature": "all", "statistic": "dlq_rate", "emitted_at": _at(3)},
        {"kind": "recovery", "model_version": "v1", "feature": "a", "statistic": "psi", "emitted_at": _at(4)},
        {"kind": "alert", "model_version": "v0", "feature": "c", "statistic": "psi", "emitted_at": _at(4)},
        {"kind": "alert", "model_version": "v1", "feature": "d", "statistic": "missing_share", "emitted_at": _at(4)},
    ]
    assert [r["feature"] for r in ap.drift_alerts(records, "v1", ap.ms_of(_at(2)))] == ["b"]
    assert [r["feature"] for r in ap.drift_alerts(records, "v1", None)] == ["a", "b"]


def test_only_mature_labels_count():
    day = 86_400_000
    rows = [{"event_time": _at(24 * d), "label_time": _at(24 * d + 1), "label": d % 2} for d in range(10)]
    rows.append({"event_time": _at(0), "label_time": None, "label": None})
    keep, clock = ap.mature(rows, 7 * day)
    assert clock == ap.ms_of(_at(24 * 9 + 1))
    assert [r["event_time"] for r in keep] == [_at(24 * d) for d in range(3)]  # day 3 + 7 d is after the clock


def test_split_holds_out_the_most_recent_rows():
    rows = [{"event_time": _at(h), "_key": str(h)} for h in (5, 1, 4, 2, 3)]
    fit, held = ap.split(rows, 0.4)
    assert [r["event_time"] for r in fit] == [_at(1), _at(2), _at(3)]
    assert [r["event_time"] for r in held] == [_at(4), _at(5)]


def _scores(seed, n, champion_noise, candidate_noise):
    rng = np.random.default_rng(seed)
    logit = rng.normal(-2.0, 1.2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)

    def noisy(s):
        return 1 / (1 + np.exp(-(logit + rng.normal(0, s, n))))

    return y, noisy(champion_noise), noisy(candidate_noise)


def test_gate_passes_a_better_candidate_and_refuses_a_worse_or_equal_one():
    policy = ap.Policy()
    y, champion, better = _scores(1, 3000, 1.2, 0.4)
    passed = ap.gate(y, champion, better, policy)
    assert passed["passed"] and passed["interval"][0] > 0 and passed["auc_candidate"] > passed["auc_champion"]
    # The interval is the paired confidence sequence's, recomputed here from its definition.
    d = ex.losses(y, champion)["log_loss"] - ex.losses(y, better)["log_loss"]
    r = ex.radius(d.std(ddof=1), len(d))
    assert passed["interval"] == pytest.approx([d.mean() - r, d.mean() + r], rel=1e-9)
    assert not ap.gate(y, better, champion, policy)["passed"]
    y, a, b = _scores(2, 3000, 0.8, 0.8)
    equal = ap.gate(y, a, b, policy)
    assert not equal["passed"] and equal["interval"][0] < 0 < equal["interval"][1]
    # A margin lets a candidate through that is not shown worse by more than it.
    assert ap.gate(y, a, b, ap.Policy(gate_margin=1.0))["passed"]
    # Too few rows: refused whatever the numbers; no positives: no AUC (null, not NaN).
    assert not ap.gate(y[:100], champion[:100], better[:100], policy)["passed"]
    none = ap.gate(np.zeros(600), champion[:600], better[:600], policy)
    assert not none["passed"] and none["auc_champion"] is None and "0 positive" in none["why"]


def _report(decision, n=1000):
    return {"decision": decision, "n": n, "effect": 0.01, "interval": [0.001, 0.02], "p_value": 0.01}


def test_shadow_and_canary_steps():
    policy = ap.Policy(max_shadow_labeled=5000, canary_events=100)
    assert ap.after_shadow(_report(ex.PROMOTE), policy)[0] == ap.CANARY
    assert ap.after_shadow(_report(ex.STOP), policy)[0] == ap.REFUSED
    assert ap.after_shadow(_report(ex.KEEP), policy) is None
    assert ap.after_shadow(_report(ex.KEEP, n=5000), policy)[0] == ap.REFUSED
    assert ap.after_canary(_report(ex.PROMOTE), 99, None, policy) is None
    assert ap.after_canary(_report(ex.KEEP), 100, None, policy)[0] == ap.PROMOTED
    assert ap.after_canary(_report(ex.PROMOTE), 100, "guardrail: fallback rate", policy) == (ap.ROLLED_BACK, "guardrail: fallback rate")
    assert ap.after_canary(_report(ex.STOP), 100, None, policy)[0] == ap.ROLLED_BACK
