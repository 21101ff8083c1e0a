"""Replays after a crash neither double-count nor re-emit."""

from __future__ import annotations

import numpy as np

from features.online import StageAggregator

def test_a_replayed_batch_after_the_state_was_written_emits_nothing_and_counts_nothing(small_plan, small_events):
    agg = StageAggregator(small_plan, 0)
    table: dict[str, bytes] = {}
    batch = small_events([0, 1, 2], [100, 200, 300], ["a", "a", "b"], ["m", "m", "m"])
    first = agg.process(table, 0, batch)
    table.update(first.writes)
    again = agg.process(table, 0, batch)
    assert again.replayed.all()
    nxt = agg.process(table, 0, small_events([3], [400], ["a"], ["m"]))
    assert nxt.features["cv__n"].tolist() == [2.0]


def test_a_replay_before_the_state_was_written_gives_the_same_features(small_plan, small_events):
    agg = StageAggregator(small_plan, 0)
    table: dict[str, bytes] = {}
    table.update(agg.process(table, 0, small_events([0, 1], [100, 200], ["a", "a"], ["m", "m"])).writes)
    batch = small_events([2, 3], [300, 400], ["a", "a"], ["m", "m"])
    first = agg.process(table, 0, batch)
    second = agg.process(table, 0, batch)  # the crash happened before `first.writes` were stored
    assert not second.replayed.any()
    assert first.features["cv__n"].tolist() == second.features["cv__n"].tolist() == [2.0, 3.0]


def test_a_record_forwarded_twice_by_a_crashed_first_stage_counts_once(small_plan, small_events):
    agg = StageAggregator(small_plan, 1)
    table: dict[str, bytes] = {}
    batch = small_events([0, 1], [100, 200], ["a", "b"], ["m", "m"])
    sources = np.array([[0, 10, 0], [0, 11, 0]])
    table.update(agg.process(table, 0, batch, sources=sources, n_sources=1).writes)
    # Stage 0 crashed after forwarding offsets 10 and 11 and forwarded them again.
    dup = agg.process(table, 0, small_events([2, 3, 4], [100, 200, 300], ["a", "b", "c"], ["m", "m", "m"]), sources=np.array([[0, 10, 0], [0, 11, 0], [0, 12, 0]]), n_sources=1)
    assert dup.replayed.tolist() == [True, True, False]
    assert dup.features["mv__n"][2] == 2.0


def test_stream_time_history_recovers_the_exact_stream_time_at_old_and_recent_batch_starts(small_plan, small_events):
    # Many one-event batches with a jumping event time: the stream time
    # before each batch start differs from its neighbours, so a wrong row
    # would be seen. Enough batches to seal segments and wrap the ring.
    from features import history

    agg = StageAggregator(small_plan, 0)
    table: dict[str, bytes] = {}
    rng = np.random.default_rng(3)
    n = history.STREAM_TIME_SEGMENT * (history.STREAM_TIME_SEGMENTS + 3) + 5
    ts = np.cumsum(rng.integers(0, 50, n)) + rng.integers(0, 500, n)
    for i in range(n):
        table.update(agg.process(table, 0, small_events([i], [int(ts[i])], ["a"], ["m"])).writes)
    truth = np.maximum.accumulate(ts)
    kept = history.STREAM_TIME_SEGMENT * history.STREAM_TIME_SEGMENTS
    for start in [n - 1, n - 2, n - history.STREAM_TIME_SEGMENT - 1, n - kept + 1]:
        assert agg.stream_time_before(table, 0, start) == truth[start - 1], start
    assert agg.outputs_done_before(table, 0) == n
    # Rows written before the ring wrapped are gone: only what the ring holds
    # is answered exactly (it covers far more than a commit interval).
    assert agg.stream_time_before(table, 0, 3) != truth[2]
    # The head stays small: one batch rewrites at most a segment.
    assert len(table[history.STREAM_TIME_KEY.format(partition=0)]) <= 16 * (history.STREAM_TIME_SEGMENT + 1)


def test_a_deep_replay_reads_the_stream_time_from_a_sealed_segment_and_continues_exactly(small_plan, small_events):
    from features import history

    agg = StageAggregator(small_plan, 0)
    table: dict[str, bytes] = {}
    n = history.STREAM_TIME_SEGMENT * 3
    ts = [(i * 7919) % 1000 + 10 * i for i in range(n)]
    for i in range(n):
        table.update(agg.process(table, 0, small_events([i], [ts[i]], ["a"], ["m"])).writes)
    truth = np.maximum.accumulate(ts)
    # A replay from far back (before the head) in bigger batches.
    start = history.STREAM_TIME_SEGMENT // 2
    assert agg.stream_time_before(table, 0, start) == truth[start - 1]
    replay = agg.process(table, 0, small_events(list(range(start, start + 10)), ts[start : start + 10], ["a"] * 10, ["m"] * 10))
    assert replay.replayed.all()
    table.update(replay.writes)
    # The worker goes on in order from there: every batch start finds its row.
    for i in range(start + 10, n):
        assert agg.stream_time_before(table, 0, i) == truth[i - 1], i
        table.update(agg.process(table, 0, small_events([i], [ts[i]], ["a"], ["m"])).writes)


def _crash_mid_write(agg, base, batch, later, write_order, sources=None, later_sources=None):
    """For every prefix of a batch's state write that could reach the changelog before a crash:
    the replay of the batch, then the next batch, must give exactly the features of a run without a crash."""
    kwargs = {"n_sources": 1} if sources is not None else {}
    clean = dict(base)
    first = agg.process(clean, 0, batch, sources=sources, **kwargs)
    clean.update(first.writes)
    expected = agg.process(clean, 0, later, sources=later_sources, **kwargs).features
    ordered = write_order(first.writes)
    assert len(ordered) >= 3
    for k in range(len(ordered) + 1):
        table = dict(base)
        table.update(ordered[:k])
        replay = agg.process(table, 0, batch, sources=sources, **kwargs)
        table.update(replay.writes)
        got = agg.process(table, 0, later, sources=later_sources, **kwargs).features
        for name, values in expected.items():
            assert np.array_equal(got[name], values, equal_nan=True), (k, name, got[name], values)


def test_a_crash_part_way_through_a_first_stage_state_write_replays_exactly(small_plan, small_events):
    from features.history import write_order

    agg = StageAggregator(small_plan, 0)
    base: dict[str, bytes] = {}
    base.update(agg.process(base, 0, small_events([0, 1], [100, 200], ["a", "b"], ["m", "m"])).writes)
    batch = small_events([2, 3, 4], [300, 400, 500], ["a", "b", "c"], ["m", "m", "m"])
    _crash_mid_write(agg, base, batch, small_events([5, 6, 7], [600, 700, 800], ["a", "b", "c"], ["m"] * 3), write_order)


def test_a_crash_part_way_through_a_later_stage_state_write_replays_exactly(small_plan, small_events):
    # The later stage keeps, besides each entity's state, the highest offset
    # it took from each first-stage partition (to drop copies a crashed first
    # stage forwarded twice). If that marker reached the changelog before the
    # entity states it summarises, the replay took the batch for copies and
    # never counted it.
    from features.history import write_order

    agg = StageAggregator(small_plan, 1)
    base: dict[str, bytes] = {}
    base.update(agg.process(base, 0, small_events([0], [100], ["a"], ["m"]), sources=np.array([[0, 10, 0]]), n_sources=1).writes)
    batch = small_events([1, 2, 3], [200, 300, 400], ["b", "c", "d"], ["m", "n", "o"])
    sources = np.array([[0, 11, 0], [0, 12, 0], [0, 13, 0]])
    later = small_events([4, 5, 6], [500, 600, 700], ["e", "f", "g"], ["m", "n", "o"])
    _crash_mid_write(agg, base, batch, later, write_order, sources, np.array([[0, 14, 0], [0, 15, 0], [0, 16, 0]]))
