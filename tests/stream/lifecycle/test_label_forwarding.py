"""Labels produced to the wrong partition, over every partition of the pure step: joined as if produced to the right one.

`Topics` stands in for the broker: one labels log and one prediction-log log
per partition, records appended in the order they are produced, each
partition's join reading its own logs in order, in chunks, whenever the
schedule lets it. Outputs the join sends to the labels topic (forwarded
labels, announced clocks) are appended to their partition's log, behind
whatever the label source had already produced there.
"""

from __future__ import annotations

import random

import orjson
import pytest

from stream.lifecycle import label_state as ls
from stream.lifecycle.label_join import CLOCK_KEY, LABELS, LOG, LabelJoin
from tests.stream.lifecycle.test_label_join import DAY, T0, _canon, apply, clock, config, ids_in, label, log_record

P = 4
HOUR = 3_600_000


class Topics:
    def __init__(self, **kw):
        self.join = LabelJoin(config(**kw))
        self.logs = {role: [[] for _ in range(P)] for role in (LABELS, LOG)}
        self.done = {role: [0] * P for role in (LABELS, LOG)}  # committed offsets
        self.state: dict = {}
        self.records: list[dict] = []

    def produce(self, role: str, partition: int, key: bytes, value: bytes) -> None:
        self.logs.setdefault(role, [[] for _ in range(P)])[partition].append((key, value))  # role: or a topic's name

    def read(self, p: int, n: int, crash: random.Random | None = None, roles=(LOG, LABELS)) -> None:
        """Partition p's join reads up to n more records of each of its logs; a crash keeps a prefix of its state write."""
        messages = []
        for role in roles:
            start = self.done[role][p]
            log = self.logs[role][p][start : start + n]
            messages += [(role, key, value, start + i) for i, (key, value) in enumerate(log)]
        if not messages:
            return
        outcome = self.join.step(p, messages, self.state)
        for out in outcome.outputs:  # on the broker before the state, as in the worker
            if out.topic == "labeled":
                self.records.append(orjson.loads(out.value))
            else:
                self.produce(LABELS if out.topic == "labels" else out.topic, out.partition or 0, out.key, out.value)
        writes = list(outcome.writes.items())
        if crash is not None:
            apply(self.state, dict(writes[: crash.randint(0, len(writes))]))
            return  # offsets not committed: the chunk is read again
        apply(self.state, dict(writes))
        for role in (LOG, LABELS):
            self.done[role][p] += sum(1 for m in messages if m[0] == role)

    def drain(self, rng: random.Random, crash_rate: float = 0.0) -> None:
        """Read until every log is read, partitions in a random order, chunks of random size."""
        while any(self.done[role][p] < len(self.logs[role][p]) for role in (LABELS, LOG) for p in range(P)):
            p = rng.randrange(P)
            self.read(p, rng.randint(1, 5), rng if rng.random() < crash_rate else None)


def _source(seed: int):
    """Predictions of 40 events; labels in time order (duplicates, corrections, labels of unknown events); clocks."""
    rng = random.Random(seed)
    ids = [tid for p in range(P) for tid in ids_in(p, 10)]
    rng.shuffle(ids)
    preds = [(tid, T0 + i * HOUR) for i, tid in enumerate(ids)]
    labels = []
    for i, tid in enumerate(ids[8:] + [f"ghost{k}" for k in range(4)]):
        at = T0 + i * HOUR + rng.choice([1, 2, 5, 8, 9]) * DAY  # some after their event's 7-day window
        labels.append((at, tid, int(rng.random() < 0.3)))
    for at, tid, _ in list(labels[:10]):
        labels.append((at + DAY, tid, int(rng.random() < 0.5)))
    labels.sort()
    return preds, labels


def _run(seed: int, shift, *, schedule: int, crash_rate: float = 0.0, clock_every: int = 5) -> Topics:
    """The source produces every label to (its partition + shift(event id)) % P, a clock record after every few."""
    from stream.lifecycle.label_config import partition_for

    topics = Topics(default_label=0.0)
    preds, labels = _source(seed)
    for tid, at in preds:
        topics.produce(LOG, partition_for(tid.encode(), P), tid.encode(), log_record(tid, at))
    for k, (at, tid, value) in enumerate(labels, start=1):
        partition = (partition_for(tid.encode(), P) + shift(tid)) % P
        topics.produce(LABELS, partition, tid.encode(), label(tid, value, at))
        if k % clock_every == 0:
            for p in range(P):
                topics.produce(LABELS, p, CLOCK_KEY, clock(at))
    for p in range(P):
        topics.produce(LABELS, p, CLOCK_KEY, clock(labels[-1][0] + 60 * DAY))
    for p in range(P):
        # Every prediction before any label: how the two topics interleave is not what is tested here.
        topics.read(p, 10**6, roles=(LOG,))
    topics.drain(random.Random(schedule), crash_rate)
    return topics


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_labels_on_any_partition_give_the_records_of_labels_on_the_right_one(seed):
    right = _run(seed, lambda tid: 0, schedule=seed)
    rng = random.Random(seed)
    shifts = {}
    misplaced = _run(seed, lambda tid: shifts.setdefault(tid, rng.randrange(P)), schedule=seed + 100)
    assert sum(1 for s in shifts.values() if s) >= 10
    assert _canon(misplaced.records) == _canon(right.records)
    # Every label and every prediction had its outcome; nothing is kept after the last clock.
    assert {r["kind"] for r in right.records} >= {"joined", "unlabeled", "correction", "unmatched_label"}
    assert not [k for k in misplaced.state if k.startswith(ls.ENTRY_PREFIX)]


@pytest.mark.parametrize("seed", [5, 6])
def test_a_partition_that_crashed_after_forwarding_sends_copies_again_and_nothing_is_counted_twice(seed):
    right = _run(seed, lambda tid: 0, schedule=seed)
    every_one_misplaced = _run(seed, lambda tid: 1, schedule=seed + 100, crash_rate=0.3)
    # At least once: a record may come twice after a crash, identical; no other record comes.
    assert sorted(set(_canon(every_one_misplaced.records))) == sorted(set(_canon(right.records)))


def test_the_clock_record_got_there_first_and_the_forwarded_label_still_joins():
    """The reported case: every label on the wrong partition, the clock that closes everything right behind them."""
    topics = Topics(default_label=0.0)
    from stream.lifecycle.label_config import partition_for

    ids = [tid for p in range(P) for tid in ids_in(p, 5)]
    for tid in ids:
        topics.produce(LOG, partition_for(tid.encode(), P), tid.encode(), log_record(tid, T0))
    for tid in ids:
        topics.produce(LABELS, (partition_for(tid.encode(), P) + 1) % P, tid.encode(), label(tid, 1, T0 + HOUR))
    for p in range(P):
        topics.produce(LABELS, p, CLOCK_KEY, clock(T0 + 60 * DAY))
    for _ in range(4):  # each partition reads all it has, its clock record before the copies sent to it
        for p in reversed(range(P)):
            topics.read(p, 10**6)
    got = {}
    for r in topics.records:
        got.setdefault(r["tid"], []).append(r["kind"])
    print(f"misplaced labels joined: {sum(1 for k in got.values() if k == ['joined'])} of {len(ids)}")
    assert got == {tid: ["joined"] for tid in ids}


def test_a_silent_partition_holds_judgement_until_it_announces_its_clock():
    topics = Topics()
    from stream.lifecycle.label_config import partition_for

    a = ids_in(0, 1)[0]
    topics.produce(LOG, 0, a.encode(), log_record(a, T0))
    for p in range(P):
        if p != 2:  # partition 2 has read nothing yet: a label older than the clock may be on its way from it
            topics.produce(LABELS, p, CLOCK_KEY, clock(T0 + 60 * DAY))
    for p in range(P):
        topics.read(p, 100)
    for p in range(P):
        topics.read(p, 100)
    assert topics.records == []
    topics.produce(LABELS, 2, a.encode(), label(a, 1, T0 + HOUR))
    topics.produce(LABELS, 2, CLOCK_KEY, clock(T0 + 60 * DAY))
    assert partition_for(a.encode(), P) == 0
    for _ in range(2):
        for p in range(P):
            topics.read(p, 100)
    assert [r["kind"] for r in topics.records] == ["joined"]


def test_the_marker_keeps_what_every_peer_announced_and_reads_markers_written_before_peers():
    marker = ls.Marker(clock_ms=T0, low_bucket=5, labels_done=7, log_done=9, announced_ms=T0 - 5)
    marker.peer(1).clock_ms = T0 - 1
    marker.peer(3).forwarded_done = 42
    again = ls.Marker.decode(marker.encode())
    assert again == marker
    assert again.join_clock_ms(0, P) is None  # partition 2 announced nothing, 3 no clock
    marker.peer(2).clock_ms = T0 + 5
    marker.peer(3).clock_ms = T0 + 7
    assert marker.join_clock_ms(0, P) == T0 - 1 and marker.join_clock_ms(0, 1) == T0
    old = ls._MARK.pack(T0, 5, 7, 9)  # a marker of a changelog written before this
    assert ls.Marker.decode(old) == ls.Marker(clock_ms=T0, low_bucket=5, labels_done=7, log_done=9)


def test_unreadable_peer_clocks_and_forwarded_labels_are_dead_lettered():
    topics = Topics()
    bad = [
        (CLOCK_KEY, orjson.dumps({"clock": "2026-11-01T00:00:00Z", "from": P})),  # no such partition
        (CLOCK_KEY, orjson.dumps({"clock": "2026-11-01T00:00:00Z", "from": True})),
        (b"t0", orjson.dumps({"forwarded": [1], "label": {}})),
        (b"t0", orjson.dumps({"forwarded": ["1", 2], "label": {}})),
        (b"t0", orjson.dumps({"forwarded": [1, 2], "label": [1, 2]})),
        (b"t0", orjson.dumps({"forwarded": [1, 2], "label": None})),
    ]
    for key, value in bad:
        topics.produce(LABELS, 0, key, value)
    topics.read(0, 100)
    assert len(topics.logs["labels.dlq"][0]) == len(bad)
    assert topics.records == [] and ls.Marker.decode(topics.state[ls.marker_key(0)]).peers == {}
