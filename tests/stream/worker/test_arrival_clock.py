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
from datetime import timedelta

import numpy as np
import orjson
import pandas as pd

from features.arrival import stage_positions
from features.feast_repo import load_plan, open_store
from features.offline import compute_features, offset_col, partition_col
from fraud_demo.generator import event_stream, generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.pipeline.events import parse_timestamp_ms
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
    frame = pd.DataFrame([orjson.loads(m.value()) for m in messages])
    frame[plan.schema.timestamp_field] = [parse_timestamp_ms(t) for t in frame[plan.schema.timestamp_field]]
    for stage, (p, o) in enumerate(positions):
        frame[partition_col(stage)], frame[offset_col(stage)] = p, o
    offline = compute_features(plan, frame)
    return offline.frame.set_index(frame["transaction_id"]), plan.stream_names if hasattr(plan, "stream_names") else list(offline.frame.columns)


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
    for event_id, record in small.items():
        for name in offline.columns:
            differing_runs += not _same(record["features"][name], large[event_id]["features"][name])
            differing_offline += not _same(record["features"][name], float(offline.at[event_id, name]))
    assert differing_runs == 0
    assert differing_offline == 0
