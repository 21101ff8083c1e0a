"""Partitions move to a worker only once its standby copy of their state is caught up.

Every rebalance revokes every partition (neither aiokafka nor Faust can do
cooperative rebalancing), and a partition that moves is recovered by its new
owner from its changelog partitions. A worker that joins the group has no
copy, so it read them from the start inside the rebalance, and the embedded
broker never compacts them: 19-57 s without predictions on the partitions
that moved (docs/operations.md, "Rebalances").

`WarmingAssignor` does what Kafka Streams' high-availability assignor does
with warm-up replicas and a probing rebalance. Faust's sticky assignment is
computed as before; then a partition it would take from a worker still in
the group and give to one whose copy is not caught up stays with its current
owner, and the new one gets its changelog partitions as a standby (a
warm-up). A worker reports the standby partitions it holds within
`WARM_LAG_RECORDS` of the changelog's end in its group metadata; once all of
its warm-ups are, it asks the group to rebalance again (`watch_warmups`),
and this time the partitions move and the new owner reads only the last
records. While it warms up it follows no other changelog: with standby
copies on, Faust also gave it copies of the partitions that stay with their
owner, read from the start alongside the warm-ups (a warm-up took 29-57 s
instead of 8-20); it gets them once warm. A worker that left or died
has no copy to wait for: its partitions move at once, as before. A worker
restarted on its data directory reports its own copies on disk that are
near their end as caught up at its first join (stream.worker.restored), so
its partitions come back to it at once.

The reports travel in front of Faust's own metadata and assignment bytes
(`_wrap`). A leader with this assignor reads a member that sends none (a
worker with `warm_moves` off, or an older one) as having no caught-up copy
and sends it Faust's bytes alone; Faust's own assignor cannot read them, so
a group changes to warm moves with every worker stopped, or through a roll
with `SLUICE_WARM_MOVES=false` first (docs/operations.md, "Rebalances").
"""

from __future__ import annotations

import json
import logging
import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping

import faust
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from faust.assignor import PartitionAssignor
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata
from faust.types.tuples import TP

log = logging.getLogger("sluice.worker")

#: A standby copy this close to its changelog's end (records, per changelog partition) may become active.
WARM_LAG_RECORDS = 1_000
#: Marks the user data that carries Sluice's reports in front of Faust's.
MAGIC = b"sluice-warm/1\n"


def _wrap(report: dict, faust_bytes: bytes) -> bytes:
    body = json.dumps(report, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(body)) + body + faust_bytes


def _unwrap(user_data: bytes) -> tuple[dict, bytes]:
    """(Sluice's report, Faust's bytes); an empty report where the sender put none in."""
    if not user_data.startswith(MAGIC):
        return {}, user_data
    start = len(MAGIC) + 4
    (size,) = struct.unpack(">I", user_data[len(MAGIC) : start])
    return json.loads(user_data[start : start + size]), user_data[start + size :]


def _tps(pairs: Iterable) -> set[TP]:
    return {TP(topic, int(partition)) for topic, partition in pairs}


def hold_until_warm(
    previous: Mapping[str, Mapping[str, Iterable[int]]],
    target: Mapping[str, ClientAssignment],
    caught_up: Mapping[str, set[TP]],
    topic_groups: Mapping[str, int],
    changelogs: set[str],
    behind: Mapping[str, Mapping[TP, int]] | None = None,
) -> dict[str, set[TP]]:
    """Change `target` so that no partition moves to a member without a caught-up copy; return the warm-ups.

    `previous` is each member's active partitions by topic (what it reported
    it holds), `target` the assignment Faust computed (changed in place),
    `caught_up` each member's standby changelog partitions near their end.
    Per co-partitioned group of topics with at least one changelog: for
    each pair (current owner, new owner) of the partitions Faust moves, as
    many partitions as Faust moves still move, but only partitions the new
    owner is caught up on (those it was given, else others of the current
    owner's; of these, those its copies lack the fewest records of, per
    `behind`, else Faust's picks first); the rest stay with their current
    owner, and the new owner gets the changelogs of as many of them as still
    lack a warm replacement as standbys (a warm-up), returned per member as
    changelog partitions, and no other standby of the group's topics. `behind`: changelog records a member's caught-up
    copies lack, where it said (a restarted worker's copies on disk: the
    freshest are the partitions it owned until it died, which the current
    owner may still be recovering from the start).
    """
    behind = behind or {}
    warmups: dict[str, set[TP]] = defaultdict(set)
    groups: dict[int, set[str]] = defaultdict(set)
    for topic, group in topic_groups.items():
        groups[group].add(topic)
    for topics in groups.values():
        stateful = sorted(topics & changelogs)
        if not stateful:
            continue  # nothing to recover: moving costs nothing
        owner_before = _owners({m: a for m, a in previous.items() if m in target}, topics)
        owner_after = _owners({m: a.actives for m, a in target.items()}, topics)

        def warm(member: str, partition: int, stateful=stateful) -> bool:
            return all(TP(topic, partition) in caught_up.get(member, set()) for topic in stateful)

        def lag(member: str, partition: int, stateful=stateful) -> int:
            return sum(behind.get(member, {}).get(TP(topic, partition), 0) for topic in stateful)

        _orphans_to_copies(target, topics, owner_before, owner_after, warm, lag)
        warming_here: dict[str, set[int]] = defaultdict(set)
        moves: dict[tuple[str, str], list[int]] = defaultdict(list)
        for partition, before in sorted(owner_before.items()):
            after = owner_after.get(partition)
            if after is not None and after != before:
                moves[(before, after)].append(partition)
        for (before, after), moving in sorted(moves.items()):
            kept = sorted(p for p, owner in owner_after.items() if owner == before and owner_before.get(p) == before)
            ready = [p for p in moving if warm(after, p)] + [p for p in kept if warm(after, p)]
            ready.sort(key=lambda p, after=after: lag(after, p))  # (stable: Faust's picks first among equals)
            go = set(ready[: len(moving)])
            held = [p for p in moving if p not in go]
            short = len(moving) - len(go)  # moves that wait: warm up only that many (the others' places went to warm ones)
            for i, partition in enumerate(held):
                _move(target, topics, partition, after, before)
                owner_after[partition] = before
                if i < short:
                    _add_standby(target[after], topics, partition)
                    warmups[after].update(TP(topic, partition) for topic in stateful)
                    warming_here[after].add(partition)
            for partition in go - set(moving):
                _move(target, topics, partition, before, after)
                owner_after[partition] = after  # (so that no later pair swaps it again)
        for member, partitions in warming_here.items():
            _only_standbys(target[member], topics, partitions)
    return dict(warmups)


def _orphans_to_copies(target, topics: set[str], owner_before: dict[int, str], owner_after: dict[int, str], warm, lag) -> None:
    """Give each partition whose owner left or died to a member with a caught-up copy of it, where Faust did not.

    Faust balances the counts and knows nothing of copies: after a kill with
    two peers running it gave one of the dead worker's two partitions to the
    restarted worker and the other to a peer with no copy, which read its
    changelogs from the start (67,712-75,628 records, 17 s) while the
    restarted worker held a copy 0-87 records behind. An orphan moves from a
    member without a copy to one with a caught-up copy (the least behind)
    that holds fewer partitions of the group, so the counts stay as even.
    """
    counts: dict[str, int] = defaultdict(int)
    for owner in owner_after.values():
        counts[owner] += 1
    for partition in sorted(set(owner_after) - set(owner_before)):
        cold = owner_after[partition]
        if warm(cold, partition):
            continue
        takers = [m for m in sorted(target) if counts[m] < counts[cold] and warm(m, partition)]
        if not takers:
            continue
        taker = min(takers, key=lambda m: (lag(m, partition), counts[m]))
        _move(target, topics, partition, cold, taker)
        log.info("rebalance: partition %d, whose owner left, goes to %s (a copy %d records behind), not to %s (no copy)",
                 partition, taker, lag(taker, partition), cold)
        owner_after[partition] = taker
        counts[cold] -= 1
        counts[taker] += 1


def _owners(actives: Mapping[str, Mapping[str, Iterable[int]]], topics: set[str]) -> dict[int, str]:
    owners: dict[int, str] = {}
    for member in sorted(actives):
        for topic in sorted(topics):
            for partition in actives[member].get(topic, ()):
                owners.setdefault(partition, member)
    return owners


def _move(target: Mapping[str, ClientAssignment], topics: set[str], partition: int, src: str, dst: str) -> None:
    """Make `dst` the active owner of `partition` of every topic in `topics` instead of `src`; neither keeps it as a standby."""
    for topic in topics:
        for member, active in ((src, False), (dst, True)):
            assignment = target[member]
            held = set(assignment.actives.get(topic, ())) - {partition}
            assignment.actives[topic] = sorted(held | {partition} if active else held)
            if topic in assignment.standbys:
                assignment.standbys[topic] = sorted(set(assignment.standbys[topic]) - {partition})


def _only_standbys(assignment: ClientAssignment, topics: set[str], partitions: set[int]) -> None:
    """Drop every standby of `topics` but `partitions` (a member warming up follows nothing else until it is warm)."""
    for topic in topics:
        if topic in assignment.standbys:
            assignment.standbys[topic] = sorted(set(assignment.standbys[topic]) & partitions)


def _add_standby(assignment: ClientAssignment, topics: set[str], partition: int) -> None:
    for topic in topics:
        assignment.standbys[topic] = sorted(set(assignment.standbys.get(topic, ())) | {partition})


class WarmingAssignor(PartitionAssignor):
    """Faust's assignor, holding moves until the new owner's copy is caught up (see the module's docstring)."""

    #: Standby changelog partitions this worker holds within WARM_LAG_RECORDS of their end (refreshed by watch_warmups).
    caught_up: frozenset[TP] = frozenset()
    #: Changelog partitions the leader gave this worker to catch up on before they move here.
    warming: frozenset[TP] = frozenset()
    #: Its own copies on disk found near their changelog's end at start, with the records each lacks
    #: (stream.worker.restored): reported as caught up until its first assignment, after which they are either its
    #: actives or left behind by the peer's writes.
    restored: Mapping[TP, int] = {}
    _reports: dict
    _wrapped: set

    def metadata(self, topics):
        meta = super().metadata(topics)
        report = {
            "caught_up": sorted([tp.topic, tp.partition] for tp in self.caught_up | set(self.restored)),
            "behind": sorted([tp.topic, tp.partition, n] for tp, n in self.restored.items()),
        }
        return ConsumerProtocolMemberMetadata(meta.version, meta.subscription, _wrap(report, meta.user_data))

    def on_assignment(self, assignment) -> None:
        report, user_data = _unwrap(assignment.user_data)
        self.warming = frozenset(_tps(report.get("warming", ())))
        self.restored = {}
        if self.warming:
            log.info("rebalance: catching up on %d changelog partitions before they move here", len(self.warming))
        super().on_assignment(ConsumerProtocolMemberAssignment(assignment.version, assignment.assignment, user_data))

    def _perform_assignment(self, cluster, member_metadata):
        self._reports = {}
        self._wrapped = {m for m, meta in member_metadata.items() if meta.user_data.startswith(MAGIC)}
        stripped = {}
        for member, meta in member_metadata.items():
            report, user_data = _unwrap(meta.user_data)
            actives = ClientMetadata.loads(user_data).assignment.actives
            behind = {TP(topic, int(p)): int(n) for topic, p, n in report.get("behind", ())}
            self._reports[member] = (actives, _tps(report.get("caught_up", ())), behind)
            stripped[member] = ConsumerProtocolMemberMetadata(meta.version, meta.subscription, user_data)
        return super()._perform_assignment(cluster, stripped)

    def _protocol_assignments(self, assignments, cl_distribution, tp_distribution, topic_groups):
        reports = getattr(self, "_reports", {})
        warmups = hold_until_warm(
            {m: actives for m, (actives, _, _) in reports.items()},
            assignments,
            {m: caught for m, (_, caught, _) in reports.items()},
            topic_groups,
            set(self._table_manager.changelog_topics),
            {m: behind for m, (_, _, behind) in reports.items()},
        )
        if warmups:
            log.info(
                "rebalance: %d changelog partitions stay with their owner until a new one has caught up",
                sum(len(w) for w in warmups.values()),
            )
        result = super()._protocol_assignments(
            assignments, self._get_changelog_distribution(assignments),
            self._get_external_topic_distribution(assignments), topic_groups,
        )
        wrapped = getattr(self, "_wrapped", set())
        return {
            member: ConsumerProtocolMemberAssignment(
                a.version, a.assignment,
                _wrap({"warming": sorted([tp.topic, tp.partition] for tp in warmups.get(member, ()))}, a.user_data),
            ) if member in wrapped else a
            for member, a in result.items()
        }


def standby_caught_up(app: faust.App, lag_records: int = WARM_LAG_RECORDS) -> frozenset[TP]:
    """The standby changelog partitions whose copy here is within `lag_records` of the end the consumer last saw."""
    recovery = app.tables.recovery
    near: set[TP] = set()
    for tp in list(recovery.standby_tps):
        try:
            seen = app.consumer.highwater(tp)
        except (AssertionError, KeyError):  # not (or no longer) assigned
            continue
        end = max(seen or 0, (recovery.standby_highwaters.get(tp) or -1) + 1)
        read = recovery.standby_offsets.get(tp)
        if end - 1 - (-1 if read is None else read) <= lag_records:
            near.add(tp)
    return frozenset(near)


def watch_warmups(app: faust.App, interval_s: float = 1.0) -> None:
    """Keep this worker's report of caught-up copies fresh; ask for a rebalance once every warm-up is caught up."""
    asked = [-1]  # the generation this worker last asked for a rebalance in

    @app.timer(interval_s)
    async def check_warmups() -> None:
        assignor = app.assignor
        if not isinstance(assignor, WarmingAssignor) or app.rebalancing:
            return
        assignor.caught_up = standby_caught_up(app)
        generation = app.consumer_generation_id
        if assignor.warming and assignor.warming <= assignor.caught_up and generation != asked[0]:
            asked[0] = generation
            log.info("rebalance: caught up on %d changelog partitions; asking the group to move them here",
                        len(assignor.warming))
            thread = app.consumer._thread
            thread.thread_loop.call_soon_threadsafe(thread._ensure_consumer()._coordinator.request_rejoin)
