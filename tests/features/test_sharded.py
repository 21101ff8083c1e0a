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
