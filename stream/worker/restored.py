"""A restarted worker's own copies of window state count as caught up when it rejoins.

A worker restarted on its data directory (RocksDB) still holds the state of
the partitions it owned, with the changelog offset each copy holds (the
store's persisted offset, which Faust's recovery starts reading after). Its
peer took those partitions over meanwhile and wrote on, so each copy lacks
what was written while it was down. Reported as nothing (the worker joins as
one with no copy), `WarmingAssignor` kept the partitions with the peer and
warmed the restarted worker up first: one more rebalance, stalling every
partition, only to move them back (docs/operations.md, "Rebalances").

So before it first joins, the worker compares its copies with their
changelogs' end offsets and reports the partitions whose copies are close
enough as caught up (`WarmingAssignor.restored`, until its first
assignment), with the records each lacks: they move back at once, the
freshest first (those it owned when it died, which the peer may still be
reading from the changelog's start), and their recovery reads only what the
peer wrote. Any failure (no store on disk, no answer from the broker within
`END_OFFSETS_TIMEOUT_S`) reports nothing, which is the old behaviour.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import faust
from faust.types.tuples import TP

from stream.kafka.offsets import partition_ends

log = logging.getLogger("sluice.worker")

#: A restored partition (all its tables' changelog partitions together) this many records behind may move back at once.
#: Its recovery then reads them inside the rebalance (6,900 records/s measured on a quiet machine, 2,600-3,300 under
#: load: 3-8 s for a worker's two partitions), where a warm-up would cost a second rebalance of every partition (3-4 s);
#: docs/operations.md, "Rebalances". Kafka Streams' `acceptable.recovery.lag` defaults to 10,000 too.
RESTART_LAG_RECORDS = 10_000
#: How long the worker waits for the changelogs' end offsets before it joins without reporting its copies.
END_OFFSETS_TIMEOUT_S = 5.0


def local_offsets(app: faust.App) -> dict[TP, int]:
    """Changelog partition -> the offset this worker's RocksDB copy holds, for each copy on disk (read-only)."""
    held: dict[TP, int] = {}
    for table in app.tables.values():
        store = table.data
        path_of = getattr(store, "partition_path", None)
        if path_of is None:
            continue  # an in-memory store: nothing survives a restart
        topic = table.changelog_topic.get_topic_name()
        for partition in range(table.partitions or app.conf.topic_partitions):
            path = Path(path_of(partition))
            if path.is_dir():
                offset = _persisted_offset(path, store.offset_key)
                if offset is not None:
                    held[TP(topic, partition)] = offset
    return held


def _persisted_offset(path: Path, key: bytes) -> int | None:
    from rocksdict import AccessType, Options, Rdict

    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        raw = db.get(key)
    finally:
        db.close()
    return None if raw is None else int(raw)


def records_behind(held: Mapping[TP, int], ends: Mapping[TP, int]) -> dict[TP, int]:
    """Changelog partition -> the records its copy here lacks (all of them where there is no copy)."""
    return {tp: max(0, end - 1 - held.get(tp, -1)) for tp, end in ends.items()}


def near_their_end(
    held: Mapping[TP, int], ends: Mapping[TP, int], lag_records: int = RESTART_LAG_RECORDS,
) -> frozenset[TP]:
    """The changelog partitions of each partition number whose copies together lack at most `lag_records` records.

    `ends`: every changelog partition's end offset (where the next record
    goes); a partition with no copy at all is left out, a missing copy of
    one of its tables counts as holding nothing.
    """
    lacking = records_behind(held, ends)
    by_partition: dict[int, list[TP]] = defaultdict(list)
    for tp in ends:
        by_partition[tp.partition].append(tp)
    near: set[TP] = set()
    for tps in by_partition.values():
        if any(tp in held for tp in tps) and sum(lacking[tp] for tp in tps) <= lag_records:
            near.update(tps)
    return frozenset(near)


def restored_copies(app: faust.App, bootstrap: str, timeout_s: float = END_OFFSETS_TIMEOUT_S) -> dict[TP, int]:
    """The changelog partitions this worker's copies on disk hold to within RESTART_LAG_RECORDS -> the records each lacks.

    Nothing on any failure.
    """
    try:
        held = local_offsets(app)
        if not held:
            return {}
        changelogs = [
            (table.changelog_topic.get_topic_name(), p)
            for table in app.tables.values()
            for p in range(table.partitions or app.conf.topic_partitions)
        ]
        ends = {TP(topic, p): end for (topic, p), end in partition_ends(bootstrap, changelogs, timeout_s).items()}
    except Exception as exc:  # noqa: BLE001 - a broker error, a store it cannot read: joining without copies is always safe
        log.warning("rebalance: not reporting this worker's copies on disk as caught up (%r)", exc)
        return {}
    near = near_their_end(held, ends)
    lacking = records_behind(held, ends)
    behind = {tp: n for tp, n in lacking.items() if tp in held or tp in near}
    log.info(
        "rebalance: copies on disk of %d changelog partitions, %d within %d records of the end "
        "(per partition behind: %s); reported as caught up until the first assignment",
        len(held), len(near), RESTART_LAG_RECORDS,
        ", ".join(f"{tp.topic.removeprefix(app.conf.id + '-')}[{tp.partition}] {n}" for tp, n in sorted(behind.items())),
    )
    return {tp: behind[tp] for tp in near}
