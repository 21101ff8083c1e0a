"""A joining worker reads the changelogs before it joins the group, not inside the rebalance.

The partitions a joiner takes produce nothing until their window state is
restored; reading whole changelogs there (the embedded broker never compacts
them) stalled them 19-57 s per join. The joiner now catches its RocksDB
copies up first, while the current owners keep serving, so the rebalance
reads only what was written since. How long the stall lasts is measured by
`sluice chaos` (stall_s for a join); this checks that the copies are there,
for every partition, before the joiner takes any, and that what it computes
from them equals the offline path.
"""

from __future__ import annotations

import re

import orjson

from features.feast_repo import load_plan, open_store
from stream.kafka.clients import make_producer
from stream.kafka.reader import read_topic
from stream.tools.parity import _repartition_topics, arrival_columns, compare
from tests.stream.worker.test_rebalance_stall import _held_offsets, _last_offsets, _six_hours


def test_a_joiner_holds_every_partitions_state_before_it_takes_any(broker, own_topic_repo, start_worker, unique, tmp_path):
    bootstrap = broker.bootstrap_servers
    app_id = unique("prewarm")
    # No standby copies: what the joiner holds for partitions it was not given can only come from the pre-warm.
    env = {"SLUICE_PREDICTIONS_TOPIC": unique("pred"), "SLUICE_PREDICTION_LOG_TOPIC": unique("plog"), "SLUICE_STANDBY_REPLICAS": "0"}
    live, payloads = _six_hours(own_topic_repo, bootstrap)
    half = len(payloads) // 2
    producer = make_producer(bootstrap)

    def produce(items) -> None:
        for payload in items:
            producer.produce(own_topic_repo["topic"], payload, orjson.loads(payload)["card_id"].encode())
        assert producer.flush(30) == 0

    start_worker(own_topic_repo, env={**env, "SLUICE_DATA_DIR": str(tmp_path / "first")}, app_id=app_id)
    produce(payloads[:half])
    got = read_topic(bootstrap, env["SLUICE_PREDICTIONS_TOPIC"], expect=half, timeout_s=180, idle_s=30)
    assert len({m.key() for m in got}) == half

    plan = load_plan(open_store(own_topic_repo["path"]))
    tables = [f"state-{stage}" for stage in range(len(plan.stages()))]
    before = {t: _last_offsets(bootstrap, f"{app_id}-{t}-changelog") for t in tables}
    joiner_dir = tmp_path / "joiner"
    joiner = start_worker(own_topic_repo, env={**env, "SLUICE_DATA_DIR": str(joiner_dir), "SLUICE_LOG_LEVEL": "info"}, app_id=app_id)

    # Every partition of every table, including the ones the joiner was not given, holds at least the
    # changelog as it was when the joiner started.
    for table in tables:
        held = _held_offsets(joiner_dir, table, 4)
        assert all(held[p] is not None and held[p] >= last for p, last in before[table].items()), (table, held, before[table])
    caught_up = re.search(r"caught up (\d+) changelog records before joining", joiner.log_path.read_text(errors="replace"))
    assert caught_up and int(caught_up.group(1)) > 0

    produce(payloads[half:])
    log = [
        orjson.loads(m.value())
        for m in read_topic(bootstrap, env["SLUICE_PREDICTION_LOG_TOPIC"], expect=len(payloads), timeout_s=240, idle_s=60)
    ]
    assert len({r["transaction_id"] for r in log}) == len(payloads)
    where = arrival_columns(bootstrap, plan, plan.schema.event_id, _repartition_topics(plan, app_id))
    report = compare(plan, live, log, where, set())
    assert report.compared >= len(payloads)
    assert report.mismatches == 0, report.examples
