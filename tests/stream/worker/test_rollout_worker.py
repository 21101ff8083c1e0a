"""Models inside the stream, on a real broker and a real worker: shadow, promote, refuse, canary, guardrail.

One worker serves one stream in phases; between phases a deployment record
is written, as `sluice deploy` writes it. What the worker did is read back
from the topics: every event is scored exactly once, each deployment takes
over at one point per partition, a corrupt model is refused while the
champion keeps serving, and a canary that crosses a guardrail is rolled
back by the controller.
"""

from __future__ import annotations

import shutil
import socket
import time
import urllib.request
from collections import defaultdict
from datetime import timedelta

import numpy as np
import orjson
import pytest

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.control import history, publish
from features.arrival import stage_positions
from stream.kafka.reader import read_topic
from stream.lifecycle.train import train
from stream.serving.deployment import Deployment, Guardrails
from stream.settings import Settings
from stream.tools.process import worker_process
from stream.services.rollout import Controller
from tests.conftest import NOW


@pytest.fixture
def two_versions(own_topic_repo, tmp_path):
    """The repo's model (v1) and a second one trained with other settings (v2), plus a corrupt copy of v2."""
    models = tmp_path / "models"
    shutil.copytree(own_topic_repo["model_dir"], models)
    v1 = (models / "champion").read_text().strip()
    scratch = tmp_path / "scratch-models"
    v2 = train(own_topic_repo["path"], scratch, num_trees=12, seed=3).version
    shutil.copytree(scratch / v2, models / v2)
    corrupt = models / "v-corrupt"
    shutil.copytree(models / v2, corrupt)
    text = (corrupt / "model.txt").read_bytes()
    (corrupt / "model.txt").write_bytes(text[: len(text) // 2])  # truncated: the checksum no longer matches
    return {**own_topic_repo, "model_dir": models, "v1": v1, "v2": v2}


def _phase(producer, topic: str, live, lo: int, hi: int) -> None:
    for payload in event_stream(live.iloc[lo:hi], seed=lo):
        producer.produce(topic, payload, orjson.loads(payload)["card_id"].encode())
    assert producer.flush(30) == 0


def _wait_predictions(bootstrap: str, topic: str, n: int) -> list[dict]:
    got = [orjson.loads(m.value()) for m in read_topic(bootstrap, topic, expect=n, timeout_s=120, idle_s=20)]
    assert len(got) >= n, f"only {len(got)} of {n} predictions"
    return got


CUTS = [0, 400, 900, 1400, 1900, 2500]


def _live(repo):
    live, _ = generate_transactions(repo["world"], repo["cfg"], NOW, NOW + timedelta(hours=72), id_prefix="R")
    assert len(live) >= CUTS[-1]
    return live.iloc[: CUTS[-1]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_seq(metrics_url: str, seq: int, timeout_s: float = 60.0) -> None:
    """Until the worker reports that it applies deployment `seq` (its /metrics)."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        value = next((float(line.split()[-1]) for line in text.splitlines() if line.startswith("sluice_deployment_seq ")), None)
        if value is not None and value >= seq:
            return
        time.sleep(0.3)
    raise AssertionError(f"the worker did not apply deployment {seq} within {timeout_s} s (it reports {value})")


def test_shadow_promote_refuse_canary_guardrail_in_one_stream(broker, two_versions, tmp_path, unique):
    repo, bootstrap = two_versions, broker.bootstrap_servers
    env = {
        "SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog"),
        "SLUICE_DEPLOYMENTS_TOPIC": unique("deploy"), "SLUICE_MONITORING_TOPIC": unique("mon"),
    }
    deployments = env["SLUICE_DEPLOYMENTS_TOPIC"]
    ensure_topics(bootstrap, [repo["topic"]], 4)
    port = _free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    worker = worker_process(bootstrap, repo["path"], repo["model_dir"], tmp_path, "worker", app_id=unique("roll"),
                            metrics_port=port, env=env)
    worker.start().wait_ready()
    try:
        _stream_in_phases(bootstrap, repo, env, metrics_url, deployments)
    finally:
        worker.stop()
    _check(bootstrap, repo, env, deployments)


def _stream_in_phases(bootstrap, repo, env, metrics_url, deployments):
    v1, v2 = repo["v1"], repo["v2"]
    live = _live(repo)
    producer = make_producer(bootstrap)
    cuts = CUTS

    _phase(producer, repo["topic"], live, cuts[0], cuts[1])
    _wait_predictions(bootstrap, env["SLUICE_PREDICTIONS_TOPIC"], cuts[1])

    def switch(record: Deployment, lo: int, hi: int) -> None:
        # Half the phase streams while the worker loads and switches, the rest after it has switched.
        publish(bootstrap, deployments, record)
        _phase(producer, repo["topic"], live, lo, (lo + hi) // 2)
        _wait_seq(metrics_url, record.seq)
        _phase(producer, repo["topic"], live, (lo + hi) // 2, hi)

    switch(Deployment(seq=1, champion=v1, mode="shadow", challengers=(v2,), reason="test"), cuts[1], cuts[2])
    switch(Deployment(seq=2, champion=v2, reason="promote"), cuts[2], cuts[3])
    publish(bootstrap, deployments, Deployment(seq=3, champion=v2, mode="shadow", challengers=("v-corrupt",)))
    _phase(producer, repo["topic"], live, cuts[3], cuts[4])
    _wait_predictions(bootstrap, env["SLUICE_PREDICTIONS_TOPIC"], cuts[4])
    canary = Deployment(seq=4, champion=v2, mode="canary", challengers=(v1,), share=0.5,
                        guardrails=Guardrails(min_events=50, max_score_ms_p99=1e-6), reason="canary")
    publish(bootstrap, deployments, canary)
    _wait_seq(metrics_url, 4)
    settings = Settings(bootstrap_servers=bootstrap, model_dir=repo["model_dir"], deployments_topic=deployments,
                        prediction_log_topic=env["SLUICE_PREDICTION_LOG_TOPIC"],
                        monitoring_topic=env["SLUICE_MONITORING_TOPIC"])
    with Controller(settings, "card_id", v1, interval_s=0.2) as controller:
        _phase(producer, repo["topic"], live, cuts[4], cuts[5])
        _wait_predictions(bootstrap, env["SLUICE_PREDICTIONS_TOPIC"], cuts[5])
        deadline = time.monotonic() + 30
        while not controller.decisions and time.monotonic() < deadline:
            time.sleep(0.2)


def _check(bootstrap, repo, env, deployments):
    v1, v2 = repo["v1"], repo["v2"]
    live = _live(repo)
    log_topic = env["SLUICE_PREDICTION_LOG_TOPIC"]
    cuts = CUTS
    predictions = _wait_predictions(bootstrap, env["SLUICE_PREDICTIONS_TOPIC"], cuts[5])
    ids = [p["transaction_id"] for p in predictions]
    assert sorted(ids) == sorted(live["transaction_id"]), "every event scored exactly once"
    log = [orjson.loads(m.value()) for m in read_topic(bootstrap, log_topic, expect=len(live), idle_s=5)]
    assert len(log) == len(live)

    # Each deployment takes over at one point per scoring partition: along the order that partition folds
    # its events in (the arrival order, features/arrival.py, read from the events topic), seq never goes back.
    events = list(read_topic(bootstrap, repo["topic"], idle_s=3))
    (_, _), (_, rank) = stage_positions(
        np.array([m.partition() for m in events]), np.array([m.offset() for m in events]),
        np.array([m.timestamp()[1] for m in events]), 2,
    )
    place = {(m.partition(), m.offset()): int(r) for m, r in zip(events, rank)}
    by_partition = defaultdict(list)
    for record in log:
        partition, _ = record["arrival"][-1]
        by_partition[partition].append((place[tuple(record["arrival"][0])], record["deployment"]))
    for partition, rows in by_partition.items():
        seqs = [seq for _, seq in sorted(rows)]
        assert seqs == sorted(seqs), f"partition {partition} switched back and forth: {seqs}"

    for record in log:
        seq = record["deployment"]
        if seq == 1:  # shadow: both scored, the champion's answer published
            assert set(record["scores"]) == {v1, v2}
            assert record["model_version"] == v1 and record["score"] == record["scores"][v1]
        elif seq == 2:  # promoted
            assert record["model_version"] == v2 and set(record["scores"]) == {v2}
        assert seq != 3, "the deployment naming a corrupt model was applied"
    assert {r["deployment"] for r in log} >= {0, 1, 2}

    # The refusal is an alert, and the champion kept serving through it.
    alerts = [orjson.loads(m.value()) for m in read_topic(bootstrap, env["SLUICE_MONITORING_TOPIC"], idle_s=3)]
    refused = [a for a in alerts if a["kind"] == "model_load_failed"]
    assert refused and refused[0]["model_version"] == "v-corrupt" and refused[0]["deployment_seq"] == 3
    assert "checksum" in refused[0]["reason"]
    phase4 = set(live["transaction_id"].iloc[cuts[3] : cuts[4]])
    assert all(r["model_version"] == v2 for r in log if r["transaction_id"] in phase4)

    # The canary crossed its scoring-time guardrail and was rolled back, with the reason, as a record.
    records = history(bootstrap, deployments, Deployment.from_json)
    rollback = [r for r in records if r.by == "guardrail"]
    assert rollback and rollback[0].seq == 5 and rollback[0].mode == "champion" and rollback[0].champion == v2
    assert "scoring time" in rollback[0].reason
    canary_rows = [r for r in log if r["deployment"] == 4]
    per_card = defaultdict(set)
    for r in canary_rows:
        per_card[r["entity"]["card_id"]].add(r["route"])
        assert r["model_version"] == (v1 if r["route"] == "canary" else v2)
        assert set(r["scores"]) == {v1, v2}
    assert all(len(routes) == 1 for routes in per_card.values()), "a card saw both arms"
