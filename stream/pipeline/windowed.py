"""After the window step: which events go on, which are late copies, which were output before a crash.

`sift` takes one partition's window result (`features.online.StageResult`)
and returns the events that go on to the next step, with their stream
features beside the ones earlier stages carried, as a `Windowed` record.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from features.columns import EventColumns
from features.online import StageResult
from stream import metrics
from stream.pipeline.copies import Copies
from stream.pipeline.forwarded import Carried
from stream.pipeline.outcomes import Output


class Windowed(NamedTuple):
    """One partition's events after the window step."""

    replayed: int  # events output before a crash: nothing is emitted for them
    late: list[Output]  # late copies, in event order
    keep: np.ndarray  # positions (in the decoded batch) of the events that go on
    features: np.ndarray  # their stream features so far, one row each: carried ones, then this stage's
    names: list[str]  # the features' qualified names
    stage_ms: list[list[float]]  # per kept event: feature time (ms) of each stage's batch so far


def sift(
    stage: int,
    result: StageResult,
    columns: EventColumns,
    records: list[dict],
    carried: Carried,
    done_before: int,
    feat_ms: float,
    stream_names: list[str],
    copies: Copies,
    lateness_ms: int,
) -> Windowed:
    skip = result.replayed | (columns.seq < done_before)
    replayed = int(np.count_nonzero(skip))
    replayed_total, late_total = _counters(stage)
    names, rows = _columns(tuple(result.features), tuple(stream_names))
    # The window features side by side already: one copy of their rows, not one per feature.
    block = result.block if rows is None else result.block[rows]
    if not replayed and not result.late.any():
        # The usual batch: every event goes on (the masks and the row selection would copy everything).
        keep = np.arange(len(skip))
        features = np.concatenate([carried.features, block.T], axis=1)
        stage_ms = [s + [feat_ms] for s in carried.stage_ms] if stage else [[feat_ms]] * len(keep)
        return Windowed(0, [], keep, features, carried.names + names, stage_ms)
    replayed_total.inc(replayed)
    late = []
    reason = f"late: event time is more than {lateness_ms} ms behind stream time"
    for i in np.flatnonzero(result.late & ~skip).tolist():
        late_total.inc()
        late.append(copies.late(carried, i, records[i], reason))
    keep = np.flatnonzero(~result.late & ~skip)
    features = np.concatenate([carried.features, block.T], axis=1)[keep]
    # A later stage's `carried.stage_ms` holds lists (decode made them): adding to one makes a new list.
    stage_ms = [carried.stage_ms[i] + [feat_ms] for i in keep.tolist()] if stage else [[feat_ms]] * len(keep)
    return Windowed(replayed, late, keep, features, carried.names + names, stage_ms)


_COLUMNS: dict[tuple, tuple[list[str], list[int] | None]] = {}


def _columns(computed: tuple[str, ...], stream_names: tuple[str, ...]) -> tuple[list[str], list[int] | None]:
    """(the computed features in `stream_names` order, their rows in the window step's matrix), looked up once.

    The rows are None when they are all of the matrix's, in its order.
    """
    if (computed, stream_names) not in _COLUMNS:
        at = {name: i for i, name in enumerate(computed)}
        names = [n for n in stream_names if n in at]
        rows = [at[n] for n in names]
        _COLUMNS[computed, stream_names] = (names, None if rows == list(range(len(computed))) else rows)
    return _COLUMNS[computed, stream_names]


_COUNTERS: dict[int, tuple] = {}


def _counters(stage: int) -> tuple:
    """The stage's replayed and late counters, looked up once."""
    if stage not in _COUNTERS:
        _COUNTERS[stage] = (metrics.REPLAYED.labels(str(stage)), metrics.LATE.labels(str(stage)))
    return _COUNTERS[stage]
