"""The model's input: stream features and batch features, in FeatureService order.

Batch features come from the online store through a cache. When the store
fails (raises) or is slow (one lookup over `slow_ms`), its values are
missing for the batch and the events say why (`online_store_unavailable`,
`online_store_slow`); the store is then left alone for `retry_s` (a circuit
breaker: a store that times out must not hold up every batch by its
timeout), and tried again after that.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from features.spec import FeaturePlan
from stream import metrics

log = logging.getLogger("sluice.batch_features")


@dataclass
class Assembled:
    matrix: np.ndarray
    batch_ms: float
    missing: dict[str, np.ndarray]  # batch view -> rows with no online row (all of its features missing)
    problem: str | None  # why the batch's batch features could not be read, or None


class BatchFeatures:
    """Batch-feature lookups with a circuit breaker around the online store."""

    def __init__(self, cache, slow_ms: float = 500.0, retry_s: float = 5.0):
        self.cache = cache
        self.slow_ms = slow_ms
        self.retry_s = retry_s
        self._open_until = 0.0
        self._why: str | None = None

    def lookup(self, plan: FeaturePlan, records: list[dict], rows: list[int]) -> tuple[dict, str | None]:
        """({view name: block of values}, problem) for the events in `rows`."""
        n = len(rows)
        blocks = {v.name: np.full((n, len(v.features)), np.nan) for v in plan.batch_views}
        if self.cache is None or not plan.batch_views:
            return blocks, None
        now = time.monotonic()
        if now < self._open_until:
            return blocks, self._why
        started = time.perf_counter()
        try:
            for view in plan.batch_views:
                keys = _keys(view.join_keys, records, rows)
                blocks[view.name] = self.cache.lookup(view, keys)
        except Exception as exc:  # noqa: BLE001 - any store failure: answered by the fallback chain
            blocks = {v.name: np.full((n, len(v.features)), np.nan) for v in plan.batch_views}
            return blocks, self._trip("online_store_unavailable", f"{type(exc).__name__}: {exc}")
        took_ms = (time.perf_counter() - started) * 1000
        if took_ms > self.slow_ms:
            # The values read are right, only late: use them, and spare the next batches the wait.
            self._trip("online_store_slow", f"a lookup took {took_ms:.0f} ms (limit {self.slow_ms:.0f} ms)")
        elif self._why is not None:
            log.warning("online store answers again (%.0f ms)", took_ms)
            self._why = None
        return blocks, None

    def _trip(self, why: str, detail: str) -> str:
        if self._why != why:
            log.warning("online store: %s (%s); batch features are missing for %.0f s", why, detail, self.retry_s)
        self._why = why
        self._open_until = time.monotonic() + self.retry_s
        metrics.STORE_TRIPS.labels(why).inc()
        return why


def assemble(
    plan: FeaturePlan, names: list[str], features: np.ndarray, records: list[dict], rows: list[int], batch
) -> Assembled:
    """One row per event in `rows`, the columns of `plan.vector`.

    `features` holds the stream features (`names`, one row per event in
    `rows`); `batch` is a BatchFeatures (or None: every batch feature is
    missing, which the model handles as it was trained to).
    """
    n = len(rows)
    started = time.perf_counter()
    if batch is None:
        blocks, problem = {v.name: np.full((n, len(v.features)), np.nan) for v in plan.batch_views}, None
    else:
        blocks, problem = batch.lookup(plan, records, rows)
    missing = {}
    for view in plan.batch_views:
        block = blocks[view.name]
        missing[view.name] = np.isnan(block).all(axis=1) if block.shape[1] else np.zeros(n, dtype=bool)
    batch_ms = (time.perf_counter() - started) * 1000
    # The stream features and every view's block side by side, then the vector's columns taken in
    # its order: two array calls, not one per column.
    side_by_side = np.concatenate([features.reshape(n, len(names)), *(blocks[v.name] for v in plan.batch_views)], axis=1)
    order = _vector_order(plan, tuple(names))
    matrix = side_by_side if order is None else np.take(side_by_side, order, axis=1)
    return Assembled(matrix, batch_ms, missing, problem)


_ORDERS: dict[tuple, tuple[FeaturePlan, list[int] | None]] = {}


def _vector_order(plan: FeaturePlan, names: tuple[str, ...]) -> list[int] | None:
    """Where each of `plan.vector`'s columns is in [stream features `names`, then each batch view's block].

    None when that is already the vector's order. A batch feature named like a stream feature takes
    its place (the last one written wins, as in a dict of columns). Looked up once per plan and names
    (the plan is kept with its entry, so its id cannot name another plan).
    """
    entry = _ORDERS.get((id(plan), names))
    if entry is None or entry[0] is not plan:
        at = {name: i for i, name in enumerate(names)}
        position = len(names)
        for view in plan.batch_views:
            for feature in view.features:
                at[f"{view.name}__{feature}"] = position
                position += 1
        order = [at[name] for name in plan.vector]
        entry = _ORDERS[id(plan), names] = (plan, None if order == list(range(position)) else order)
    return entry[1]


def _keys(join_keys: tuple[str, ...], records: list[dict], rows: list[int]) -> list[tuple]:
    """Each event's entity key of a batch view, as text (one join key, the usual case, without a generator per event)."""
    if len(join_keys) == 1:
        k = join_keys[0]
        return [(str(records[i][k]),) for i in rows]
    return [tuple(str(records[i][k]) for k in join_keys) for i in rows]
