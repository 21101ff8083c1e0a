"""The autopilot against the real broker: labeled, monitoring, prediction-log and deployment records on topics of
the test's own, a real registry (a copy of the trained repo's model directory), real LightGBM training.

The labeled records are what the label join writes (`labeled_record`), over vectors of the demo's
FeatureService drawn from a known model of fraud: three features carry it, the rest are noise. The
champion's served scores are that truth plus noise of a chosen size, so a trained candidate is better
(noisy champion) or worse (champion = the truth) by construction.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest

from features.feast_repo import load_plan, open_store
from stream.kafka.clients import make_producer
from stream.kafka.control import history, publish
from stream.lifecycle import autopilot as ap
from stream.lifecycle import label_state as ls
from stream.lifecycle.labeled import labeled_record
from stream.registry import CHAMPION, LocalStore
from stream.serving.deployment import Deployment
from stream.services.autopilot import Autopilot
from stream.settings import Settings

START = datetime(2026, 10, 1, tzinfo=UTC)
HOUR = 3_600_000
POLICY = ap.Policy(min_new_labels=1000, max_auc_drop=None, canary_events=600)


@pytest.fixture
def env(broker, trained_repo, tmp_path, unique):
    models = tmp_path / "models"
    shutil.copytree(trained_repo["model_dir"], models)
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers, repo_path=trained_repo["path"], model_dir=models, partitions=1,
        labeled_topic=unique("labeled"), deployments_topic=unique("deployments"), monitoring_topic=unique("monitoring"),
        prediction_log_topic=unique("log"),
    )
    plan = load_plan(open_store(trained_repo["path"]))
    champion = (models / "champion").read_text().strip()
    started = []

    def pilot(**kw) -> Autopilot:
        started.append(Autopilot(settings, policy=kw.pop("policy", POLICY), history=False, num_trees=60, **kw))
        return started[-1]

    yield {"settings": settings, "plan": plan, "champion": champion, "store": LocalStore(models), "pilot": pilot}
    for p in started:
        p.close()


def _truth(rng, n, width):
    x = rng.normal(size=(n, width))
    logit = -2.2 + 1.6 * x[:, 0] - 1.2 * x[:, 1] + 0.9 * x[:, 2]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, logit, y


def _noisy(rng, logit, noise):
    return 1 / (1 + np.exp(-(logit + rng.normal(0, noise, len(logit))))) if noise else 1 / (1 + np.exp(-logit))


def _records(plan, x, y, scores: dict, t0_ms: int, first: int, route="champion") -> list[dict]:
    """labeled records: event i at t0 + i minutes, labeled an hour later; `scores`: version -> array."""
    names = (plan.service, list(plan.vector))
    version = next(iter(scores))
    out = []
    for i in range(len(y)):
        at = t0_ms + i * 60_000
        pred = ls.Prediction(event_ms=at, scored_ms=at + 5, threshold=0.5, names_id=b"\0" * 8, vector=x[i],
                             model_version=version, route=route, scores={v: float(s[i]) for v, s in scores.items()})
        entry = ls.Entry(has_pred=True, has_label=True, revision=1, label=y[i], label_ms=at + HOUR, pred=pred)
        out.append(labeled_record(plan.schema.event_id, f"e{first + i}", "joined", entry, names))
    return out


def _produce(bootstrap, topic, records, key):
    producer = make_producer(bootstrap)
    for r in records:
        producer.produce(topic, key=str(r[key]).encode(), value=orjson.dumps(r))
    assert producer.flush(30) == 0


def _history(env) -> list[Deployment]:
    s = env["settings"]
    return history(s.bootstrap_servers, s.deployments_topic, Deployment.from_json)


def _step_until(pilot, tries=10) -> list[Deployment]:
    """Turns until the autopilot writes something (what it reads arrives within a turn or a few)."""
    for _ in range(tries):
        wrote = pilot.step()
        if wrote:
            return wrote
    return []


def _labeled_history(env, champion_noise, seed=3, n=4000):
    """30 days of labeled events served by the champion (scores: the truth + noise); the last 7 days not mature."""
    plan = env["plan"]
    rng = np.random.default_rng(seed)
    x, logit, y = _truth(rng, n, len(plan.vector))
    t0 = int(START.timestamp() * 1000)
    step_ms = 30 * 86_400_000 // n
    records = _records(plan, x, y, {env["champion"]: _noisy(rng, logit, champion_noise)}, t0, 0)
    for i, r in enumerate(records):  # spread over 30 days
        at = t0 + i * step_ms
        r["event_time"] = datetime.fromtimestamp(at / 1000, tz=UTC).isoformat(timespec="milliseconds")
        r["label_time"] = datetime.fromtimestamp((at + HOUR) / 1000, tz=UTC).isoformat(timespec="milliseconds")
    _produce(env["settings"].bootstrap_servers, env["settings"].labeled_topic, records, plan.schema.event_id)
    return t0 + n * step_ms


def test_a_better_candidate_is_promoted_and_a_restart_does_not_act_again(env):
    import lightgbm as lgb

    plan, champion, store, s = env["plan"], env["champion"], env["store"], env["settings"]
    end_ms = _labeled_history(env, champion_noise=2.0)
    pilot = env["pilot"]()
    wrote = _step_until(pilot)
    assert [r.autopilot["stage"] for r in wrote] == [ap.TRAINING, ap.SHADOW], [r.reason for r in wrote]
    claim, shadow = wrote
    candidate = shadow.autopilot["candidate"]
    assert claim.autopilot["trigger"].startswith("labels:") and shadow.challengers == (candidate,)
    assert (shadow.mode, shadow.autopilot["base_seq"], shadow.seq) == ("shadow", claim.seq, claim.seq + 1)
    # Lineage in the registry: parent, trigger, the data window (mature rows only, the gate's rows held out), the gate.
    meta = store.meta(candidate)
    gate, window = meta["gate"], meta["data_window"]
    assert meta["parent"] == champion and meta["trigger"] == claim.autopilot["trigger"]
    assert gate["passed"] and gate["interval"][0] > 0 and gate["auc_candidate"] > gate["auc_champion"]
    assert window["end"] < window["gate_start"] <= window["gate_end"]
    assert ap.ms_of(window["gate_end"]) + 7 * 86_400_000 <= ap.ms_of(window["label_clock"])
    assert window["rows"] + window["gate_rows"] < 4000  # the last 7 days were not mature
    assert store.aliases()["challenger"] == candidate and store.aliases()[CHAMPION] == champion

    # Shadow: both versions score new events; the candidate's scores are its own, on the served vectors.
    rng = np.random.default_rng(4)
    x, logit, y = _truth(rng, 3000, len(plan.vector))
    booster = lgb.Booster(model_file=str(store.folder(candidate) / "model.txt"))
    records = _records(plan, x, y, {champion: _noisy(rng, logit, 2.0), candidate: booster.predict(x)}, end_ms, 10_000)
    _produce(s.bootstrap_servers, s.labeled_topic, records, plan.schema.event_id)
    (canary,) = _step_until(pilot)
    assert (canary.mode, canary.challengers, canary.share, canary.autopilot["stage"]) == ("canary", (candidate,), 0.1, ap.CANARY)
    assert canary.autopilot["experiment"]["decision"] == "promote"

    # Canary: its arm serves events with no guardrail crossed; promoted once it has served enough.
    log = [{"deployment": canary.seq, "route": "canary", "entity": {plan.partition_key: f"c{i}"}, "score": 0.1,
            "fallback": None, "latency_ms": {"score": 1.0}, plan.schema.event_id: f"p{i}"} for i in range(600)]
    _produce(s.bootstrap_servers, s.prediction_log_topic, log, plan.schema.event_id)
    (promoted,) = _step_until(pilot)
    assert (promoted.mode, promoted.champion, promoted.challengers) == ("champion", candidate, ())
    assert promoted.autopilot["stage"] == ap.PROMOTED and promoted.autopilot["previous_champion"] == champion
    assert store.aliases()[CHAMPION] == candidate
    assert [r.seq for r in _history(env)] == [1, 2, 3, 4]

    # A restarted autopilot reads the topic, is where the last record left it, and does not act again.
    again = env["pilot"]()
    assert again.read_state().stage == ap.PROMOTED
    assert all(again.step() == [] for _ in range(3))
    assert [r.seq for r in _history(env)] == [1, 2, 3, 4]


def test_a_worse_candidate_is_refused_at_the_gate(env):
    store = env["store"]
    _labeled_history(env, champion_noise=0.0)  # the champion serves the truth itself
    before = {v.version for v in store.versions()}
    s = env["settings"]
    producer = make_producer(s.bootstrap_servers)
    for topic in (s.labeled_topic, s.monitoring_topic):
        producer.produce(topic, key=b"x", value=b"not json")
        producer.produce(topic, key=b"y", value=b"[1, 2]")
    assert producer.flush(30) == 0
    pilot = env["pilot"]()
    wrote = _step_until(pilot)
    assert [r.autopilot["stage"] for r in wrote] == [ap.TRAINING, ap.REFUSED], [r.reason for r in wrote]
    assert pilot.skipped == {s.labeled_topic: 2, s.monitoring_topic: 2}
    refused = wrote[-1]
    candidate = refused.autopilot["candidate"]
    gate = refused.autopilot["gate"]
    assert not gate["passed"] and gate["interval"][0] <= 0 and "refused at the gate" in refused.reason
    assert (refused.mode, refused.champion, refused.challengers) == ("champion", env["champion"], ())
    # Registered with its lineage, then retired: it can never serve.
    assert {v.version for v in store.versions()} - before == {candidate}
    assert store.status(candidate) == "retired" and store.meta(candidate)["gate"] == gate
    # No new labels since its data window: no trigger, nothing more written.
    assert pilot.step() == [] and len(_history(env)) == 2


def _copy_champion(env) -> str:
    """v2: the champion's model under another version id (what an experiment compares needs no training)."""
    store, champion = env["store"], env["champion"]
    return store.publish(store.folder(champion), {"parent": champion, "trigger": "test"})


def _autopilot_record(env, seq, stage, candidate, **changes) -> Deployment:
    state = ap.state_of(_history(env)) if seq > 1 else ap.State(current=Deployment(seq=0, champion=env["champion"]))
    record = ap.record(state, stage, f"test: {stage}", datetime.now(tz=UTC).isoformat(), f"test:{seq}",
                       candidate=candidate, **changes)
    publish(env["settings"].bootstrap_servers, env["settings"].deployments_topic, record)
    return record


def test_an_equal_candidate_is_never_promoted_however_long_the_experiment_watches(env):
    plan, champion, s = env["plan"], env["champion"], env["settings"]
    v2 = _copy_champion(env)
    _autopilot_record(env, 1, ap.SHADOW, v2, mode="shadow", challengers=(v2,))
    pilot = env["pilot"](policy=ap.Policy(min_new_labels=None, max_auc_drop=None, drift=False))
    # A run in which a fixed-sample z-test, read at every look, would have promoted v2 (z reaches 2.4).
    rng = np.random.default_rng(14)
    t0 = int((START + timedelta(days=40)).timestamp() * 1000)
    decisions, diffs, naive_z = [], [], []
    for look in range(20):  # 20 looks, 500 labeled events each: 10,000 in all
        x, logit, y = _truth(rng, 500, len(plan.vector))
        scores = {champion: _noisy(rng, logit, 0.8), v2: _noisy(rng, logit, 0.8)}
        _produce(s.bootstrap_servers, s.labeled_topic, _records(plan, x, y, scores, t0 + look * 500 * 60_000, look * 500),
                 plan.schema.event_id)
        assert pilot.step() == []
        decisions.append(pilot._report(pilot._state())["decision"])
        p = np.clip([scores[champion], scores[v2]], 1e-15, 1 - 1e-15)
        diffs.extend(-(y * np.log(p[0]) + (1 - y) * np.log1p(-p[0])) + (y * np.log(p[1]) + (1 - y) * np.log1p(-p[1])))
        naive_z.append(np.mean(diffs) / (np.std(diffs, ddof=1) / np.sqrt(len(diffs))))
    assert max(naive_z) > 1.96
    assert len(pilot.rows) == 10_000 and set(decisions) == {"keep running"}
    assert [r.autopilot["stage"] for r in _history(env)] == [ap.SHADOW]


def test_a_guardrail_trip_rolls_the_canary_back_once(env):
    plan, champion, store, s = env["plan"], env["champion"], env["store"], env["settings"]
    v2 = _copy_champion(env)
    canary = _autopilot_record(env, 1, ap.CANARY, v2, mode="canary", challengers=(v2,), share=0.5)
    # 10% of the canary arm's answers came from a fallback: above the 5% guardrail.
    log = [{"deployment": canary.seq, "route": "canary", "entity": {plan.partition_key: f"c{i}"}, "score": 0.1,
            "fallback": "model_error" if i % 10 == 0 else None, "latency_ms": {"score": 1.0},
            plan.schema.event_id: f"p{i}"} for i in range(600)]
    _produce(s.bootstrap_servers, s.prediction_log_topic, log, plan.schema.event_id)
    pilot = env["pilot"](policy=ap.Policy(min_new_labels=None, max_auc_drop=None, drift=False, canary_events=10_000))
    (back,) = _step_until(pilot)
    assert (back.mode, back.champion, back.challengers, back.autopilot["stage"]) == ("champion", champion, (), ap.ROLLED_BACK)
    assert "guardrail: fallback rate 0.100 > 0.05" in back.reason
    assert store.status(v2) == "retired" and store.aliases()[CHAMPION] == champion
    again = env["pilot"](policy=ap.Policy(min_new_labels=None, max_auc_drop=None, drift=False))
    assert again.read_state().stage == ap.ROLLED_BACK
    assert again.step() == [] and pilot.step() == []
    assert [r.seq for r in _history(env)] == [1, 2]


def test_two_autopilots_cannot_both_act(env):
    store = env["store"]
    _labeled_history(env, champion_noise=2.0)
    a, b = env["pilot"](), env["pilot"]()
    seen_by_b = b.read_state()
    while not seen_by_b.current or len(b.rows) < 4000:  # b has read everything before a acts
        seen_by_b = b.read_state()
    before = len(store.versions())
    wrote = a.step(force_trigger="manual")
    assert [r.autopilot["stage"] for r in wrote] == [ap.TRAINING, ap.SHADOW]
    # b decides on what it read before a's records: its claim takes no effect, so it does not train.
    assert b.turn(seen_by_b, force_trigger="manual") == []
    assert len(store.versions()) == before + 1
    records = _history(env)
    assert [r.autopilot["stage"] for r in ap.applied(records)] == [ap.TRAINING, ap.SHADOW]
    losers = [r for r in records if r not in ap.applied(records)]
    assert len(losers) == 1 and losers[0].seq == 1 and losers[0].autopilot["actor"] == b.actor
    # Read back, the state is a's, for both.
    assert b.read_state().stage == ap.SHADOW and json.dumps(b.read_state().candidate) == json.dumps(wrote[1].autopilot["candidate"])


def test_sluice_retrain_is_one_turn(env):
    import os
    import subprocess
    import sys

    s = env["settings"]
    _labeled_history(env, champion_noise=2.0)
    topics = {"SLUICE_LABELED_TOPIC": s.labeled_topic, "SLUICE_DEPLOYMENTS_TOPIC": s.deployments_topic,
              "SLUICE_MONITORING_TOPIC": s.monitoring_topic, "SLUICE_PREDICTION_LOG_TOPIC": s.prediction_log_topic}
    command = [sys.executable, "-m", "stream.cli", "retrain", "--bootstrap-servers", s.bootstrap_servers, "--repo",
               str(s.repo_path), "--model-dir", str(s.model_dir), "--partitions", "1", "--no-history", "--trees", "60",
               "--json"]

    def retrain(*extra) -> list[dict]:
        proc = subprocess.run([*command, *extra], capture_output=True, text=True, env={**os.environ, **topics}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    first = retrain("--trigger", "schedule:nightly")
    assert [(r["seq"], r["autopilot"]["stage"], r["autopilot"]["trigger"]) for r in first] == [
        (1, ap.TRAINING, "schedule:nightly"), (2, ap.SHADOW, "schedule:nightly")]
    assert env["store"].meta(first[1]["autopilot"]["candidate"])["trigger"] == "schedule:nightly"
    # The candidate is in shadow with no labels of its own yet: the next turn has nothing to do.
    assert retrain() == []
    assert [r.seq for r in _history(env)] == [1, 2]
