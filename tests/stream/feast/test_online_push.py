"""The worker keeps the Feast online store fresh: get_online_features returns live window values."""

from __future__ import annotations

import time
from datetime import timedelta

import orjson

from features.feast_repo import load_plan, open_store
from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from tests.conftest import NOW


def test_online_store_serves_fresh_stream_aggregates(broker, own_topic_repo, start_worker, unique):
    cfg, world = own_topic_repo["cfg"], own_topic_repo["world"]
    # Events far after the e2e test's stream, so this test's windows hold only its own events.
    start = NOW + timedelta(days=20)  # before the real clock: events more than an hour ahead of their Kafka timestamp are dead-lettered
    live, _ = generate_transactions(world, cfg, start, start + timedelta(hours=2), id_prefix="O")
    topics = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog")}
    ensure_topics(broker.bootstrap_servers, [own_topic_repo["topic"]], 4)
    start_worker(own_topic_repo, env={**topics, "SLUICE_ONLINE_PUSH_INTERVAL_S": "0.25"})
    producer = make_producer(broker.bootstrap_servers)
    for payload in event_stream(live):
        producer.produce(own_topic_repo["topic"], payload, orjson.loads(payload)["card_id"].encode())
    producer.flush(30)
    sent_at = time.time()
    # The worker of the end-to-end test may have run on this topic before; wait for this stream's last event.
    last_id = live["transaction_id"].iloc[-1]
    assert any(
        m.key().decode() == last_id
        for m in read_topic(broker.bootstrap_servers, topics["SLUICE_PREDICTIONS_TOPIC"], timeout_s=60, idle_s=10)
    )
    store = open_store(own_topic_repo["path"])
    plan = load_plan(store)
    card = live["card_id"].value_counts().index[0]
    mine = live[live["card_id"] == card]
    expected_24h = len(mine)
    expected_sum = mine["amount"].sum()
    deadline = time.time() + 20
    got = None
    while time.time() < deadline:
        got = store.get_online_features(
            features=["card_txn:txn_count_24h", "card_txn:amount_sum_24h"], entity_rows=[{"card_id": card}]
        ).to_dict()
        if got["txn_count_24h"][0] == expected_24h:
            break
        time.sleep(0.2)
    staleness_s = time.time() - sent_at
    print(f"online store reflected the stream {staleness_s:.2f} s after the last event was sent")
    assert got["txn_count_24h"][0] == expected_24h, got
    assert abs(got["amount_sum_24h"][0] - expected_sum) < 1e-6 * max(1, expected_sum)
    assert staleness_s < 20
    assert plan.stream_views
