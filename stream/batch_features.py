"""Batch features from the Feast online store, looked up per micro-batch and cached.

A per-event `get_online_features` call costs milliseconds; one call for all
cache misses of a batch costs about the same. Entries are refreshed after
`ttl_s`, so materialized updates reach the worker within that time.
"""

from __future__ import annotations

import time

import numpy as np

from features.spec import BatchView


class BatchFeatureCache:
    def __init__(self, store, views: tuple[BatchView, ...], ttl_s: float = 60.0, max_entries: int = 2_000_000):
        self.store = store
        self.views = views
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: dict[str, dict[tuple, tuple[float, np.ndarray]]] = {v.name: {} for v in views}
        self.lookups = 0
        self.misses = 0

    def lookup(self, view: BatchView, keys: list[tuple]) -> np.ndarray:
        """Rows of feature values (NaN when missing), one per key tuple."""
        cache = self._cache[view.name]
        now = time.monotonic()
        self.lookups += len(keys)
        wanted = [k for k in dict.fromkeys(keys) if k not in cache or now - cache[k][0] > self.ttl_s]
        if wanted:
            self.misses += len(wanted)
            if len(cache) + len(wanted) > self.max_entries:
                cache.clear()
            for key, row in zip(wanted, self._fetch(view, wanted)):
                cache[key] = (now, row)
        return np.vstack([cache[k][1] for k in keys]) if keys else np.zeros((0, len(view.features)))

    def _fetch(self, view: BatchView, keys: list[tuple]) -> list[np.ndarray]:
        rows = [dict(zip(view.join_keys, k)) for k in keys]
        refs = [f"{view.name}:{f}" for f in view.features]
        result = self.store.get_online_features(features=refs, entity_rows=rows).to_dict()
        columns = []
        for feature in view.features:
            values = result.get(feature) or result.get(f"{view.name}__{feature}") or [None] * len(keys)
            columns.append([np.nan if v is None else float(v) for v in values])
        return list(np.asarray(columns, dtype=np.float64).T.reshape(len(keys), len(view.features)))
