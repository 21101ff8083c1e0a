"""The label join in join-only workers (SLUICE_LABEL_JOIN=service, `sluice label-join`), on the real broker.

* A join worker reading an inline worker's prediction log, given the same
  labels, writes the very records the inline join writes.
* A scoring worker in service mode neither reads labels nor its prediction
  log (no offsets of its group on them, no label-join table), and its join
  worker joins every label.
"""

from __future__ import annotations

import urllib.request

import orjson
from confluent_kafka import TopicPartition

from stream.kafka.broker import free_port
from stream.kafka.clients import ensure_topics, make_admin, make_consumer
from stream.kafka.topics import AppTopics
from stream.settings import Settings
from stream.worker.labels import LabelSender
from tests.stream.worker.test_label_join_worker import DAY_MS, _events, _ms, _produce_events, _read


def _topics(unique) -> dict:
    return {name: unique(name.lower().rsplit("_", 2)[-2]) for name in (
        "SLUICE_PREDICTIONS_TOPIC", "SLUICE_PREDICTION_LOG_TOPIC", "SLUICE_LABELS_TOPIC", "SLUICE_LABELED_TOPIC")}


def _send_labels(bootstrap: str, label_topics: list[str], ids: list[str], at: dict, last_ms: int, before: bool) -> None:
    """The same labels to each topic: before the events (`before`), or the rest (late, duplicated, corrected, the clock)."""
    for topic in label_topics:
        sender = LabelSender(bootstrap, topic, 4, id_field="transaction_id", label_field="is_fraud")
        if before:
            for i in ids[:20]:
                sender.send(i, 1, at[i] + 3_600_000)
            for k in range(5):
                sender.send(f"ghost-{k}", 1, at[ids[0]] + DAY_MS)
        else:
            for i in ids[20:40]:
                sender.send(i, 0, at[i] + 2 * DAY_MS)
            for i in ids[40:60]:
                sender.send(i, 1, at[i] + DAY_MS)
                sender.send(i, 1, at[i] + DAY_MS)
            for i in ids[60:80]:
                sender.send(i, 1, at[i] + DAY_MS)
                sender.send(i, 0, at[i] + 3 * DAY_MS)
            sender.clock(last_ms + 60 * DAY_MS)
        sender.flush()


def _expected(ids: list[str]) -> int:
    """Records the labels of _send_labels make: joined (80), duplicate (20), correction (20), unlabeled, unmatched (5)."""
    return 80 + 20 + 20 + (len(ids) - 80) + 5


def _canon(messages) -> dict:
    """(event id, kind, revision) -> the record: the identity of a labeled record."""
    records = [orjson.loads(m.value()) for m in messages]
    return {(r["transaction_id"], r["kind"], r.get("revision")): r for r in records}


def test_a_join_worker_writes_what_the_inline_join_writes(broker, own_topic_repo, start_worker, start_join_worker, unique):
    bootstrap, topic = broker.bootstrap_servers, own_topic_repo["topic"]
    ensure_topics(bootstrap, [topic], 4)
    live, payloads = _events(own_topic_repo, 4, 3, "S")
    ids, times = list(live["transaction_id"]), [_ms(t) for t in live["event_time"]]
    inline = {**_topics(unique), "SLUICE_LABEL_JOIN": "inline"}
    # The join service of another app reads the inline worker's prediction log, with labels and output of its own.
    service = {**_topics(unique), "SLUICE_PREDICTION_LOG_TOPIC": inline["SLUICE_PREDICTION_LOG_TOPIC"]}
    ensure_topics(bootstrap, [inline["SLUICE_PREDICTION_LOG_TOPIC"], inline["SLUICE_LABELS_TOPIC"], service["SLUICE_LABELS_TOPIC"]], 4)
    start_worker(own_topic_repo, env=inline)
    start_join_worker(own_topic_repo, app_id=unique("joiner"), env=service)
    label_topics = [inline["SLUICE_LABELS_TOPIC"], service["SLUICE_LABELS_TOPIC"]]
    at = dict(zip(ids, times))
    _send_labels(bootstrap, label_topics, ids, at, times[-1], before=True)
    _produce_events(bootstrap, topic, payloads)
    assert len(_read(bootstrap, inline["SLUICE_PREDICTION_LOG_TOPIC"], len(ids))) == len(ids)
    _send_labels(bootstrap, label_topics, ids, at, times[-1], before=False)
    n = _expected(ids)
    by_inline = _canon(_read(bootstrap, inline["SLUICE_LABELED_TOPIC"], n))
    by_service = _canon(_read(bootstrap, service["SLUICE_LABELED_TOPIC"], n))
    assert len(by_inline) == n
    assert {k for k, _, _ in by_inline} == set(ids) | {f"ghost-{k}" for k in range(5)}
    assert by_service == by_inline


def test_a_scoring_worker_in_service_mode_reads_no_labels_and_its_join_worker_joins(
    broker, own_topic_repo, start_worker, start_join_worker, unique,
):
    bootstrap, topic = broker.bootstrap_servers, own_topic_repo["topic"]
    ensure_topics(bootstrap, [topic], 4)
    live, payloads = _events(own_topic_repo, 4, 3, "T")
    ids, times = list(live["transaction_id"]), [_ms(t) for t in live["event_time"]]
    env, app_id, port = {**_topics(unique), "SLUICE_LABEL_JOIN": "service"}, unique("svc"), free_port()
    ensure_topics(bootstrap, [env["SLUICE_PREDICTION_LOG_TOPIC"], env["SLUICE_LABELS_TOPIC"]], 4)
    start_worker(own_topic_repo, env=env, app_id=app_id)
    start_join_worker(own_topic_repo, app_id=app_id, env=env, metrics_port=port)
    at = dict(zip(ids, times))
    _send_labels(bootstrap, [env["SLUICE_LABELS_TOPIC"]], ids, at, times[-1], before=True)
    _produce_events(bootstrap, topic, payloads)
    assert len(_read(bootstrap, env["SLUICE_PREDICTION_LOG_TOPIC"], len(ids))) == len(ids)
    _send_labels(bootstrap, [env["SLUICE_LABELS_TOPIC"]], ids, at, times[-1], before=False)
    records = _canon(_read(bootstrap, env["SLUICE_LABELED_TOPIC"], _expected(ids)))
    kinds = sorted(kind for _, kind, _ in records)
    assert kinds.count("joined") == 80 and kinds.count("duplicate") == 20 and kinds.count("correction") == 20
    assert kinds.count("unlabeled") == len(ids) - 80 and kinds.count("unmatched_label") == 5
    # The join worker's group committed its inputs; the scoring worker's group never read them.
    for group, read in ((app_id, False), (f"{app_id}-join", True)):
        committed = _committed(bootstrap, group, [env["SLUICE_LABELS_TOPIC"], env["SLUICE_PREDICTION_LOG_TOPIC"]])
        assert any(offset >= 0 for offset in committed) is read, group
    tables, topics = set(make_admin(bootstrap).list_topics(timeout=10).topics), AppTopics.of(Settings(app_id=app_id), topic)
    assert topics.label_join_changelog("inline") not in tables
    assert topics.label_join_changelog("service") in tables
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert b'sluice_label_join_total{kind="joined"} 80.0' in reply.read()


def _committed(bootstrap: str, group: str, topics: list[str]) -> list[int]:
    consumer = make_consumer(bootstrap, **{"group.id": group, "enable.auto.commit": False})
    try:
        return [tp.offset for tp in consumer.committed([TopicPartition(t, p) for t in topics for p in range(4)], timeout=10)]
    finally:
        consumer.close()
