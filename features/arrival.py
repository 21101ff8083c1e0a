"""The arrival clock: one order of all events, read from the events log alone.

An event's place in the log is (partition, offset, broker timestamp). Within
a partition, offsets order events; across partitions nothing does, and a
stage after a repartition hop would otherwise see the events of one entity
in whatever order the upstream workers happened to forward them. The arrival
clock fixes that order from the log itself:

* the **clock** of the event at offset o of partition p is the largest
  broker timestamp at offsets <= o of p (a running maximum, so it never goes
  back within a partition; a record without a timestamp keeps the clock
  where it was);
* the **arrival order** is (clock, partition, offset), lexicographic.

Within a partition it is offset order, so the first stage is unchanged; a
later stage processes its input in this order (stream.pipeline.clock holds
rows until every upstream partition has passed them). The offline path takes
the same order from an archive of the events topic, so features computed
from the archive equal the served ones.
"""

from __future__ import annotations

import numpy as np

#: Broker timestamp of a record that has none (Kafka's NO_TIMESTAMP).
NO_TIMESTAMP = -1


def arrival_clock(partition: np.ndarray, offset: np.ndarray, broker_ts: np.ndarray, start: dict[int, int] | None = None) -> np.ndarray:
    """The clock of every record: the running max of broker timestamps within its partition, in offset order.

    `start` gives, per partition, the clock just before its first record here
    (what a worker resuming mid-log restored); by default the clock starts at
    the partition's first timestamp.
    """
    partition = np.asarray(partition, dtype=np.int64)
    offset = np.asarray(offset, dtype=np.int64)
    ts = np.asarray(broker_ts, dtype=np.int64)
    n = len(ts)
    clock = np.empty(n, dtype=np.int64)
    if not n:
        return clock
    order = np.lexsort((offset, partition))
    p, t = partition[order], ts[order]
    # Before the first timestamp of a partition its clock is 0.
    floor = 0
    t = np.where(t < 0, floor, t)
    first = np.ones(n, dtype=bool)
    first[1:] = p[1:] != p[:-1]
    if start:
        for i in np.flatnonzero(first).tolist():
            t[i] = max(int(t[i]), int(start.get(int(p[i]), floor)))
    # One running max over all partitions: each partition's values are lifted
    # above every earlier partition's so that maxima do not leak across.
    lo, hi = int(t.min()), int(t.max())
    lift = np.cumsum(first) * (hi - lo + 1)
    running = np.maximum.accumulate(t - lo + lift) - lift + lo
    clock[order] = running
    return clock


def arrival_rank(partition: np.ndarray, offset: np.ndarray, broker_ts: np.ndarray, start: dict[int, int] | None = None) -> np.ndarray:
    """Each record's position (0, 1, ...) in arrival order: (clock, partition, offset)."""
    partition = np.asarray(partition, dtype=np.int64)
    offset = np.asarray(offset, dtype=np.int64)
    clock = arrival_clock(partition, offset, broker_ts, start)
    order = np.lexsort((offset, partition, clock))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def key_before(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """True if arrival key a = (clock, partition, offset) comes before b."""
    return a < b


def stage_positions(partition: np.ndarray, offset: np.ndarray, broker_ts: np.ndarray, n_stages: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Where each record arrives at each stage, as the offline path reads it (`_partition_<s>`, `_offset_<s>`).

    The first stage reads its events partition in offset order; every later
    stage folds in arrival order, one order for all its partitions (an
    entity's records all meet in one of them). Give every record of the
    events topic, valid or not: each one moves its partition's clock.
    """
    partition = np.asarray(partition, dtype=np.int64)
    offset = np.asarray(offset, dtype=np.int64)
    rank = arrival_rank(partition, offset, broker_ts)
    later = (np.zeros(len(rank), dtype=np.int64), rank)
    return [(partition, offset)] + [later] * (n_stages - 1)
