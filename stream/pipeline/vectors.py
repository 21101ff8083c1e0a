"""The model's input: stream features and batch features, in FeatureService order."""

from __future__ import annotations

import time

import numpy as np

from features.spec import FeaturePlan


def assemble(plan: FeaturePlan, names: list[str], features: np.ndarray, records: list[dict], rows: list[int], batch_cache):
    """(matrix, batch feature ms): one row per event in `rows`, the columns of `plan.vector`.

    `features` holds the stream features (`names`, one row per event in
    `rows`); batch features are looked up per view for the events' join
    keys. Without a cache every batch feature is missing (NaN), which the
    model handles as it was trained to.
    """
    n = len(rows)
    started = time.perf_counter()
    columns = dict(zip(names, features.T))
    for view in plan.batch_views:
        keys = [tuple(str(records[i][k]) for k in view.join_keys) for i in rows]
        block = batch_cache.lookup(view, keys) if batch_cache else np.full((n, len(view.features)), np.nan)
        for j, feature in enumerate(view.features):
            columns[f"{view.name}__{feature}"] = block[:, j]
    batch_ms = (time.perf_counter() - started) * 1000
    return np.column_stack([columns[name] for name in plan.vector]), batch_ms
