"""A real worker with SLUICE_COMPILED_SCORER: the gate passes on the stream's own rows, then lleaves answers, exactly."""

from __future__ import annotations

import time
from datetime import timedelta

import lightgbm as lgb
import numpy as np
import orjson

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.serving.model import resolve
from tests.conftest import NOW

SERVES = "compiled scorer serves model version"


def test_a_worker_answers_with_the_compiled_scorer_after_the_gate(broker, own_topic_repo, start_worker, unique):
    repo, bootstrap = own_topic_repo, broker.bootstrap_servers
    log_topic = unique("plog")
    env = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": log_topic,
           "SLUICE_COMPILED_SCORER": "100", "SLUICE_LOG_LEVEL": "info"}
    ensure_topics(bootstrap, [repo["topic"]], 4)
    worker = start_worker(repo, env=env)
    producer = make_producer(bootstrap)
    sent, hour, gated = 0, 0, False
    deadline = time.monotonic() + 90
    # An hour of events at a time until the gate has passed, then one more hour, answered compiled.
    while not gated:
        assert time.monotonic() < deadline, "the compiled scorer did not pass its gate in 90 s"
        gated = SERVES in worker.log_path.read_text(errors="replace")
        live, _ = generate_transactions(repo["world"], repo["cfg"], NOW + timedelta(hours=hour),
                                        NOW + timedelta(hours=hour + 1), id_prefix=f"C{hour}-")
        for payload in event_stream(live, seed=hour):
            producer.produce(repo["topic"], payload, orjson.loads(payload)["card_id"].encode())
        assert producer.flush(30) == 0
        sent, hour = sent + len(live), hour + 1
        time.sleep(2.0)
    assert "compiled scorer refused" not in worker.log_path.read_text(errors="replace")
    records = [orjson.loads(m.value()) for m in read_topic(bootstrap, log_topic, expect=sent, timeout_s=60, idle_s=5)]
    assert len(records) == sent
    booster = lgb.Booster(model_file=str(resolve(repo["model_dir"]) / "model.txt"))
    matrix = np.array([[np.nan if v is None else v for v in r["features"].values()] for r in records], dtype=np.float64)
    logged = np.array([next(iter(r["scores"].values())) for r in records])
    assert np.max(np.abs(logged - booster.predict(matrix, num_threads=1))) <= 1e-12
