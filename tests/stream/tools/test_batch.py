"""Batch scoring and the out-of-core backfill: equal to the stream, to the in-memory kernel, on Ray, in bounded memory."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import orjson
import pandas as pd
import pytest

from features.arrival import stage_positions
from features.feast_repo import load_plan, open_store
from features.offline import compute_features
from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.pipeline.clock import TICK_KEY
from stream.lifecycle.train import history_path
from stream.serving.deployment import first
from stream.tools.batch import BatchJob, Runner, ServingSpec, read_output, run
from tests.conftest import NOW


@pytest.fixture(scope="module")
def plan(trained_repo):
    return load_plan(open_store(trained_repo["path"]))


@pytest.fixture(scope="module")
def disordered(trained_repo, plan, tmp_path_factory):
    """The trained repo's history as two events partitions read out of order: some events late, rows shuffled."""
    store = open_store(trained_repo["path"])
    history = pd.read_parquet(history_path(store, plan, trained_repo["path"]))
    rng = np.random.default_rng(5)
    arrival = history["event_time"].astype("int64").to_numpy() // 1_000_000 + rng.integers(0, 7 * 60_000, len(history))
    history = history.iloc[np.argsort(arrival, kind="stable")].reset_index(drop=True)
    history["_partition_0"] = (pd.util.hash_array(history["card_id"].to_numpy()) % 2).astype("int64")
    history["_offset_0"] = history.groupby("_partition_0").cumcount().astype("int64")
    history = history.sample(frac=1.0, random_state=4).reset_index(drop=True)
    path = tmp_path_factory.mktemp("batch") / "history.parquet"
    history.to_parquet(path, index=False)
    return history, path


def _spec(trained_repo) -> ServingSpec:
    champion = (trained_repo["model_dir"] / "champion").read_text().strip()
    return ServingSpec(first(champion), {champion: str(trained_repo["model_dir"] / champion)})


def test_sharded_backfill_equals_the_in_memory_kernel(trained_repo, plan, disordered, tmp_path):
    history, path = disordered
    expected = compute_features(plan, history)
    assert 0 < (expected.late_stage >= 0).sum() < len(history) // 2
    folder = tmp_path / "history"  # the same history as a directory of files: rows count in (file name, row) order
    folder.mkdir()
    half = len(history) // 2
    history.iloc[:half].to_parquet(folder / "a.parquet", index=False)
    history.iloc[half:].to_parquet(folder / "b.parquet", index=False)
    for shards, source in ((1, path), (3, folder)):
        job = BatchJob(plan, str(trained_repo["path"]), str(tmp_path / f"work{shards}"), shards)
        report = run(job, source, tmp_path / f"out{shards}")
        out = read_output(tmp_path / f"out{shards}").sort_values("_row").reset_index(drop=True)
        assert report.events == len(history) and report.late == int((expected.late_stage >= 0).sum())
        assert (out["late_stage"].to_numpy() == expected.late_stage).all()
        assert (out["transaction_id"].to_numpy() == history["transaction_id"].to_numpy()).all()
        for name in expected.frame.columns:  # bit for bit, NaN where NaN
            assert np.array_equal(out[name].to_numpy(), expected.frame[name].to_numpy(), equal_nan=True), name
        assert not (tmp_path / f"work{shards}").exists()


@pytest.fixture
def ray_local():
    ray = pytest.importorskip("ray")
    yield Runner("local", num_cpus=2)
    ray.shutdown()


def test_ray_equals_one_process(trained_repo, plan, disordered, tmp_path, ray_local):
    _, path = disordered
    spec = _spec(trained_repo)
    here = run(BatchJob(plan, str(trained_repo["path"]), str(tmp_path / "w1"), 4, spec, chunk_rows=1000), path, tmp_path / "one")
    there = run(BatchJob(plan, str(trained_repo["path"]), str(tmp_path / "w2"), 4, spec, chunk_rows=1000), path, tmp_path / "ray", ray_local)
    assert here.predictions == there.predictions > 0
    one, many = read_output(tmp_path / "one"), read_output(tmp_path / "ray")
    assert len(one) == here.events
    pd.testing.assert_frame_equal(one, many, check_exact=True)


@pytest.fixture
def served(broker, own_topic_repo, start_worker, unique):
    """Events through a real worker, out of order beyond the allowed lateness: the topics it wrote."""
    repo = own_topic_repo
    topics = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog")}
    ensure_topics(broker.bootstrap_servers, [repo["topic"]], 4)
    start_worker(repo, env=topics, app_id=unique("batch"))
    live, _ = generate_transactions(repo["world"], repo["cfg"], NOW, NOW + timedelta(hours=6), id_prefix="B")
    producer = make_producer(broker.bootstrap_servers)
    for payload in event_stream(live, disorder_ms=8 * 60_000, seed=9):
        producer.produce(repo["topic"], payload, orjson.loads(payload)["card_id"].encode())
    assert producer.flush(30) == 0
    bootstrap = broker.bootstrap_servers
    late = list(read_topic(bootstrap, f"{repo['topic']}.late", timeout_s=90, idle_s=8))
    log = [orjson.loads(m.value()) for m in read_topic(bootstrap, topics["SLUICE_PREDICTION_LOG_TOPIC"], expect=len(live) - len(late), timeout_s=90, idle_s=10)]
    predictions = {m.key().decode(): orjson.loads(m.value()) for m in read_topic(bootstrap, topics["SLUICE_PREDICTIONS_TOPIC"], idle_s=5)}
    events = list(read_topic(bootstrap, repo["topic"], idle_s=3))
    return {"repo": repo, "late": late, "log": log, "predictions": predictions, "events": events, "n": len(live)}


def _history_of(served) -> pd.DataFrame:
    """The events topic as a history: every event, where it arrived at stage 0, and its place in the arrival order after."""
    messages = served["events"]
    positions = stage_positions(
        np.array([m.partition() for m in messages]), np.array([m.offset() for m in messages]),
        np.array([m.timestamp()[1] for m in messages]), 2,
    )
    rows = []
    for i, msg in enumerate(messages):
        if msg.key() == TICK_KEY:
            continue  # it moved the clock (counted in `positions`); it is not an event
        row = orjson.loads(msg.value())
        for stage, (p, o) in enumerate(positions):
            row[f"_partition_{stage}"], row[f"_offset_{stage}"] = int(p[i]), int(o[i])
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    return frame


def test_batch_score_equals_the_stream(served, tmp_path):
    repo, log = served["repo"], served["log"]
    assert served["late"] and len(log) + len(served["late"]) == served["n"]
    history = _history_of(served)
    history.to_parquet(tmp_path / "history.parquet", index=False)
    plan = load_plan(open_store(repo["path"]))
    job = BatchJob(plan, str(repo["path"]), str(tmp_path / "work"), 3, _spec(repo), chunk_rows=500)
    report = run(job, tmp_path / "history.parquet", tmp_path / "scored")
    out = read_output(tmp_path / "scored").set_index("transaction_id")
    assert report.late == len(served["late"])
    late_ids = {orjson.loads(m.value())["transaction_id"] for m in served["late"]}
    assert set(out.index[out["outcome"] == "late"]) == late_ids
    assert len(log) == report.predictions
    for record in log:
        row = out.loc[record["transaction_id"]]
        published = served["predictions"][record["transaction_id"]]
        assert row["outcome"] == "prediction"
        assert row["score"] == record["score"] == published["score"]  # bit for bit
        assert (row["decision"], row["model_version"], row["route"], row["fallback"]) == (
            published["decision"], published["model_version"], published["route"], published["fallback"])
        assert row["event_time"] == published["event_time"]
        assert json.loads(row["entity"]) == published["entity"]
        assert row["threshold"] == record["threshold"] and row["rule"] == record["rule"]
        vector = np.array([np.nan if v is None else v for v in record["features"].values()])
        assert np.array_equal(row[list(plan.vector)].to_numpy(dtype=np.float64), vector, equal_nan=True), record["transaction_id"]


def test_the_memory_bench_runs_both_commands_over_both_histories(trained_repo, plan, tmp_path):
    """`sluice bench --batch-memory`'s measurement: peak RSS reported, not asserted (memory is measured, not tested)."""
    from stream.tools.bench.batch_memory import side_by_side

    report = side_by_side(plan, trained_repo["path"], trained_repo["model_dir"], tmp_path, 20_000, entities=1_000, shard_rows=5_000)
    assert [(r["command"], r["events"]) for r in report["runs"]] == [
        ("backfill", 20_000), ("batch-score", 20_000), ("backfill", 80_000), ("batch-score", 80_000)]
    assert all(r["peak_rss_mb"] > 0 for r in report["runs"])
    assert set(report["peak_ratio_4x_history"]) == {"backfill", "batch-score"}
    for command in ("backfill", "batch-score"):
        assert len(read_output(tmp_path / f"out-{command}-80000")) == 80_000


def test_training_set_built_a_shard_at_a_time_is_the_same(trained_repo, plan, tmp_path):
    from stream.lifecycle.train import training_frame
    from stream.tools.batch import offline_features

    def sharded(plan_, history, source):
        return offline_features(BatchJob(plan_, str(trained_repo["path"]), str(tmp_path / "work"), 3), source, history.index)

    whole = training_frame(trained_repo["path"], None, None, None)
    shards = training_frame(trained_repo["path"], None, None, None, features=sharded)
    assert len(whole.x) > 100
    pd.testing.assert_frame_equal(whole.x, shards.x, check_exact=True)
    assert (whole.y == shards.y).all()
