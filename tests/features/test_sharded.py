"""The chunked lateness pass judges exactly as the whole-history one."""

from __future__ import annotations

import numpy as np

from features.offline import late_mask
from features.sharded import late_in_arrival_order


def test_lateness_judged_in_chunks_equals_the_whole_history():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 300))
        partition, offset = rng.integers(0, 3, n), np.arange(n)
        ts, lateness = rng.integers(0, 1000, n), int(rng.integers(0, 200))
        expected = late_mask(ts, partition, offset, lateness)
        order = np.lexsort((offset, partition))
        cuts = sorted({0, n, *rng.integers(0, n, 4).tolist()})
        stream_time: dict[int, int] = {}
        got = np.zeros(n, dtype=bool)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            rows = order[lo:hi]
            got[rows] = late_in_arrival_order(partition[rows], ts[rows], lateness, stream_time)
        assert (got == expected).all()


def _random_items(rng, n: int, groups: int):
    from features.windows import Items, Queries

    group = rng.integers(0, groups, n) ** 2 % groups  # skewed: some groups far busier
    ts = np.sort(rng.integers(0, 50_000, n))
    seq = rng.permutation(n)
    amount = np.round(rng.lognormal(3, 1, n), 2)
    codes = rng.integers(0, 5, n)
    items = Items.from_events(group, ts, seq, {"amount": amount}, {"country": codes}).sorted()
    return items, Queries(group.astype(np.int64), ts.astype(np.int64), seq.astype(np.int64))


def test_aggregating_in_blocks_is_bit_identical_and_bounds_the_pairs():
    from features.spec import WindowAgg
    from features.windows import aggregate, aggregate_in_blocks, block_plan

    aggs = tuple(WindowAgg(f"{fn}_{w}", fn, col, w, s) for fn, col in
                 (("count", "amount"), ("sum", "amount"), ("mean", "amount"), ("std", "amount"), ("max", "amount"),
                  ("min", "amount"), ("count_distinct", "country"))
                 for w, s in ((1_000, 1_000), (8_000, 8_000), (30_000, 5_000)))
    rng = np.random.default_rng(3)
    for _ in range(30):
        items, queries = _random_items(rng, int(rng.integers(1, 3_000)), int(rng.integers(1, 40)))
        max_pairs = int(rng.integers(1, 20_000))
        whole = aggregate(aggs, items, queries)
        blocks = aggregate_in_blocks(aggs, items, queries, max_pairs)
        for name, values in whole.items():
            assert np.array_equal(values, blocks[name], equal_nan=True), name
            assert values.tobytes() == blocks[name].tobytes(), name
        # The bound itself: no block holds more pairs than max_pairs plus its last query's.
        order, cuts, a, b = block_plan(aggs, items, queries, max_pairs)
        per_query = (b - a)[order] * 3
        for start, stop in zip(cuts[:-1], cuts[1:]):
            assert per_query[start:stop - 1].sum() <= max_pairs
        assert cuts[0] == 0 and cuts[-1] == len(queries) and len(cuts) >= 2
