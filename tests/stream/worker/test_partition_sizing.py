"""The events topic decides how many partitions a worker's topics and tables have; --partitions sizes only a missing one."""

from __future__ import annotations

import subprocess
from datetime import timedelta

from features.feast_repo import load_plan, open_store
from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.clients import ensure_topics, topic_partition_counts
from stream.kafka.reader import read_topic
from stream.tools.process import worker_process
from tests.conftest import NOW
from tests.stream.worker.test_label_join_worker import _produce_events


def _repartition_topic(repo: dict, app_id: str) -> str:
    stages = load_plan(open_store(repo["path"])).stages()
    return f"{app_id}-repartition-{'-'.join(stages[1])}"


def test_a_worker_told_two_partitions_serves_an_events_topic_of_four(broker, own_topic_repo, tmp_path, unique):
    # The producer made the events topic with 4 partitions; the worker was
    # started with --partitions 2. It made its repartition topic and
    # changelogs with 2, and died at the first chunk of partition 2 or 3
    # writing state to a changelog partition that did not exist
    # (_UNKNOWN_PARTITION), leaving every event without an outcome.
    bootstrap, topic = broker.bootstrap_servers, own_topic_repo["topic"]
    ensure_topics(bootstrap, [topic], 4)
    app_id = unique("sized")
    outputs = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog")}
    worker = worker_process(
        bootstrap, own_topic_repo["path"], own_topic_repo["model_dir"], tmp_path, "worker", app_id=app_id,
        partitions=2, env=outputs,
    )
    try:
        worker.start().wait_ready()
        live, _ = generate_transactions(
            own_topic_repo["world"], own_topic_repo["cfg"], NOW, NOW + timedelta(hours=2), id_prefix="P"
        )
        _produce_events(bootstrap, topic, list(event_stream(live, seed=5)))
        predictions = list(read_topic(bootstrap, outputs["SLUICE_PREDICTIONS_TOPIC"], expect=len(live), timeout_s=120, idle_s=15))
        assert sorted(m.key().decode() for m in predictions) == sorted(live["transaction_id"])
        assert worker.proc.poll() is None
        internal = [_repartition_topic(own_topic_repo, app_id), f"{app_id}-state-0-changelog", f"{app_id}-state-1-changelog"]
        assert topic_partition_counts(bootstrap, internal) == dict.fromkeys(internal, 4)
    finally:
        worker.stop()


def test_internal_topics_of_another_size_stop_the_start_with_one_sentence(broker, own_topic_repo, tmp_path, unique):
    # A repartition topic left by an earlier run with another partition count
    # cannot be used (keys would land in other partitions than their state):
    # the worker refuses to start and says what to delete.
    bootstrap, topic = broker.bootstrap_servers, own_topic_repo["topic"]
    app_id = unique("mismatch")
    ensure_topics(bootstrap, [topic], 4)
    repartition = _repartition_topic(own_topic_repo, app_id)
    ensure_topics(bootstrap, [repartition], 2)
    worker = worker_process(bootstrap, own_topic_repo["path"], own_topic_repo["model_dir"], tmp_path, "worker", app_id=app_id)
    try:
        worker.start()
        try:
            status = worker.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            status = None
        log = worker.log_path.read_text(errors="replace")
        assert status == 2, log[-2000:]
        errors = [line for line in log.splitlines() if line.startswith("sluice: error:")]
        assert len(errors) == 1, log[-2000:]
        assert f"{repartition} (2)" in errors[0] and "--app-id" in errors[0]
        assert "Traceback" not in log
        assert topic_partition_counts(bootstrap, [repartition]) == {repartition: 2}
    finally:
        worker.stop()
