"""Exploration in a real worker on the real broker: explored blocks are approved, logged with their propensity,
at the declared shares per segment; the label join censors the blocks that were not let through."""

from __future__ import annotations

import math
import socket
import urllib.request
from datetime import timedelta

import orjson

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import CHANNELS, generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.control import publish
from stream.kafka.reader import read_topic
from stream.lifecycle.online_eval import OnlineEvaluation
from stream.pipeline.events import parse_timestamp_ms
from stream.serving.deployment import Deployment
from stream.serving.model import CHAMPION_FILE
from stream.worker.labels import LabelSender
from tests.conftest import NOW

DAY_MS = 86_400_000
#: Every event is a would-be block (a threshold of 0 in every channel), so every event is a draw.
RULES = {"threshold": {"field": "channel", "values": {str(c): 0.0 for c in CHANNELS}}}
EXPLORATION = {"share": 0.2, "seed": 4, "segment": {"field": "amount", "bands": [50], "share": {"<50": 0.4}}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _within_binomial(hits: int, n: int, p: float, z: float = 4.0) -> bool:
    return abs(hits - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


def _explored_total(url: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith("sluice_explored_total ")), 0.0)


def test_explored_blocks_are_approved_logged_with_their_propensity_at_the_declared_shares(
    broker, own_topic_repo, tmp_path, unique,
):
    from stream.tools.process import worker_process

    repo, bootstrap = own_topic_repo, broker.bootstrap_servers
    env = {
        "SLUICE_LABEL_JOIN": "1", "SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog"),
        "SLUICE_LABELS_TOPIC": unique("labels"), "SLUICE_LABELED_TOPIC": unique("labeled"),
        "SLUICE_DEPLOYMENTS_TOPIC": unique("deploy"),
    }
    champion = (repo["model_dir"] / CHAMPION_FILE).read_text().strip()
    # Written before the worker starts: it reads the topic and applies the newest deployment before taking partitions.
    publish(bootstrap, env["SLUICE_DEPLOYMENTS_TOPIC"],
            Deployment(seq=1, champion=champion, rules=RULES, exploration=EXPLORATION, reason="explore"))
    ensure_topics(bootstrap, [repo["topic"]], 4)
    live, _ = generate_transactions(repo["world"], repo["cfg"], NOW + timedelta(days=5), NOW + timedelta(days=5, hours=8),
                                    id_prefix="X")
    live = live.iloc[:3000]
    port = _free_port()
    worker = worker_process(bootstrap, repo["path"], repo["model_dir"], tmp_path, "worker", app_id=unique("explore"),
                            metrics_port=port, env=env)
    worker.start().wait_ready()
    try:
        producer = make_producer(bootstrap)
        for payload in event_stream(live, seed=5):
            producer.produce(repo["topic"], payload, orjson.loads(payload)["card_id"].encode())
        assert producer.flush(30) == 0
        log = [orjson.loads(m.value()) for m in read_topic(bootstrap, env["SLUICE_PREDICTION_LOG_TOPIC"],
                                                          expect=len(live), timeout_s=120, idle_s=20)]
        counted = _explored_total(f"http://127.0.0.1:{port}/metrics")
        labels = LabelSender(bootstrap, env["SLUICE_LABELS_TOPIC"], 4, id_field="transaction_id", label_field="is_fraud")
        last = max(parse_timestamp_ms(r["event_time"]) for r in log)
        labels.clock(last + 60 * DAY_MS)  # no chargeback came: every window and grace is over
        labels.flush()
        labeled = [orjson.loads(m.value()) for m in read_topic(bootstrap, env["SLUICE_LABELED_TOPIC"],
                                                               expect=len(log), timeout_s=120, idle_s=20)]
    finally:
        worker.stop()

    assert len(log) >= 0.95 * len(live)  # the stream's malformed events are dead-lettered, not predicted
    predictions = {r["transaction_id"]: r for r in log}
    assert all(r["would_block"] for r in log), "the rules make every event a would-be block"
    explored = [r for r in log if r["explored"]]
    assert all(r["decision"] is False for r in explored) and all(r["decision"] is True for r in log if not r["explored"])
    assert counted == len(explored)
    for band, share in (("<50", 0.4), (">=50", 0.2)):
        mine = [r for r in log if (r["event"]["amount"] < 50) == (band == "<50")]
        assert {r["propensity"] for r in mine} == {share}, band
        hits = sum(r["explored"] for r in mine)
        assert _within_binomial(hits, len(mine), share), (band, hits, len(mine))

    # The label join: a block not let through keeps no label; an explored one gets the window's default.
    rows = {r["transaction_id"]: r for r in labeled if r["kind"] == "unlabeled"}
    assert set(rows) == set(predictions)
    for event_id, row in rows.items():
        served = predictions[event_id]
        assert (row["would_block"], row["explored"], row["propensity"]) == (True, served["explored"], served["propensity"])
        assert row["label"] == (0 if served["explored"] else None)
    evaluation = OnlineEvaluation("transaction_id")
    for record in labeled:
        evaluation.add_labeled(record)
    decisions = evaluation.combined_decisions(champion, "champion").values()
    assert decisions["explored"] == len(explored) and decisions["censored"] == 0
    assert decisions["estimated_blocks"] > decisions["explored"]  # each explored block stands for 1/propensity
