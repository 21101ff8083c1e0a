"""Catch the worker's RocksDB copies up with the changelogs before it joins the group.

A worker that takes partitions in a rebalance restores their window state
from the changelog topics before it processes them, and those partitions
produce nothing meanwhile. A joining worker with an empty data directory
reads the whole changelog of every partition it takes; on a broker that does
not compact changelogs (the embedded one) that grows with the stream's age
(19–57 s of stall per join were measured). Reading the changelogs before the
worker joins takes that read out of the rebalance: the current owners keep
serving while it runs, and Faust's recovery then reads only what was written
since, because each partition database records the changelog offset it holds
(`stream.worker.state._RocksState`). A restarted worker's own partitions are
near the end already, so for it this costs only what recovery would read.
"""

from __future__ import annotations

import logging
import time

from stream.worker.consumer import FENCE_KEY, mark_ends

log = logging.getLogger("sluice.worker")

#: Records applied to a partition database per write batch.
BATCH_RECORDS = 10_000


def prewarm(states, bootstrap: str, partitions: int, existing: set[str], timeout_s: float = 600.0) -> int:
    """Apply every changelog record past what each partition database holds; returns the records applied.

    `states` are the worker's RocksDB table states (stream.worker.state.ROCKS_STATES), `existing`
    the topics the broker has (a changelog that does not exist yet has nothing to read).
    """
    from faust.types.tuples import TP

    started, applied = time.perf_counter(), 0
    for state in states:
        rocks, topic = state.rocks, state.topic
        if topic not in existing:
            continue
        tps = [TP(topic, p) for p in range(partitions)]
        ends = mark_ends(bootstrap, tps)  # exact: the offset after a marker of our own
        rocks.path.mkdir(parents=True, exist_ok=True)
        starts = {}
        for tp in tps:
            held = rocks.persisted_offset(tp)
            starts[tp.partition] = 0 if held is None else held + 1
        todo = {p: ends[TP(topic, p)] for p in starts if starts[p] < ends[TP(topic, p)]}
        if todo:
            applied += _catch_up(rocks, bootstrap, topic, starts, todo, timeout_s)
        for p in range(partitions):
            rocks._dbs.pop(p, None)  # Faust opens the databases of the partitions it assigns
    if applied:
        log.info("caught up %d changelog records before joining the group in %.1f s", applied, time.perf_counter() - started)
    return applied


def _catch_up(rocks, bootstrap: str, topic: str, starts: dict[int, int], ends: dict[int, int], timeout_s: float) -> int:
    import rocksdict
    from confluent_kafka import TopicPartition
    from faust.types.tuples import TP

    from features.errors import SluiceError
    from stream.kafka.clients import make_consumer

    consumer = make_consumer(bootstrap, **{"group.id": f"sluice-prewarm-{topic}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in ends])
    batches = {p: rocksdict.WriteBatch(raw_mode=True) for p in ends}
    counts = dict.fromkeys(ends, 0)
    last = {p: starts[p] - 1 for p in ends}
    applied = 0
    deadline = time.monotonic() + timeout_s
    try:
        while any(last[p] < ends[p] - 1 for p in ends):
            if time.monotonic() > deadline:
                msg = f"could not read changelog {topic} to its end within {timeout_s:.0f} s before joining; check the broker"
                raise SluiceError(msg)
            for msg in consumer.consume(10_000, timeout=0.5):
                if msg.error():
                    continue
                p, offset = msg.partition(), msg.offset()
                if p not in ends or offset >= ends[p]:
                    continue
                last[p] = offset
                key = msg.key()
                if key is None or key == FENCE_KEY:
                    continue
                value = msg.value()
                if value is None:
                    batches[p].delete(key)
                else:
                    batches[p].put(key, value)
                counts[p] += 1
                applied += 1
                if counts[p] >= BATCH_RECORDS:
                    _flush(rocks, topic, p, batches[p], last[p], TP)
                    batches[p], counts[p] = rocksdict.WriteBatch(raw_mode=True), 0
        for p in ends:
            _flush(rocks, topic, p, batches[p], last[p], TP)
    finally:
        consumer.close()
    return applied


def _flush(rocks, topic: str, partition: int, batch, last_offset: int, tp_type) -> None:
    """Write the batch, then record the offset of the last record read (the order a crash must see)."""
    rocks._db_for_partition(partition).write(batch)
    rocks.set_persisted_offset(tp_type(topic, partition), last_offset)
