"""Crash-only: a worker whose Kafka clients can never deliver again exits instead of idling as a zombie."""

from __future__ import annotations

import time
from datetime import timedelta

import orjson

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.tools.process import worker_process
from stream.worker.broker_watch import EXIT_LOG_LOST
from tests.conftest import NOW


def test_a_broker_restart_that_loses_the_log_ends_the_worker_with_a_clear_message(trained_repo, tmp_path):
    # The embedded broker keeps its log in memory: restarted on the same
    # port it has forgotten the producers' sequence numbers, and the
    # worker's idempotent producers fail fatally. Before, the delivery
    # thread died, the process stayed up, ready, and scored nothing.
    topic = trained_repo["topic"]
    live, _ = generate_transactions(trained_repo["world"], trained_repo["cfg"], NOW + timedelta(days=5), NOW + timedelta(days=5, hours=2), id_prefix="B")
    payloads = list(event_stream(live, seed=2))[:300]
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    worker = None
    try:
        ensure_topics(broker.bootstrap_servers, [topic], 4)
        worker = worker_process(
            broker.bootstrap_servers, trained_repo["path"], trained_repo["model_dir"], tmp_path, "worker", app_id="restart"
        ).start()
        worker.wait_ready()

        def send(items):
            producer = make_producer(broker.bootstrap_servers)
            for payload in items:
                producer.produce(topic, payload, orjson.loads(payload)["card_id"].encode())
            assert producer.flush(15) == 0

        send(payloads[:150])
        assert len(list(read_topic(broker.bootstrap_servers, "predictions", expect=150, timeout_s=60))) == 150
        broker.stop()
        broker = EmbeddedBroker(port=port).start()
        ensure_topics(broker.bootstrap_servers, [topic], 4)
        send(payloads[150:])
        deadline = time.monotonic() + 60
        while worker.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        # The broker watch sees the lost log before a producer trips on it
        # (tests/stream/worker/test_readiness.py has the idle case).
        assert worker.proc.poll() == EXIT_LOG_LOST
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert "lost its log" in log
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
