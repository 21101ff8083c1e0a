"""Reason codes off the scoring path: a real worker scores without them, `sluice reasons`' loop explains its log.

The worker (a process, SLUICE_REASONS left at its default, `service`) and
the reasons loop (a thread of the test, stopped by it) share the session's
broker, on topics of this test's own. A deny rule on a quarter of the cards
makes the positives many and known in advance.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import orjson

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.control import publish
from stream.kafka.reader import read_topic
from stream.serving.deployment import Deployment
from stream.serving.model import CHAMPION_FILE, load_model
from stream.services.reasons import ReasonsLoop
from stream.settings import Settings
from tests.conftest import NOW

EVENTS = 600


def test_every_positive_decision_gets_its_treeshap_reasons_on_the_reasons_topic_and_none_in_the_prediction(
    broker, own_topic_repo, tmp_path, unique,
):
    from stream.tools.process import worker_process

    repo, bootstrap = own_topic_repo, broker.bootstrap_servers
    env = {
        "SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog"),
        "SLUICE_DEPLOYMENTS_TOPIC": unique("deploy"), "SLUICE_REASONS_TOPIC": unique("reasons"),
    }
    app_id = unique("reasons")
    champion = (repo["model_dir"] / CHAMPION_FILE).read_text().strip()
    denied = {f"card-{i:06d}" for i in range(0, 300, 4)}
    publish(bootstrap, env["SLUICE_DEPLOYMENTS_TOPIC"], Deployment(
        seq=1, champion=champion, rules={"deny": {"field": "card_id", "values": sorted(denied)}}, reason="test"))
    ensure_topics(bootstrap, [repo["topic"]], 4)
    live, _ = generate_transactions(repo["world"], repo["cfg"], NOW + timedelta(days=5), NOW + timedelta(days=5, hours=12),
                                    id_prefix="R")
    live = live.iloc[:EVENTS]
    assert len(live) == EVENTS
    worker = worker_process(bootstrap, repo["path"], repo["model_dir"], tmp_path, "worker", app_id=app_id, env=env)
    settings = Settings(
        bootstrap_servers=bootstrap, model_dir=repo["model_dir"], app_id=app_id, partitions=4,
        predictions_topic=env["SLUICE_PREDICTIONS_TOPIC"], prediction_log_topic=env["SLUICE_PREDICTION_LOG_TOPIC"],
        deployments_topic=env["SLUICE_DEPLOYMENTS_TOPIC"], reasons_topic=env["SLUICE_REASONS_TOPIC"],
    )
    loop = ReasonsLoop(settings, "transaction_id")
    thread = threading.Thread(target=loop.run, daemon=True)
    worker.start().wait_ready()
    thread.start()
    try:
        producer = make_producer(bootstrap)
        for payload in event_stream(live, seed=5):
            producer.produce(repo["topic"], payload, orjson.loads(payload)["card_id"].encode())
        assert producer.flush(30) == 0
        logs = {m.key(): orjson.loads(m.value()) for m in read_topic(
            bootstrap, env["SLUICE_PREDICTION_LOG_TOPIC"], expect=EVENTS, timeout_s=120, idle_s=20)}
        predictions = [orjson.loads(m.value()) for m in read_topic(
            bootstrap, env["SLUICE_PREDICTIONS_TOPIC"], expect=EVENTS, timeout_s=120, idle_s=30)]
        positives = {k for k, r in logs.items() if r["decision"]}
        reasons = {m.key(): orjson.loads(m.value()) for m in read_topic(
            bootstrap, env["SLUICE_REASONS_TOPIC"], expect=len(positives), timeout_s=120, idle_s=30)}
    finally:
        loop.stop.set()
        thread.join(15)
        worker.stop()
    assert len(logs) == len(predictions) == EVENTS
    assert {r["entity"]["card_id"] in denied for r in logs.values()} == {True, False}
    assert {k for k, r in logs.items() if r["entity"]["card_id"] in denied} <= positives  # and the model's own
    # The prediction path computed none: neither record carries reason codes.
    assert all("reasons" not in p for p in predictions) and all(r["reasons"] is None for r in logs.values())
    assert set(reasons) == positives
    model = load_model(repo["model_dir"])
    keys = sorted(positives)
    vectors = np.array([[np.nan if logs[k]["features"][f] is None else logs[k]["features"][f] for f in model.features]
                        for k in keys], dtype=np.float64)
    # Inline TreeSHAP for the same vectors: the top 3 contributions of `pred_contrib`, by magnitude.
    shap = model.booster.predict(vectors, pred_contrib=True)[:, :-1]
    for key, row in zip(keys, shap):
        record = reasons[key]
        assert record["transaction_id"] == key.decode() and record["model_version"] == champion
        top = np.argsort(-np.abs(row), kind="stable")[:3]
        assert [name for name, _ in record["reasons"]] == [model.features[j] for j in top]
        np.testing.assert_allclose([c for _, c in record["reasons"]], row[top], atol=1e-6)
