"""The offline kernel one shard at a time: windowed features of one stage for the entities of one shard.

`features.offline.compute_features` holds a whole history in memory. At
scale the history is cut by entity instead: every stream view of a stage is
keyed by that stage's entity (card at stage 0, merchant at stage 1 in the
demo), and a view's value for an event reads only the events of the same
entity, so the events of a stage split into shards by a stable hash of the
stage's key compute exactly what the whole history computes. Each shard runs
the very kernel of `compute_features` (`view_items`, `aggregate`), sums
accumulate per entity in (time, arrival) order whatever else is in the
shard, so the values are bit-identical for any shard count, in one process
or many.

A shard arrives as columns: `_row` (the event's position in the history,
how results are joined back), `_ts` (event time, ms), `_seq` (its arrival
position in the stage's input: the offset column, or event-time rank for a
plain history), and the fields the stage's views read. Late events are not
in it: lateness is judged before sharding, over the whole events partition.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.columns import EventColumns
from features.offline import view_items
from features.spec import FeaturePlan
from features.windows import Queries, aggregate_in_blocks

ROW, TS, SEQ = "_row", "_ts", "_seq"


def stage_fields(plan: FeaturePlan, stage: int) -> list[str]:
    """The event fields the views of `stage` read: the stage's keys and the aggregated columns."""
    views = [v for v in plan.stream_views if plan.stage_of(v) == stage]
    return list(dict.fromkeys([*plan.stages()[stage], *(k for v in views for k in v.join_keys), *(c for v in views for c in v.columns)]))


def stage_names(plan: FeaturePlan, stage: int) -> list[str]:
    """The vector names ("view__feature") the views of `stage` compute."""
    return [f"{v.name}__{a.name}" for v in plan.stream_views if plan.stage_of(v) == stage for a in v.aggs]


def shard_features(plan: FeaturePlan, stage: int, shard: pd.DataFrame) -> pd.DataFrame:
    """Every feature of `stage`'s views for the events of one shard, with their `_row`.

    The shard must hold every (not late) event of each of its entities;
    which other entities share it changes nothing.
    """
    n = len(shard)
    ts = shard[TS].to_numpy(dtype=np.int64)
    seq = shard[SEQ].to_numpy(dtype=np.int64)
    fields = {c: shard[c].to_numpy() for c in stage_fields(plan, stage)}
    cols = EventColumns(ts, seq, fields)
    out: dict[str, np.ndarray] = {ROW: shard[ROW].to_numpy(dtype=np.int64)}
    for view in plan.stream_views:
        if plan.stage_of(view) != stage:
            continue
        group = pd.factorize(cols.entity_keys(view))[0].astype(np.int64) if n else np.zeros(0, np.int64)
        values = aggregate_in_blocks(view.aggs, view_items(view, cols, group), Queries(group, ts, seq))
        for agg in view.aggs:
            out[f"{view.name}__{agg.name}"] = np.asarray(values[agg.name], dtype=np.float64)
    return pd.DataFrame(out)


def late_in_arrival_order(partition: np.ndarray, ts: np.ndarray, lateness_ms: int, stream_time: dict[int, int]) -> np.ndarray:
    """Which events are late, for rows given in arrival order ((partition, offset) sorted), one chunk of a pass at a time.

    `stream_time` holds each partition's largest event time before this
    chunk and is updated, so a history of any length is judged in chunks
    exactly as `features.offline.late_mask` judges it whole: late means older
    than the partition's stream time before the event minus the allowance;
    the first event of a partition is never late.
    """
    n = len(ts)
    late = np.zeros(n, dtype=bool)
    if not n:
        return late
    partition = np.asarray(partition, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, partition[1:] != partition[:-1]])
    for lo, hi in zip(starts.tolist(), [*starts[1:].tolist(), n]):
        p = int(partition[lo])
        running = np.maximum.accumulate(ts[lo:hi])
        before = np.empty(hi - lo, dtype=np.int64)
        before[1:] = running[:-1]
        floor = stream_time.get(p)
        if floor is None:
            before[0] = ts[lo]  # no stream time yet: compared with itself, never late
        else:
            before[0] = floor
            np.maximum(before, floor, out=before)
        late[lo:hi] = ts[lo:hi] < before - lateness_ms
        stream_time[p] = int(max(running[-1], before[0]))
    return late
