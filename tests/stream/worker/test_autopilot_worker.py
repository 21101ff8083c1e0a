"""The autopilot with a real worker: the worker applies the autopilot's records (shadow, canary, promotion), scores
events with the candidate the autopilot trained from served vectors, and the autopilot judges the canary from the
worker's own prediction log."""

from __future__ import annotations

import shutil
from datetime import timedelta

import lightgbm as lgb
import numpy as np
import orjson

from fraud_demo.generator import generate_transactions
from features.feast_repo import load_plan, open_store
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.control import history
from stream.kafka.reader import read_topic
from stream.lifecycle import autopilot as ap
from stream.registry import CHAMPION, LocalStore
from stream.serving.deployment import Deployment
from stream.services.autopilot import Autopilot
from stream.settings import Settings
from stream.tools.process import worker_process
from tests.conftest import NOW
from tests.stream.services.test_autopilot import _labeled_history, _noisy, _produce, _records, _step_until, _truth
from tests.stream.worker.test_rollout_worker import _free_port, _phase, _wait_predictions, _wait_seq


def test_the_worker_serves_what_the_autopilot_decides(broker, own_topic_repo, tmp_path, unique):
    repo, bootstrap = own_topic_repo, broker.bootstrap_servers
    models = tmp_path / "models"
    shutil.copytree(repo["model_dir"], models)
    champion = (models / "champion").read_text().strip()
    env = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog"),
           "SLUICE_DEPLOYMENTS_TOPIC": unique("deploy"), "SLUICE_MONITORING_TOPIC": unique("mon")}
    settings = Settings(bootstrap_servers=bootstrap, repo_path=repo["path"], model_dir=models, partitions=1,
                        labeled_topic=unique("labeled"), deployments_topic=env["SLUICE_DEPLOYMENTS_TOPIC"],
                        monitoring_topic=env["SLUICE_MONITORING_TOPIC"], prediction_log_topic=env["SLUICE_PREDICTION_LOG_TOPIC"])
    plan = load_plan(open_store(repo["path"]))
    ensure_topics(bootstrap, [repo["topic"]], 2)
    port = _free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    worker = worker_process(bootstrap, repo["path"], models, tmp_path, "worker", app_id=unique("pilot"), partitions=2,
                            metrics_port=port, env=env)
    worker.start().wait_ready()
    live, _ = generate_transactions(repo["world"], repo["cfg"], NOW, NOW + timedelta(hours=48), id_prefix="A")
    producer = make_producer(bootstrap)
    pilot = None
    try:
        pilot = Autopilot(settings, policy=ap.Policy(min_new_labels=1000, max_auc_drop=None, canary_events=100,
                                                     canary_share=0.5),
                          history=False, num_trees=60)
        end_ms = _labeled_history({"plan": plan, "champion": champion, "settings": settings}, champion_noise=2.0)
        _, shadow = _step_until(pilot)
        candidate = shadow.autopilot["candidate"]
        _wait_seq(metrics_url, shadow.seq)
        _phase(producer, repo["topic"], live, 0, 300)

        # Labels for the shadow's events (as the label join would write them) make the experiment say promote.
        rng = np.random.default_rng(4)
        x, logit, y = _truth(rng, 3000, len(plan.vector))
        booster = lgb.Booster(model_file=str(models / candidate / "model.txt"))
        _produce(bootstrap, settings.labeled_topic,
                 _records(plan, x, y, {champion: _noisy(rng, logit, 2.0), candidate: booster.predict(x)}, end_ms, 10_000),
                 plan.schema.event_id)
        (canary,) = _step_until(pilot)
        assert canary.autopilot["stage"] == ap.CANARY
        _wait_seq(metrics_url, canary.seq)
        _phase(producer, repo["topic"], live, 300, 700)
        _wait_predictions(bootstrap, env["SLUICE_PREDICTIONS_TOPIC"], 700)
        # The canary arm's events are read from the worker's prediction log: enough of them, no guardrail crossed.
        (promoted,) = _step_until(pilot, tries=20)
        assert (promoted.autopilot["stage"], promoted.champion) == (ap.PROMOTED, candidate)
        _wait_seq(metrics_url, promoted.seq)
        _phase(producer, repo["topic"], live, 700, 900)
        _wait_predictions(bootstrap, env["SLUICE_PREDICTIONS_TOPIC"], 900)
    finally:
        if pilot is not None:
            pilot.close()
        worker.stop()

    log = [orjson.loads(m.value()) for m in read_topic(bootstrap, env["SLUICE_PREDICTION_LOG_TOPIC"], expect=900, idle_s=5)]
    by_seq: dict[int, list[dict]] = {}
    for r in log:
        by_seq.setdefault(r["deployment"], []).append(r)
    assert all(set(r["scores"]) == {champion, candidate} and r["model_version"] == champion for r in by_seq[shadow.seq])
    canary_rows = by_seq[canary.seq]
    assert {r["route"] for r in canary_rows} == {"canary", "champion"}
    assert all(r["model_version"] == (candidate if r["route"] == "canary" else champion) for r in canary_rows)
    assert all(r["model_version"] == candidate for r in by_seq[promoted.seq])
    assert LocalStore(models).aliases()[CHAMPION] == candidate
    records = history(bootstrap, env["SLUICE_DEPLOYMENTS_TOPIC"], Deployment.from_json)
    assert [r.autopilot.get("stage") for r in records] == [ap.TRAINING, ap.SHADOW, ap.CANARY, ap.PROMOTED]
