"""Folding several partitions' batches at once equals folding them one after another."""

from __future__ import annotations

import numpy as np
import pytest

from features.columns import EventColumns
from features.online import StageAggregator


def _batches(events, rng, n_parts: int, start: int, shared: bool):
    parts = []
    for p in range(n_parts):
        n = int(rng.integers(0, 12))
        # Entities belong to one partition unless `shared`.
        cards = [f"c{p if not shared else 0}-{int(k)}" for k in rng.integers(0, 4, n)]
        merchs = [f"m{p if not shared else 0}-{int(k)}" for k in rng.integers(0, 3, n)]
        ts = (start + np.sort(rng.integers(0, 20_000, n)) - rng.integers(0, 2_500, n)).tolist()
        offsets = list(range(start // 100 + 1000 * p, start // 100 + 1000 * p + n))
        parts.append((p, events(offsets, ts, cards, merchs), None))
    return parts


@pytest.mark.parametrize("shared, joined", [(False, False), (True, False), (False, True), (True, True)])
def test_many_partitions_at_once_equal_one_after_another(shared, joined, small_plan, small_events):
    """`joined`: the caller hands the parts' events as one set of columns too (as the engine's decoding does)."""
    rng = np.random.default_rng(11 if shared else 5)
    together, apart = StageAggregator(small_plan, 0), StageAggregator(small_plan, 0)
    table_t: dict[str, bytes] = {}
    table_a: dict[str, bytes] = {}
    for round_ in range(25):
        parts = _batches(small_events, rng, 4, 10_000 * round_, shared)
        call = EventColumns.concat([ev for _, ev, _ in parts]) if joined else None
        many = together.process_many(table_t, parts, events=call)
        for (partition, events, _), got in zip(parts, many):
            want = apart.process(table_a, partition, events)
            table_a.update(want.writes)
            assert got.writes == want.writes
            np.testing.assert_array_equal(got.late, want.late)
            np.testing.assert_array_equal(got.replayed, want.replayed)
            np.testing.assert_array_equal(got.watermark, want.watermark)
            assert got.features.keys() == want.features.keys()
            for name in want.features:
                np.testing.assert_array_equal(got.features[name], want.features[name])
        for got in many:
            table_t.update(got.writes)
    assert table_t == table_a
    assert any(k.startswith("cv/") for k in table_t)
