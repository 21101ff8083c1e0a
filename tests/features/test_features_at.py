"""Point-in-time features for arbitrary (entity, time) rows agree with the per-event path."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.offline import compute_features, features_at
from features.spec import EventSchema, FeaturePlan, StreamView, make_agg

SCHEMA = EventSchema(
    fields=(("id", "string"), ("card", "string"), ("amount", "double"), ("t", "timestamp")),
    event_id="id",
    timestamp_field="t",
    topic="events",
    allowed_lateness_ms=0,
)
PLAN = FeaturePlan(
    service="s",
    schema=SCHEMA,
    stream_views=(
        StreamView(
            "cv",
            ("card",),
            (
                make_agg("cv", "n", "count", "amount", 60_000, None),
                make_agg("cv", "sum", "sum", "amount", 60_000, 10_000),
                make_agg("cv", "std", "std", "amount", 120_000, None),
            ),
        ),
    ),
    batch_views=(),
    vector=(),
    partition_key="card",
)


def _history(n=400, seed=1):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 600_000, n))
    return pd.DataFrame(
        {
            "id": [f"e{i}" for i in range(n)],
            "card": [f"c{rng.integers(0, 5)}" for _ in range(n)],
            "amount": rng.normal(50, 20, n).round(2),
            "t": pd.to_datetime(ts, unit="ms", utc=True),
        }
    )


def test_rows_at_event_times_match_the_events_own_features():
    history = _history()
    per_event = compute_features(PLAN, history).frame
    # Asking at each event's own time, over the events strictly before it, is what the event saw
    # (events sharing a millisecond are excluded either way).
    rows = history[["card", "t"]]
    at = features_at(PLAN, history, rows)
    for name in per_event:
        a, b = per_event[name].to_numpy(), at[name].to_numpy()
        assert np.allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True), name


def test_unknown_entities_and_missing_keys_give_empty_windows():
    history = _history()
    rows = pd.DataFrame({"card": ["nobody"], "t": pd.to_datetime([300_000], unit="ms", utc=True)})
    at = features_at(PLAN, history, rows)
    assert at["cv__n"].iloc[0] == 0
    assert np.isnan(at["cv__std"].iloc[0])
    no_keys = features_at(PLAN, history, rows[["t"]])
    assert np.isnan(no_keys["cv__n"].iloc[0])
