"""Replays after a crash neither double-count nor re-emit."""

from __future__ import annotations

import numpy as np

from features.columns import EventColumns
from features.online import StageAggregator
from features.spec import EventSchema, FeaturePlan, StreamView, make_agg

SCHEMA = EventSchema(
    fields=(("id", "string"), ("card", "string"), ("merch", "string"), ("amount", "double"), ("t", "timestamp")),
    event_id="id",
    timestamp_field="t",
    topic="events",
    allowed_lateness_ms=1000,
)
PLAN = FeaturePlan(
    service="s",
    schema=SCHEMA,
    stream_views=(
        StreamView("cv", ("card",), (make_agg("cv", "n", "count", "amount", 10_000, None), make_agg("cv", "s", "sum", "amount", 10_000, 5_000))),
        StreamView("mv", ("merch",), (make_agg("mv", "n", "count", "amount", 10_000, None),)),
    ),
    batch_views=(),
    vector=(),
    partition_key="card",
)


def _events(offsets, ts, cards, merchs):
    return EventColumns(
        np.array(ts, dtype=np.int64),
        np.array(offsets, dtype=np.int64),
        {
            "card": np.array(cards, dtype=object),
            "merch": np.array(merchs, dtype=object),
            "amount": np.arange(1.0, len(ts) + 1),
        },
    )


def test_a_replayed_batch_after_the_state_was_written_emits_nothing_and_counts_nothing():
    agg = StageAggregator(PLAN, 0)
    table: dict[str, bytes] = {}
    batch = _events([0, 1, 2], [100, 200, 300], ["a", "a", "b"], ["m", "m", "m"])
    first = agg.process(table, 0, batch)
    table.update(first.writes)
    again = agg.process(table, 0, batch)
    assert again.replayed.all()
    nxt = agg.process(table, 0, _events([3], [400], ["a"], ["m"]))
    assert nxt.features["cv__n"].tolist() == [2.0]


def test_a_replay_before_the_state_was_written_gives_the_same_features():
    agg = StageAggregator(PLAN, 0)
    table: dict[str, bytes] = {}
    table.update(agg.process(table, 0, _events([0, 1], [100, 200], ["a", "a"], ["m", "m"])).writes)
    batch = _events([2, 3], [300, 400], ["a", "a"], ["m", "m"])
    first = agg.process(table, 0, batch)
    second = agg.process(table, 0, batch)  # the crash happened before `first.writes` were stored
    assert not second.replayed.any()
    assert first.features["cv__n"].tolist() == second.features["cv__n"].tolist() == [2.0, 3.0]


def test_a_record_forwarded_twice_by_a_crashed_first_stage_counts_once():
    agg = StageAggregator(PLAN, 1)
    table: dict[str, bytes] = {}
    batch = _events([0, 1], [100, 200], ["a", "b"], ["m", "m"])
    sources = np.array([[0, 10, 0], [0, 11, 0]])
    table.update(agg.process(table, 0, batch, sources=sources, n_sources=1).writes)
    # Stage 0 crashed after forwarding offsets 10 and 11 and forwarded them again.
    dup = agg.process(table, 0, _events([2, 3, 4], [100, 200, 300], ["a", "b", "c"], ["m", "m", "m"]), sources=np.array([[0, 10, 0], [0, 11, 0], [0, 12, 0]]), n_sources=1)
    assert dup.replayed.tolist() == [True, True, False]
    assert dup.features["mv__n"][2] == 2.0
