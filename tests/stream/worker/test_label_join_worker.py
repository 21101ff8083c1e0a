"""The label join in a real worker on the real broker: every order, duplicates, corrections, expiry, a SIGKILL."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import orjson
import pytest

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.lifecycle.label_join import partition_for
from stream.lifecycle.labeled import rows
from stream.lifecycle.online_eval import OnlineEvaluation
from stream.worker.labels import LabelSender
from tests.conftest import NOW
from tests.stream.lifecycle.test_online_eval import reference

DAY_MS = 86_400_000


@pytest.fixture
def label_env(unique):
    return {
        "SLUICE_LABEL_JOIN": "1",
        "SLUICE_PREDICTIONS_TOPIC": unique("pred"),
        "SLUICE_PREDICTION_LOG_TOPIC": unique("plog"),
        "SLUICE_LABELS_TOPIC": unique("labels"),
        "SLUICE_LABELED_TOPIC": unique("labeled"),
    }


def _events(repo, day: int, hours: float, prefix: str):
    live, _ = generate_transactions(
        repo["world"], repo["cfg"], NOW + timedelta(days=day), NOW + timedelta(days=day, hours=hours), id_prefix=prefix
    )
    return live, list(event_stream(live, seed=day))


def _produce_events(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    producer = make_producer(bootstrap)
    for payload in payloads:
        producer.produce(topic, payload, orjson.loads(payload)["card_id"].encode())
    assert producer.flush(30) == 0


def _sender(bootstrap: str, env: dict) -> LabelSender:
    return LabelSender(bootstrap, env["SLUICE_LABELS_TOPIC"], 4, id_field="transaction_id", label_field="is_fraud")


def _ms(ts) -> int:
    return int(ts.value // 1_000_000)


def _read(bootstrap: str, topic: str, expect: int, idle_s: float = 20.0) -> list:
    # A quiet spell, not the end offsets, ends a read (Tansu's can undercount); the join's last
    # records wait for every partition's clock, one more hop, which takes seconds on a busy machine.
    return list(read_topic(bootstrap, topic, expect=expect, timeout_s=120, idle_s=idle_s))


def _read_until(bootstrap: str, topic: str, done, idle_s: float = 8.0, rounds: int = 10) -> list:
    """The whole topic, read again after each quiet spell until `done(messages)` (or `rounds` reads)."""
    for _ in range(rounds):
        messages = _read(bootstrap, topic, 10**9, idle_s=idle_s)
        if done(messages):
            break
    return messages


def test_labels_before_after_twice_corrected_unmatched_and_missing_all_get_their_record(
    broker, own_topic_repo, start_worker, label_env, tmp_path, monkeypatch, capsys,
):
    bootstrap, topic = broker.bootstrap_servers, own_topic_repo["topic"]
    ensure_topics(bootstrap, [topic], 4)
    live, payloads = _events(own_topic_repo, 4, 3, "J")
    ids, times = list(live["transaction_id"]), [_ms(t) for t in live["event_time"]]
    n = len(ids)
    assert n > 120
    early, late, dup, corrected = ids[:20], ids[20:40], ids[40:60], ids[60:80]
    start_worker(own_topic_repo, env=label_env)
    labels = _sender(bootstrap, label_env)
    at = {i: t for i, t in zip(ids, times)}
    for i in early:
        labels.send(i, 1, at[i] + 3_600_000)  # before its event is even produced
    for k in range(5):
        labels.send(f"ghost-{k}", 1, times[0] + DAY_MS)  # for events that never arrive
    labels.flush()
    _produce_events(bootstrap, topic, payloads)
    log = _read(bootstrap, label_env["SLUICE_PREDICTION_LOG_TOPIC"], n)
    assert len({m.key() for m in log}) == n
    # The worker's producer and the labels' partition agree (librdkafka's CRC32 partitioner).
    assert all(m.partition() == partition_for(m.key(), 4) for m in log)
    for i in late:
        labels.send(i, 0, at[i] + 2 * DAY_MS)
    for i in dup:
        labels.send(i, 1, at[i] + DAY_MS)
        labels.send(i, 1, at[i] + DAY_MS)
    for i in corrected:
        labels.send(i, 1, at[i] + DAY_MS)
        labels.send(i, 0, at[i] + 3 * DAY_MS)
    labels.clock(times[-1] + 60 * DAY_MS)  # every window and grace is over
    labels.flush()
    expected = {
        **{i: ["joined"] for i in early + late},
        **{i: ["joined", "duplicate"] for i in dup},
        **{i: ["joined", "correction"] for i in corrected},
        **{i: ["unlabeled"] for i in ids[80:]},
        **{f"ghost-{k}": ["unmatched_label"] for k in range(5)},
    }
    records = [orjson.loads(m.value()) for m in _read(bootstrap, label_env["SLUICE_LABELED_TOPIC"], sum(map(len, expected.values())))]
    got: dict[str, list] = {}
    for r in records:
        got.setdefault(r["transaction_id"], []).append(r["kind"])
    assert got == expected
    # Each row carries exactly the vector and scores that were served.
    served = {m.key().decode(): orjson.loads(m.value()) for m in log}
    final = rows(records, "transaction_id")
    assert len(final) == n
    for event_id, row in final.items():
        assert row["features"] == served[event_id]["features"]
        assert row["scores"] == served[event_id].get("scores", {served[event_id]["model_version"]: served[event_id]["score"]})
        assert row["event_time"] == served[event_id]["event_time"]
    assert {final[i]["label"] for i in corrected} == {0} and {final[i]["label"] for i in ids[80:]} == {0}
    assert all(final[i]["label_source"] == "window" for i in ids[80:])
    # Online metrics from the topic equal the reference on the same rows.
    evaluation = OnlineEvaluation("transaction_id", window_ms=30 * DAY_MS)
    for r in records:
        evaluation.add_labeled(r)
    version = next(iter(final.values()))["model_version"]
    got_metrics = evaluation.combined(version).metrics()
    s = np.array([r["score"] for r in final.values()])
    y = np.array([r["label"] for r in final.values()], dtype=float)
    threshold = next(iter(final.values()))["threshold"]
    for name, value in reference(s, y, threshold).items():
        if not np.isnan(value):
            assert got_metrics[name] == pytest.approx(value, rel=1e-9), name


    # The CLI: the topic as a parquet dataset, then training on it with the offline skew check.
    from stream.cli.main import main

    env = {"SLUICE_LABELED_TOPIC": label_env["SLUICE_LABELED_TOPIC"], "SLUICE_PREDICTION_LOG_TOPIC": label_env["SLUICE_PREDICTION_LOG_TOPIC"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    common = ["--bootstrap-servers", bootstrap, "--repo", str(own_topic_repo["path"])]
    assert main(["labeled-sink", *common, "--output", str(tmp_path / "labeled"), "--idle", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "labeled").iterdir())[0].startswith("day=")
    code = main(["train", *common, "--from-labeled", str(tmp_path / "labeled"), "--model-dir", str(tmp_path / "m"),
                 "--trees", "5", "--alias", "none", "--alert-rate", "0.2"])
    printed = capsys.readouterr().out
    assert code == 0 and f"skew check: {n:,} rows recomputed offline" in printed and " 0 mismatches" in printed


def test_a_worker_killed_mid_stream_loses_no_pending_join_and_repeats_none(broker, own_topic_repo, start_worker, label_env, unique, tmp_path):
    bootstrap, topic = broker.bootstrap_servers, own_topic_repo["topic"]
    ensure_topics(bootstrap, [topic], 4)
    live, payloads = _events(own_topic_repo, 8, 4, "K")
    ids, times = list(live["transaction_id"]), [_ms(t) for t in live["event_time"]]
    at = dict(zip(ids, times))
    app_id = unique("labels-kill")
    first = start_worker(own_topic_repo, env={**label_env, "SLUICE_DATA_DIR": str(tmp_path / "a")}, app_id=app_id)
    labels = _sender(bootstrap, label_env)
    half = len(ids) // 2
    for i in ids[:half:3]:
        labels.send(i, 1, at[i] + DAY_MS)  # waiting for their predictions
    labels.flush()
    _produce_events(bootstrap, topic, payloads)
    assert len(_read(bootstrap, label_env["SLUICE_PREDICTION_LOG_TOPIC"], len(ids))) >= len(ids)
    # Labels stream in while the worker is killed part-way.
    for k, i in enumerate(ids[half:]):
        labels.send(i, k % 2, at[i] + DAY_MS)
        if k == len(ids[half:]) // 3:
            labels.flush()
            time.sleep(0.5)
            first.kill()
    labels.flush()
    start_worker(own_topic_repo, env={**label_env, "SLUICE_DATA_DIR": str(tmp_path / "b")}, app_id=app_id)
    labels.clock(times[-1] + 60 * DAY_MS)
    labels.flush()
    final = {"joined", "unlabeled"}
    messages = _read_until(bootstrap, label_env["SLUICE_LABELED_TOPIC"], lambda got: set(ids) <= {
        orjson.loads(m.value())["transaction_id"] for m in got if orjson.loads(m.value())["kind"] in final
    })
    by_id: dict[tuple, set] = {}
    for m in messages:
        r = orjson.loads(m.value())
        by_id.setdefault((r["transaction_id"], r["kind"], r["revision"]), set()).add(m.value())
    # Re-sent records are identical; every event has exactly its outcome.
    assert all(len(v) == 1 for v in by_id.values())
    kinds = {}
    for event_id, kind, _ in by_id:
        kinds.setdefault(event_id, []).append(kind)
    labelled = set(ids[:half:3]) | set(ids[half:])
    assert {i for i, k in kinds.items() if k == ["joined"]} == labelled
    assert {i for i, k in kinds.items() if k == ["unlabeled"]} == set(ids) - labelled
    assert len(kinds) == len(ids)


def test_the_gauges_show_the_latest_window_of_each_version_and_route():
    from prometheus_client import REGISTRY

    from stream.worker.labels import publish

    evaluation = OnlineEvaluation("transaction_id", window_ms=DAY_MS)
    for i, (score, label) in enumerate([(0.9, 1), (0.2, 0), (0.7, 0), (0.1, 0)]):
        record = {"transaction_id": f"g{i}", "kind": "joined", "revision": 1, "label": label, "label_source": "label",
                  "label_time": "2026-01-03T00:00:00.000Z", "model_version": "gv1", "route": "canary", "score": score,
                  "scores": {"gv1": score, "gv2": 1 - score}, "threshold": 0.5, "features": {},
                  "event_time": "2026-01-01T10:00:00.000Z"}
        evaluation.add_prediction(record)
        evaluation.add_labeled(record)
    publish(evaluation)
    sample = REGISTRY.get_sample_value
    assert sample("sluice_online_auc", {"version": "gv1", "route": "canary"}) == 1.0
    assert sample("sluice_online_auc", {"version": "gv2", "route": "shadow"}) == 0.0
    assert sample("sluice_online_precision", {"version": "gv1", "route": "canary"}) == 0.5
    assert sample("sluice_online_label_coverage_ratio", {"version": "gv1", "route": "canary"}) == 1.0
    assert sample("sluice_online_window_provisional", {"version": "gv1", "route": "canary"}) == 1.0
    assert sample("sluice_online_label_delay_seconds", {"version": "gv1", "route": "canary"}) == 38 * 3600
