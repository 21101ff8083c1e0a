"""`sluice chaos`, short: a live stream under a kill, a rebalance, a broker pause and hostile input.

Every fault lands while the stream still flows, and the report's fault
figures (stall per fault kind, commit lag, what a kill made the group read
again) are read back from the topics and the group's committed offsets.
"""

from __future__ import annotations

from datetime import timedelta

from features.feast_repo import load_plan, open_store
from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.broker import EmbeddedBroker
from stream.tools.chaos import Faults, run_chaos
from stream.tools.hostile import spread_corpus
from tests.conftest import NOW


def test_every_message_has_exactly_one_outcome_and_exact_features_under_faults(trained_repo, tmp_path):
    cfg, world = trained_repo["cfg"], trained_repo["world"]
    live, _ = generate_transactions(world, cfg, NOW + timedelta(days=7), NOW + timedelta(days=9), id_prefix="X")
    payloads = list(event_stream(live, disorder_ms=30_000, seed=9))[:6000]
    plan = load_plan(open_store(trained_repo["path"]))
    placed = spread_corpus(plan.schema, plan.partition_key, payloads, seed=9)
    corpus = [m for _, m in placed]
    assert len({m.kind for m in corpus}) >= 30
    with EmbeddedBroker() as broker:  # its own: the test pauses it
        report = run_chaos(
            broker.bootstrap_servers, broker.pid, trained_repo["path"], trained_repo["model_dir"], payloads,
            # 200 events/s: a short stream still outlasts a worker's restart.
            [(at, m.key, m.value) for at, m in placed], tmp_path, rate=200.0,
            faults=Faults(kills=1, rebalances=1, broker_pauses=1, pause_s=2.0), seed=9,
        )
    line = report.line()
    assert (report.kills, report.rebalances, report.broker_pauses) == (1, 2, 1), line
    assert line["events"] == len(payloads) + len(corpus)
    assert line["predictions"] + line["dlq"] + line["late"] == line["events"], line
    assert line["dlq"] >= sum(m.expect == "dlq" for m in corpus), line
    # Late are only what the corpus makes late: no on-time event fell behind a hostile one's time.
    assert line["late"] == sum(m.expect == "late" for m in corpus), line
    assert line["lost"] == 0 and line["duplicates_differing"] == 0, (line, report.examples)
    assert line["feature_mismatches"] == 0 and report.late == report.late_offline, (line, report.examples)
    assert line["worker_crashes"] == 0, report.examples
    # Each fault hit a stream that was still flowing: messages were produced after it.
    assert line["faults_skipped"] == 0 and len(report.faults) == 4, report.faults
    assert all(fault["flowing_s"] > 0 for fault in report.faults), report.faults
    assert set(line["stall_s"]) == {"kill", "join", "leave", "broker_pause"}, line
    assert all(stall > 0 for stall in line["stall_s"].values()), line
    assert len(line["replayed_per_kill"]) == 1 and line["replayed_per_kill"][0]["reread"] >= 0, line
    assert line["commit_lag_max"] > 0, line
