"""Events in, predictions out: a real broker, a real Feast repo, a real Faust worker."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import orjson
import pytest

from features.feast_repo import load_plan, open_store
from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from features.arrival import stage_positions
from stream.pipeline.events import parse_timestamp_ms
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from tests.conftest import NOW
from tests.features.reference import brute_features


def _close(a, b) -> bool:
    if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


@pytest.fixture
def worker(broker, trained_repo, start_worker, unique):
    app_id = unique("e2e")
    topics = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog")}
    ensure_topics(broker.bootstrap_servers, [trained_repo["topic"]], 4)
    start_worker(trained_repo, env=topics, app_id=app_id)
    return {"app_id": app_id, **topics}


def test_events_in_predictions_out(broker, trained_repo, worker):
    cfg, world = trained_repo["cfg"], trained_repo["world"]
    live, _ = generate_transactions(world, cfg, NOW, NOW + timedelta(hours=8), id_prefix="L")
    payloads = list(event_stream(live, disorder_ms=30_000, bad_fraction=0.02, seed=3))
    bad_ids = {p for p in payloads if not p.startswith(b"{") or b'"bad-' in p}
    assert len(bad_ids) >= 5
    producer = make_producer(broker.bootstrap_servers)
    for payload in payloads:
        try:
            key = orjson.loads(payload)["card_id"].encode()
        except Exception:  # noqa: BLE001 - malformed on purpose
            key = b"bad"
        producer.produce(trained_repo["topic"], payload, key)
    assert producer.flush(30) == 0
    bootstrap = broker.bootstrap_servers

    # Exactly one prediction per valid event, keyed by its transaction id.
    predictions = list(read_topic(bootstrap, worker["SLUICE_PREDICTIONS_TOPIC"], expect=len(live), timeout_s=90, idle_s=10))
    keys = [m.key().decode() for m in predictions]
    assert sorted(keys) == sorted(live["transaction_id"])
    for msg in predictions[:50]:
        body = orjson.loads(msg.value())
        assert body["transaction_id"] == msg.key().decode()
        assert 0.0 <= body["score"] <= 1.0
        assert set(body) >= {"entity", "score", "decision", "model_version", "event_time", "scored_at"}
        assert body["model_version"] == trained_repo["result"].version

    # Every malformed message is dead-lettered with a reason; nothing else is.
    dlq = list(read_topic(bootstrap, f"{trained_repo['topic']}.dlq", expect=len(bad_ids), timeout_s=30))
    assert sorted(m.value() for m in dlq) == sorted(bad_ids)
    for msg in dlq:
        headers = dict(msg.headers())
        assert headers["sluice.reason"]
        assert headers["sluice.source"].startswith(trained_repo["topic"].encode())

    # Every logged feature vector equals a brute-force recomputation from the events.
    log = [orjson.loads(m.value()) for m in read_topic(bootstrap, worker["SLUICE_PREDICTION_LOG_TOPIC"], expect=len(live), timeout_s=30)]
    plan = load_plan(open_store(trained_repo["path"]))
    arrivals = _arrivals(bootstrap, trained_repo["topic"], n_stages=2)
    rows = []
    for _, ev in live.iterrows():
        row = ev.to_dict()
        row["ts"] = parse_timestamp_ms(ev["event_time"].isoformat())
        for stage, (p, o) in enumerate(arrivals[ev["transaction_id"]]):
            row[f"_partition_{stage}"], row[f"_offset_{stage}"] = p, o
        rows.append(row)
    late, expected = brute_features(plan, rows, n_stages=2)
    assert not late
    by_id = {r["transaction_id"]: i for i, r in enumerate(rows)}
    profiles = trained_repo["world"].cards.set_index("card_id")
    mismatches = []
    for record in log:
        i = by_id[record["transaction_id"]]
        for name, value in expected[i].items():
            if not _close(record["features"][name], value):
                mismatches.append((record["transaction_id"], name, record["features"][name], value))
        profile = profiles.loc[record["entity"]["card_id"]]
        assert record["features"]["card_profile__credit_limit"] == pytest.approx(profile["credit_limit"])
        assert record["features"]["card_profile__account_age_days"] == profile["account_age_days"]
        assert list(record["features"]) == list(plan.vector)
        assert record["latency_ms"]["total"] >= 0
    assert not mismatches, mismatches[:5]
    assert len(log) == len(live)


def _arrivals(bootstrap: str, events_topic: str, n_stages: int) -> dict[str, list[tuple[int, int]]]:
    """Where each event sits in each stage's order, from the events topic alone (features/arrival.py)."""
    messages = list(read_topic(bootstrap, events_topic, idle_s=2))
    positions = stage_positions(
        np.array([m.partition() for m in messages]), np.array([m.offset() for m in messages]),
        np.array([m.timestamp()[1] for m in messages]), n_stages,
    )
    out: dict[str, list[tuple[int, int]]] = {}
    for i, msg in enumerate(messages):
        try:
            event_id = orjson.loads(msg.value())["transaction_id"]
        except Exception:  # noqa: BLE001
            continue
        out.setdefault(event_id, [(int(p[i]), int(o[i])) for p, o in positions])
    return out
