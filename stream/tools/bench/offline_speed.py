"""Offline feature speed: `compute_features` against the obvious pandas rolling-window version."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

def measure_offline(plan, history: pd.DataFrame) -> dict:
    """compute_features against a plain pandas rolling-window implementation."""
    from features.offline import compute_features

    view = next(v for v in plan.stream_views if v.join_keys == (plan.partition_key,) and not any(a.hopping for a in v.aggs))
    # The same single view for both sides: a like-for-like comparison.
    one_view = replace(plan, stream_views=(view,), batch_views=(), vector=tuple(f"{view.name}__{a.name}" for a in view.aggs))
    t = time.perf_counter()
    compute_features(plan, history)
    full_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = compute_features(one_view, history).frame
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    theirs = pandas_rolling_features(view, history, plan.schema.timestamp_field)
    pandas_s = time.perf_counter() - t
    n = len(history)
    return {
        "events": n,
        "view": view.name,
        "features": len(view.aggs),
        "compute_features_all_views_s": round(full_s, 2),
        "compute_features_all_views_events_per_s": round(n / full_s, 1),
        "compute_features_s": round(ours_s, 2),
        "compute_features_events_per_s": round(n / ours_s, 1),
        "pandas_s": round(pandas_s, 2),
        "pandas_events_per_s": round(n / pandas_s, 1),
        "speedup_vs_pandas": round(pandas_s / ours_s, 2),
        **compare_frames(ours, theirs),
    }


def pandas_rolling_features(view, events: pd.DataFrame, time_field: str) -> pd.DataFrame:
    """The obvious pandas version: per entity, time-based rolling windows.

    closed="left" makes the window [t - w, t): the event itself and events
    at the very same time are outside, as in Sluice. Empty windows are NaN in
    pandas; count, sum and count_distinct are 0 there in Sluice.
    """
    import pandas as pd

    key = view.join_keys[0]
    frame = events.sort_values([key, time_field], kind="stable")
    # Rolling windows take numbers only: distinct counts run on value codes.
    for column in {a.column for a in view.aggs if a.function == "count_distinct"}:
        frame[f"{column}__code"] = pd.factorize(frame[column])[0].astype(np.float64)
    grouped = frame.groupby(key, sort=True)
    out = {}
    for window in sorted({a.window_ms for a in view.aggs}):
        rolling = grouped.rolling(pd.Timedelta(milliseconds=window), on=time_field, closed="left")
        for agg in (a for a in view.aggs if a.window_ms == window):
            if agg.function == "count_distinct":
                values = rolling[f"{agg.column}__code"].apply(_count_distinct, raw=True)
            else:
                values = getattr(rolling[agg.column], agg.function)()
            if agg.function in ("count", "sum", "count_distinct"):
                values = values.fillna(0.0)
            # Groups come out in sorted key order, rows in frame order: the
            # order `frame` already has, so positions line up.
            out[f"{view.name}__{agg.name}"] = values.to_numpy()
    return pd.DataFrame(out, index=frame.index).reindex(events.index)


def _count_distinct(window: np.ndarray) -> float:
    return float(len(np.unique(window)))


def compare_frames(ours: pd.DataFrame, theirs: pd.DataFrame) -> dict:
    max_abs = max_rel = 0.0
    worst, nan_mismatch = None, 0
    for name in ours.columns:
        a, b = ours[name].to_numpy(np.float64), theirs[name].to_numpy(np.float64)
        both = ~np.isnan(a) & ~np.isnan(b)
        nan_mismatch += int((np.isnan(a) != np.isnan(b)).sum())
        diff = np.abs(a[both] - b[both])
        if len(diff):
            max_abs = max(max_abs, float(diff.max()))
            rel = float((diff / np.maximum(np.abs(a[both]), 1e-12)).max())
            if rel > max_rel:
                max_rel, worst = rel, name
    return {"compared_rows": len(ours), "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "max_rel_diff_feature": worst, "nan_mismatches": nan_mismatch}
