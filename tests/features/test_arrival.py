"""The arrival clock and order against a per-record loop."""

import numpy as np

from features.arrival import arrival_clock, arrival_rank


def _loop_clock(partition, offset, ts, start=None):
    clock = {}
    out = np.empty(len(ts), dtype=np.int64)
    for i in sorted(range(len(ts)), key=lambda i: (partition[i], offset[i])):
        p = int(partition[i])
        now = max(clock.get(p, (start or {}).get(p, 0)), int(ts[i]) if ts[i] >= 0 else 0)
        clock[p] = now
        out[i] = now
    return out


def test_clock_is_a_running_max_per_partition_in_offset_order():
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        partition = rng.integers(0, 4, n)
        offset = rng.permutation(n) + 100
        ts = rng.integers(1_000, 1_100, n)
        ts[rng.random(n) < 0.1] = -1  # records without a timestamp keep the clock
        start = {1: 1_050} if rng.random() < 0.5 else None
        assert (arrival_clock(partition, offset, ts, start) == _loop_clock(partition, offset, ts, start)).all()


def test_rank_orders_by_clock_then_partition_then_offset():
    partition = np.array([0, 0, 1, 1, 2])
    offset = np.array([0, 1, 0, 1, 0])
    ts = np.array([10, 5, 10, 20, 7])  # p0: clocks 10, 10; p1: 10, 20; p2: 7
    assert arrival_rank(partition, offset, ts).tolist() == [1, 2, 3, 4, 0]
