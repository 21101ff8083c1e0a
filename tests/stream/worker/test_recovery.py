"""A restarted worker restores its window state exactly, whatever end offsets the broker reports."""

from __future__ import annotations

from datetime import timedelta

import orjson

from features.feast_repo import load_plan, open_store
from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.topics import AppTopics
from stream.settings import Settings
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.tools.parity import arrival_columns, compare
from tests.conftest import NOW


def test_a_restarted_worker_restores_every_state_record_even_without_fences(broker, own_topic_repo, start_worker, unique):
    # Without the fence after each state write, the changelog's last batch
    # holds many records, and the embedded broker reports the end offset as
    # that batch's start + 1: a restore that trusted it came back without the
    # newest states, and the second worker's features were wrong.
    bootstrap = broker.bootstrap_servers
    app_id = unique("restore")
    env = {
        "SLUICE_PREDICTIONS_TOPIC": unique("pred"),
        "SLUICE_PREDICTION_LOG_TOPIC": unique("plog"),
        "SLUICE_CHANGELOG_FENCE": "0",
    }
    topic = own_topic_repo["topic"]
    ensure_topics(bootstrap, [topic], 4)
    cfg, world = own_topic_repo["cfg"], own_topic_repo["world"]
    live, _ = generate_transactions(world, cfg, NOW + timedelta(days=3), NOW + timedelta(days=3, hours=6), id_prefix="R")
    payloads = list(event_stream(live, disorder_ms=10_000, seed=5))
    half = len(payloads) // 2
    producer = make_producer(bootstrap)

    def produce(items):
        for payload in items:
            producer.produce(topic, payload, orjson.loads(payload)["card_id"].encode())
        assert producer.flush(30) == 0

    first = start_worker(own_topic_repo, env=env, app_id=app_id)
    produce(payloads[:half])
    got = list(read_topic(bootstrap, env["SLUICE_PREDICTIONS_TOPIC"], expect=half, timeout_s=60, idle_s=15))
    assert len({m.key() for m in got}) == half
    first.stop()
    start_worker(own_topic_repo, env=env, app_id=app_id)
    produce(payloads[half:])
    log = [orjson.loads(m.value()) for m in read_topic(bootstrap, env["SLUICE_PREDICTION_LOG_TOPIC"], expect=len(payloads), timeout_s=90, idle_s=15)]
    assert len({r["transaction_id"] for r in log}) == len(payloads)

    plan = load_plan(open_store(own_topic_repo["path"]))
    where = arrival_columns(bootstrap, plan, plan.schema.event_id, AppTopics.for_plan(Settings(app_id=app_id), plan).repartitions)
    report = compare(plan, live, log, where, set())
    assert report.compared >= len(payloads)
    assert report.mismatches == 0, report.examples
