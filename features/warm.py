"""Warm start: the window state a worker would hold after a history, for a fresh worker.

A new worker otherwise starts with empty windows, while the model was
trained on features computed over the whole history: the first hours of
serving would be skewed. `warm_state` replays the history through the very
same online aggregators (in event-time order, as `sluice train` assumes) and
returns the per-entity blobs; the worker reads them where its own table has
nothing yet. Live events then continue exactly where the history ended.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features import state as st
from features.columns import EventColumns, to_epoch_ms
from features.history import STREAM_TIME_KEY, history_blob
from features.online import StageAggregator
from features.spec import FeaturePlan

#: Stands for every partition's stream-time key in a warm state.
ANY_PARTITION = "*"


def warm_state(plan: FeaturePlan, history: pd.DataFrame, batch: int = 50_000) -> dict[str, bytes]:
    ts = to_epoch_ms(history[plan.schema.timestamp_field])
    order = np.argsort(ts, kind="stable")
    fields = {c: history[c].to_numpy()[order] for c in history.columns if c != plan.schema.timestamp_field}
    events = EventColumns(ts[order], np.arange(len(order), dtype=np.int64), fields)
    table: dict[str, bytes] = {}
    stages = [StageAggregator(plan, s) for s in range(len(plan.stages()))]
    for start in range(0, len(events), batch):
        chunk = events.take(np.arange(start, min(start + batch, len(events))))
        first = stages[0].process(table, 0, chunk)
        table.update(first.writes)
        alive = np.flatnonzero(~first.late)
        watermark = first.watermark
        for agg in stages[1:]:
            forwarded = chunk.take(alive)
            sources = np.column_stack([np.zeros(len(alive), dtype=np.int64), forwarded.seq, watermark[alive]])
            result = agg.process(table, 0, forwarded, sources=sources, n_sources=1)
            table.update(result.writes)
    warm = {}
    for key, blob in table.items():
        if key.startswith("\x00"):
            continue
        view = key.split("/", 1)[0]
        layouts = st.layouts_of(next(v for v in plan.stream_views if v.name == view))
        state = st.decode(blob, layouts)
        # Live offsets start again at 0: nothing here may look already applied.
        warm[key] = st.encode(st.EntityState(-1, [np.array(b) for b in state.blocks]))
    if len(ts):
        warm[STREAM_TIME_KEY.format(partition=ANY_PARTITION)] = history_blob(0, np.array([[0, int(ts.max())]]))
    return warm


def save(warm: dict[str, bytes], path: str | Path) -> None:
    pd.DataFrame({"key": list(warm), "value": list(warm.values())}).to_parquet(path, index=False)


def load(path: str | Path) -> dict[str, bytes]:
    frame = pd.read_parquet(path)
    return dict(zip(frame["key"], frame["value"]))


class WarmLookup:
    """Read-through: the worker's own state first, the warm state for what it lacks."""

    def __init__(self, warm: dict[str, bytes]):
        self.warm = warm
        self.stream_time = warm.get(STREAM_TIME_KEY.format(partition=ANY_PARTITION))

    def get(self, key: str) -> bytes | None:
        if key.startswith("\x00stream_time/"):
            # The head of any partition's history; no sealed segments.
            return self.stream_time if key.count("/") == 1 else None
        return self.warm.get(key)
