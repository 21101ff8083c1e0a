"""The offline side: features for every event of a history, as the worker made them.

Given a table of events (and, when known, where each one arrived: stage
partition and offset), `compute_features` returns for every event the value
each windowed feature had online when that event was scored, or marks the
event late. It runs the same kernel as the worker over the whole history at
once, vectorised per view: no Python loop per event.

Without arrival columns, events are taken to arrive in event-time order in a
single partition, which is what a replay of a sorted history does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.columns import EventColumns, to_epoch_ms
from features.spec import FeaturePlan
from features.windows import Items, Queries, aggregate, aggregate_in_blocks


def partition_col(stage: int) -> str:
    return f"_partition_{stage}"


def offset_col(stage: int) -> str:
    return f"_offset_{stage}"


@dataclass
class OfflineFeatures:
    """Per input row: the stage an event was late at (-1: scored) and its features."""

    late_stage: np.ndarray
    frame: pd.DataFrame  # columns: plan.stream feature names ("view__feature"), same index as input

    @property
    def scored(self) -> np.ndarray:
        return self.late_stage < 0


def late_mask(ts: np.ndarray, partition: np.ndarray, offset: np.ndarray, lateness_ms: int) -> np.ndarray:
    """True where an event is older than its partition's stream time minus the allowance.

    Stream time is the largest event time seen *before* the event in its
    partition, so the first event of a partition is never late.
    """
    order = np.lexsort((offset, partition))
    p, t = partition[order], ts[order]
    span = int(t.max() - t.min()) + 1 if len(t) else 1
    _, p_code = np.unique(p, return_inverse=True)
    # One running max over all partitions: shifting each partition up by a
    # multiple of the span keeps the maxima from leaking between partitions.
    shifted = p_code.astype(np.int64) * (span + lateness_ms + 1) + (t - t.min() if len(t) else t)
    running = np.maximum.accumulate(shifted)
    prev = np.empty_like(running)
    if len(running):
        prev[0] = np.iinfo(np.int64).min // 4
        prev[1:] = running[:-1]
        first = np.ones(len(p), dtype=bool)
        first[1:] = p[1:] != p[:-1]
        prev[first] = np.iinfo(np.int64).min // 4
    late_sorted = shifted < prev - lateness_ms
    late = np.empty(len(ts), dtype=bool)
    late[order] = late_sorted
    return late


def compute_features(plan: FeaturePlan, events: pd.DataFrame) -> OfflineFeatures:
    """Windowed features for every row of `events` (fields named as in the stream)."""
    n = len(events)
    ts = to_epoch_ms(events[plan.schema.timestamp_field])
    default_offset = np.empty(n, dtype=np.int64)
    default_offset[np.argsort(ts, kind="stable")] = np.arange(n)
    # The timestamp column is already in `ts`; as objects it would cost more than the features.
    fields = {c: events[c].to_numpy() for c in events.columns if c != plan.schema.timestamp_field}
    late_stage = np.full(n, -1, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for stage in range(len(plan.stages())):
        partition = events[partition_col(stage)].to_numpy() if partition_col(stage) in events else np.zeros(n, np.int64)
        offset = events[offset_col(stage)].to_numpy() if offset_col(stage) in events else default_offset
        alive = np.flatnonzero(late_stage < 0)
        if stage == 0:
            late = late_mask(ts[alive], partition[alive], offset[alive], plan.schema.allowed_lateness_ms)
        else:
            # Lateness is judged where events enter; later stages take every event.
            late = np.zeros(len(alive), dtype=bool)
        late_stage[alive[late]] = stage
        kept = alive[~late]
        cols = EventColumns(ts[kept], offset[kept].astype(np.int64), {k: v[kept] for k, v in fields.items()})
        for view in plan.stream_views:
            if plan.stage_of(view) != stage:
                continue
            group = pd.factorize(cols.entity_keys(view))[0].astype(np.int64)
            items = view_items(view, cols, group)
            values = aggregate_in_blocks(view.aggs, items, Queries(group, cols.ts, cols.seq))
            for agg in view.aggs:
                column = np.full(n, np.nan)
                column[kept] = values[agg.name]
                out[f"{view.name}__{agg.name}"] = column
    scored = late_stage < 0
    for name in out:
        out[name][~scored] = np.nan
    frame = pd.DataFrame(out, index=events.index)
    return OfflineFeatures(late_stage=late_stage, frame=frame)


def view_items(view, cols: EventColumns, group: np.ndarray) -> Items:
    """A view's raw events as kernel items, sorted: the columns its aggregations read."""
    return Items.from_events(
        group,
        cols.ts,
        cols.seq,
        {c: cols.numeric(c) for c in view.columns if _numeric_use(view, c)},
        {c: cols.codes(c) for c in view.columns if _distinct_use(view, c)},
    ).sorted()


def _numeric_use(view, column: str) -> bool:
    return any(a.column == column and a.function not in ("count", "count_distinct") for a in view.aggs)


def _distinct_use(view, column: str) -> bool:
    return any(a.column == column and a.function == "count_distinct" for a in view.aggs)


def features_at(plan: FeaturePlan, history: pd.DataFrame, rows: pd.DataFrame, timestamp_column: str | None = None) -> pd.DataFrame:
    """Windowed features of arbitrary (entity, time) rows, point in time, over a history.

    Each row of `rows` names entity keys and a time; its value for a view is
    the aggregate over the history events of that entity inside the window
    ending at that time (exclusive), exactly as an event arriving at that
    time, after all of the history, would have seen them. Late events of the
    history are left out as the worker would. Views whose keys `rows` lacks
    come out missing (NaN).
    """
    timestamp_column = timestamp_column or plan.schema.timestamp_field
    n_hist = len(history)
    ts = to_epoch_ms(history[plan.schema.timestamp_field])
    order = np.argsort(ts, kind="stable")
    offset = np.empty(n_hist, dtype=np.int64)
    offset[order] = np.arange(n_hist)
    partition = history[partition_col(0)].to_numpy() if partition_col(0) in history else np.zeros(n_hist, np.int64)
    if offset_col(0) in history:
        offset = history[offset_col(0)].to_numpy()
    late = late_mask(ts, partition, offset, plan.schema.allowed_lateness_ms) if n_hist else np.zeros(0, dtype=bool)
    kept = np.flatnonzero(~late)
    hist_fields = {c: history[c].to_numpy()[kept] for c in history.columns if c != plan.schema.timestamp_field}
    hist = EventColumns(ts[kept], np.zeros(len(kept), dtype=np.int64), hist_fields)
    q_ts = to_epoch_ms(rows[timestamp_column])
    query_fields = {c: rows[c].to_numpy() for c in rows.columns if c != timestamp_column}
    out: dict[str, np.ndarray] = {}
    for view in plan.stream_views:
        names = [f"{view.name}__{a.name}" for a in view.aggs]
        if not all(k in rows for k in view.join_keys):
            for name in names:
                out[name] = np.full(len(rows), np.nan)
            continue
        hist_keys = hist.entity_keys(view)
        query_keys = EventColumns(q_ts, np.zeros(len(rows), dtype=np.int64), query_fields).entity_keys(view)
        codes = pd.factorize(np.concatenate([hist_keys, query_keys]))[0]
        hist_group, query_group = codes[: len(hist_keys)].astype(np.int64), codes[len(hist_keys) :].astype(np.int64)
        items = view_items(view, hist, hist_group)
        # Every history event arrived before the queries (seq 1 > 0).
        values = aggregate(view.aggs, items, Queries(query_group, q_ts, np.ones(len(rows), dtype=np.int64)))
        for agg, name in zip(view.aggs, names):
            out[name] = values[agg.name]
    return pd.DataFrame(out, index=rows.index)
