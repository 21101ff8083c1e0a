"""A worker's /metrics after real events: per-step latency histograms, state size, no delivery errors."""

from __future__ import annotations

import socket
import time
import urllib.request
from datetime import timedelta

import orjson
from prometheus_client.parser import text_string_to_metric_families

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.tools.process import worker_process
from tests.conftest import NOW


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(port: int) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def test_steps_state_size_and_errors_are_exported(broker, own_topic_repo, tmp_path, unique):
    repo = own_topic_repo
    ensure_topics(broker.bootstrap_servers, [repo["topic"]], 4)
    port = _free_port()
    log_topic = unique("plog")
    worker = worker_process(
        broker.bootstrap_servers, repo["path"], repo["model_dir"], tmp_path, "worker", app_id=unique("ops"),
        metrics_port=port, env={"SLUICE_PREDICTION_LOG_TOPIC": log_topic},
    )
    try:
        worker.start().wait_ready()
        live, _ = generate_transactions(repo["world"], repo["cfg"], NOW, NOW + timedelta(hours=4), id_prefix="ops")
        producer = make_producer(broker.bootstrap_servers)
        for payload in event_stream(live):
            producer.produce(repo["topic"], payload, orjson.loads(payload)["card_id"].encode())
        assert producer.flush(30) == 0
        assert len(list(read_topic(broker.bootstrap_servers, log_topic, expect=len(live), timeout_s=90, idle_s=10))) == len(live)
        # The state size is read after a commit, at most every 5 s: one more event, later, makes sure it is current.
        time.sleep(5.5)
        late, _ = generate_transactions(repo["world"], repo["cfg"], NOW + timedelta(hours=4), NOW + timedelta(hours=5), id_prefix="ops2")
        payload = next(iter(event_stream(late.iloc[:1])))
        producer.produce(repo["topic"], payload, orjson.loads(payload)["card_id"].encode())
        assert producer.flush(30) == 0
        assert len(list(read_topic(broker.bootstrap_servers, log_topic, expect=len(live) + 1, timeout_s=60, idle_s=10))) == len(live) + 1
        samples = _samples(port)
    finally:
        worker.stop()
    steps = {dict(k[1]).get("step") for k, v in samples.items() if k[0] == "sluice_stage_seconds_count" and v > 0}
    assert {"features", "batch_features", "score", "deliver", "state_write"} <= steps
    entities = {dict(k[1])["stage"]: v for k, v in samples.items() if k[0] == "sluice_state_entities"}
    # Cards in stage 0, merchants and card-merchant pairs in stage 1: at least the live ones.
    assert entities.get("0", 0) >= live["card_id"].nunique()
    assert entities.get("1", 0) >= live["merchant_id"].nunique()
    assert not any(k[0] == "sluice_errors_total" and v > 0 for k, v in samples.items())
