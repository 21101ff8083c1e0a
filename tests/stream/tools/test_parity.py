"""Training/serving parity under disorder, lateness and a worker crash (real broker, Faust, Feast)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import DemoConfig, generate_transactions
from fraud_demo.prepare import prepare
from stream.tools.parity import run_parity
from tests.conftest import NOW, ROOT


def test_every_logged_feature_equals_offline_after_a_crash(broker, tmp_path):
    cfg = DemoConfig(seed=5, n_cards=400, n_merchants=40, legit_label_delay=timedelta(hours=12))
    prepared = prepare(
        ROOT / "feature_repo", tmp_path, cfg, history_days=3, history_end=NOW, topic=f"par-{uuid.uuid4().hex[:8]}", trees=10
    )
    live, _ = generate_transactions(prepared.world, cfg, NOW, NOW + timedelta(days=4), id_prefix="p")
    live = live.iloc[:6000]
    # Up to ~7 minutes of disorder: most events are merely out of order, some
    # exceed the 5-minute allowance and must be late both online and offline.
    payloads = list(event_stream(live, disorder_ms=420_000, seed=2))
    report = run_parity(broker.bootstrap_servers, prepared.path, prepared.model_dir, payloads, tmp_path, partitions=4, kill_at=0.4)
    assert report.restarts == 1
    assert report.late_online > 0
    assert report.late_online == report.late_offline
    assert report.compared >= len(live) - report.late_online
    assert report.mismatches == 0, report.examples
    assert report.ok
