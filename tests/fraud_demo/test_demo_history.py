"""`sluice demo`'s history is long enough for its longest window: no false drift on the first windows."""

from __future__ import annotations

from datetime import timedelta

from features.feast_repo import load_plan, open_store
from fraud_demo.generator import DemoConfig
from fraud_demo.run import HISTORY_DAYS

#: train.py validates on the newest fifth of the labelled rows, and the monitor's reference is taken from them.
VALIDATION_SHARE = 0.2


def test_validation_rows_and_live_events_see_the_longest_window_whole(trained_repo):
    plan = load_plan(open_store(trained_repo["path"]))  # the demo repo's definitions, applied
    day = timedelta(days=1)
    longest = max(timedelta(milliseconds=a.window_ms) for v in plan.stream_views for a in v.aggs)
    hop = max(timedelta(milliseconds=a.slide_ms) for v in plan.stream_views for a in v.aggs if timedelta(milliseconds=a.window_ms) == longest)
    # Rows are labelled (final) only when older than the legit label delay: training sees [start, end - delay].
    labelled = HISTORY_DAYS * day - DemoConfig().legit_label_delay
    first_validation_row = (1 - VALIDATION_SHARE) * labelled
    assert first_validation_row >= longest + hop, (
        f"{HISTORY_DAYS} days of history: the validation rows start {first_validation_row / day:.1f} days in, "
        f"inside the first {longest / day:g}-day window (+ a {hop / day:g}-day hop)"
    )
