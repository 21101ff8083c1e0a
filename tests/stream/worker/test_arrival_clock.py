"""The arrival clock with real workers: a later stage's features are a function of the events log alone.

Events go to 4 partitions with broker timestamps that interleave the
partitions, as live traffic does; workers then read the backlog, which
makes the first stage hand its partitions on one run after another. A
merchant's events come from many card partitions, so without the arrival
clock the merchant stage would fold them in whatever order the first stage
happened to forward them.
"""

from __future__ import annotations

import math
import urllib.request
from datetime import timedelta

import numpy as np
import orjson
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from features.arrival import stage_positions
from features.feast_repo import load_plan, open_store
from features.offline import compute_features, offset_col, partition_col
from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.pipeline.clock import TICK_KEY
from stream.pipeline.events import parse_timestamp_ms
from stream.tools.bench.serve import free_port
from stream.tools.process import worker_process
from tests.conftest import NOW

PARTITIONS = 4


def _produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    """Each event keyed by its card, broker timestamps 1 ms apart in stream order (so partitions interleave)."""
    producer = make_producer(bootstrap)
    base = int((NOW + timedelta(hours=3)).timestamp() * 1000)
    for i, payload in enumerate(payloads):
        producer.produce(topic, payload, orjson.loads(payload)["card_id"].encode(), timestamp=base + i)
    assert producer.flush(30) == 0


def _features(bootstrap: str, topic: str, n: int) -> dict[str, dict]:
    log = read_topic(bootstrap, topic, expect=n, timeout_s=120, idle_s=10)
    return {r["transaction_id"]: r for r in (orjson.loads(m.value()) for m in log)}


def _offline(bootstrap: str, repo) -> tuple[pd.DataFrame, list]:
    """The features of every event computed from the events topic in arrival order (features/arrival.py)."""
    plan = load_plan(open_store(repo["path"]))
    messages = list(read_topic(bootstrap, repo["topic"], idle_s=2))
    positions = stage_positions(
        np.array([m.partition() for m in messages]), np.array([m.offset() for m in messages]),
        np.array([m.timestamp()[1] for m in messages]), len(plan.stages()),
    )
    events = [i for i, m in enumerate(messages) if m.key() != TICK_KEY]
    positions = [(p[events], o[events]) for p, o in positions]
    frame = pd.DataFrame([orjson.loads(messages[i].value()) for i in events])
    frame[plan.schema.timestamp_field] = [parse_timestamp_ms(t) for t in frame[plan.schema.timestamp_field]]
    for stage, (p, o) in enumerate(positions):
        frame[partition_col(stage)], frame[offset_col(stage)] = p, o
    offline = compute_features(plan, frame)
    return offline.frame.set_index(frame["transaction_id"]), list(offline.frame.columns)


def _same(a, b) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return b is not None and not (isinstance(b, float) and math.isnan(b)) and abs(a - b) <= 1e-9 * max(1.0, abs(b))


def test_a_later_stage_folds_in_arrival_order_whatever_the_processing(broker, own_topic_repo, start_worker, unique):
    repo, bootstrap = own_topic_repo, broker.bootstrap_servers
    ensure_topics(bootstrap, [repo["topic"]], PARTITIONS)
    live, _ = generate_transactions(repo["world"], repo["cfg"], NOW, NOW + timedelta(hours=3), id_prefix="C")
    _produce(bootstrap, repo["topic"], list(event_stream(live, disorder_ms=30_000, seed=5)))

    # Two consumer groups over the same topic: small micro-batches, and large ones.
    logs = []
    for batch_max in (20, 2000):
        log_topic = unique("plog")
        start_worker(repo, env={"SLUICE_PREDICTION_LOG_TOPIC": log_topic, "SLUICE_BATCH_MAX": str(batch_max)})
        logs.append(log_topic)
    small, large = (_features(bootstrap, topic, len(live)) for topic in logs)
    assert len(small) == len(large) == len(live)

    offline, _ = _offline(bootstrap, repo)
    merchant = [c for c in offline.columns if c.startswith("merchant")]
    assert merchant, "the demo repo has a merchant stage after a repartition hop"
    differing_runs, differing_offline = 0, 0
    assert sum(record["score"] != large[event_id]["score"] for event_id, record in small.items()) == 0
    for event_id, record in small.items():
        for name in offline.columns:
            differing_runs += not _same(record["features"][name], large[event_id]["features"][name])
            differing_offline += not _same(record["features"][name], float(offline.at[event_id, name]))
    assert differing_runs == 0
    assert differing_offline == 0


def _samples(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
    return totals


def _one_partition_run(broker, repo, tmp_path, unique, env: dict) -> tuple[int, dict, dict]:
    """Events to partition 0 only (3 of 4 idle): (events, the log by event id, the worker's metrics)."""
    bootstrap = broker.bootstrap_servers
    live, _ = generate_transactions(repo["world"], repo["cfg"], NOW, NOW + timedelta(hours=1), id_prefix="I")
    port, log_topic = free_port(), unique("plog")
    worker = worker_process(
        bootstrap, repo["path"], repo["model_dir"], tmp_path, unique("w"), app_id=unique("idle"), metrics_port=port,
        env={"SLUICE_PREDICTION_LOG_TOPIC": log_topic, **env},
    )
    try:
        worker.start().wait_ready()
        producer = make_producer(bootstrap)
        for payload in event_stream(live, seed=6):
            producer.produce(repo["topic"], payload, orjson.loads(payload)["card_id"].encode(), partition=0)
        assert producer.flush(30) == 0
        log = _features(bootstrap, log_topic, len(live))
        samples = _samples(port)
    finally:
        worker.stop()
    return len(live), log, samples


def test_idle_partitions_tick_so_nothing_waits_and_the_order_holds(broker, own_topic_repo, tmp_path, unique):
    repo = own_topic_repo
    ensure_topics(broker.bootstrap_servers, [repo["topic"]], PARTITIONS)
    n, log, samples = _one_partition_run(broker, repo, tmp_path, unique, {"SLUICE_CLOCK_WAIT_MS": "600000"})
    assert len(log) == n  # nothing held for the (ten-minute) bound: ticks moved the idle partitions on
    assert samples.get("sluice_clock_ticks_total", 0) > 0
    assert samples.get("sluice_clock_released_early_total", 0) == 0
    offline, _ = _offline(broker.bootstrap_servers, repo)  # the ticks are in the log: they move the clock offline too
    differing = sum(
        not _same(record["features"][name], float(offline.at[event_id, name]))
        for event_id, record in log.items() for name in offline.columns
    )
    assert differing == 0


def test_without_ticks_an_idle_partition_holds_a_later_stage_only_for_the_bound(broker, own_topic_repo, tmp_path, unique):
    repo = own_topic_repo
    ensure_topics(broker.bootstrap_servers, [repo["topic"]], PARTITIONS)
    n, log, samples = _one_partition_run(
        broker, repo, tmp_path, unique, {"SLUICE_CLOCK_TICK_MS": "0", "SLUICE_CLOCK_WAIT_MS": "1000"}
    )
    assert len(log) == n
    assert samples.get("sluice_clock_ticks_total", 0) == 0
    assert samples.get("sluice_clock_released_early_total", 0) > 0
