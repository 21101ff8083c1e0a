"""Backfilled values registered in Feast come back from get_historical_features."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from features.feast_repo import load_plan, open_store


def test_backfill_output_is_served_by_feast_point_in_time_join(trained_repo, tmp_path):
    out = tmp_path / "backfill.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "backfill", "--repo", str(trained_repo["path"]), "--output", str(out), "--to-feast"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "events/s" in proc.stdout
    values = pd.read_parquet(out)
    scored = values[values["late_stage"] < 0].sample(200, random_state=1)
    store = open_store(trained_repo["path"])
    plan = load_plan(store)
    entity_df = pd.DataFrame(
        {"card_id": scored["card_id"].to_numpy(), "event_timestamp": pd.to_datetime(scored["event_time"], utc=True).to_numpy()}
    )
    got = store.get_historical_features(
        entity_df=entity_df, features=["card_txn_backfill:card_txn__txn_count_1h", "card_txn_backfill:card_txn__amount_sum_24h"]
    ).to_df()
    merged = entity_df.assign(expected=scored["card_txn__txn_count_1h"].to_numpy()).merge(
        got, on=["card_id", "event_timestamp"]
    )
    # At an event's own time Feast returns that event's row (unless another event of the card shares the millisecond).
    assert len(merged) >= 200
    assert np.mean(merged["expected"].to_numpy() == merged["card_txn__txn_count_1h"].to_numpy()) > 0.99
    assert plan.service
