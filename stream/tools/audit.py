"""The audit after `sluice chaos`: every input message accounted for, every logged feature checked.

Each message of the events topic, by its own position (partition, offset),
must have exactly one outcome: a prediction, a late record or a dead letter.
The features logged for it are compared with the offline path over the
arrival order the workers really saw (stage-0 positions from the events
topic, later stages' from the repartition topics).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson
import pandas as pd

from features.arrival import stage_positions
from features.offline import compute_features, offset_col, partition_col
from features.spec import FeaturePlan
from stream.pipeline.clock import MARK_KEY, TICK_KEY
from stream.kafka.reader import read_topic
from stream.kafka.topics import AppTopics
from stream.pipeline.events import parse_timestamp_ms
from stream.pipeline.forwarded import decode as decode_forwarded
from stream.pipeline.outcomes import HEADER_SOURCE
from stream.tools.fault_figures import Timeline
from stream.tools.parity import differs

#: Log fields that differ between two scorings of the same message by design.
VOLATILE = ("scored_at", "latency_ms", "arrival")


@dataclass
class ChaosReport:
    events: int = 0  # messages produced to the events topic (valid and hostile)
    valid: int = 0  # of those, the ones that did not go to the dead-letter topic
    predictions: int = 0  # distinct input messages with a prediction
    dlq: int = 0  # distinct input messages dead-lettered
    late: int = 0  # distinct input messages sent to the late topic
    lost: int = 0  # input messages with no outcome at all
    duplicates_identical: int = 0  # extra predictions of one message, equal to the first
    duplicates_differing: int = 0  # extra predictions of one message that differ from the first
    feature_mismatches: int = 0  # logged stream-feature values that differ from the offline path
    worker_crashes: int = 0  # worker exits nobody asked for
    max_stall_s: float = 0.0  # longest wait between two predictions while events were due
    restart_to_ready_s: float = 0.0  # longest time from a restart to the worker holding partitions
    kills: int = 0
    rebalances: int = 0
    broker_pauses: int = 0
    late_offline: int = 0
    # Read back from the topics and the group's committed offsets (stream.tools.fault_figures):
    stall_s: dict = field(default_factory=dict)  # fault kind -> longest time a partition went without a prediction after one
    longest_gap_s: float = 0.0  # longest time one partition went without a prediction while events were due
    commit_lag_max: int = 0  # messages processed but not committed, at most, on one input partition
    replayed_per_kill: list = field(default_factory=list)  # per kill: {"reread": uncommitted at the kill, "duplicates": repeated log records}
    faults_skipped: int = 0  # faults not applied because the stream ended first
    faults: list = field(default_factory=list)  # each fault applied: kind, when, its stall
    examples: list = field(default_factory=list)

    def line(self) -> dict:
        keys = (
            "events", "valid", "predictions", "dlq", "late", "lost", "duplicates_identical", "duplicates_differing",
            "feature_mismatches", "worker_crashes", "max_stall_s", "restart_to_ready_s", "stall_s", "longest_gap_s",
            "commit_lag_max",
            "replayed_per_kill", "faults_skipped",
        )
        data = asdict(self)
        return {k: (round(data[k], 1) if isinstance(data[k], float) else data[k]) for k in keys}

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0 and self.duplicates_differing == 0 and self.feature_mismatches == 0
            and self.worker_crashes == 0 and self.late == self.late_offline and self.predictions > 0
        )



def _source(headers) -> tuple[str, int, int] | None:
    for name, value in headers or ():
        if name == HEADER_SOURCE:
            topic, partition, offset = value.decode().rsplit("/", 2)
            return topic, int(partition), int(offset)
    return None


def audit(bootstrap: str, plan: FeaturePlan, topics: AppTopics, report: ChaosReport) -> Timeline:
    """Account for every input message and compare every logged feature with the offline path.

    Returns when each outcome was written (broker timestamps), for the fault figures.
    """
    events_topic = topics.events
    stage_topics = topics.repartitions
    timeline = Timeline()
    inputs, stamps = {}, {}
    for m in read_topic(bootstrap, events_topic, idle_s=5, timeout_s=900):
        stamps[(m.partition(), m.offset())] = m.timestamp()[1]  # every record moves the clock, ticks too
        if m.key() != TICK_KEY:
            inputs[(m.partition(), m.offset())] = m.value()
        timeline.last_event_ms = max(timeline.last_event_ms, m.timestamp()[1])
    report.events = len(inputs)
    # A later stage's positions, by the stage-0 position each forwarded row carries.
    forwarded: list[dict] = [{} for _ in stage_topics]
    for stage, topic in enumerate(stage_topics[1:], start=1):
        for m in read_topic(bootstrap, topic, idle_s=5, timeout_s=900):
            if m.key() == MARK_KEY:
                continue  # the arrival clock's mark, not a forwarded event
            arrival = decode_forwarded(m.value())[0].arrival
            forwarded[stage].setdefault(tuple(arrival[0]), (m.partition(), m.offset()))
            # Written by the stage before: that stage is done with its input message.
            timeline.processed[(stage - 1, arrival[stage - 1][0])].append((m.timestamp()[1], arrival[stage - 1][1]))
    dead = set()
    for m in read_topic(bootstrap, topics.dlq, idle_s=5, timeout_s=300):
        source = _source(m.headers())
        if source is None:
            continue
        topic, p, o = source
        if topic in stage_topics:
            timeline.processed[(stage_topics.index(topic), p)].append((m.timestamp()[1], o))
        if topic != events_topic:  # dead-lettered at a later stage: map back to the input message
            stage = stage_topics.index(topic)
            back = {v: k for k, v in forwarded[stage].items()}
            if (p, o) not in back:
                continue
            p, o = back[(p, o)]
        dead.add((p, o))
        timeline.settled[p].append(m.timestamp()[1])
    late = set()
    for m in read_topic(bootstrap, topics.late, idle_s=5, timeout_s=300):
        source = _source(m.headers())
        if source is not None:
            late.add(source[1:])
            if source[0] == events_topic:
                timeline.settled[source[1]].append(m.timestamp()[1])
            if source[0] in stage_topics:
                timeline.processed[(stage_topics.index(source[0]), source[1])].append((m.timestamp()[1], source[2]))
    scored: dict[tuple[int, int], list[dict]] = defaultdict(list)
    source_of: dict[bytes, int] = {}  # event id -> source partition, for the predictions topic's timestamps
    for m in read_topic(bootstrap, topics.prediction_log, idle_s=5, timeout_s=900):
        record = orjson.loads(m.value())
        record["_written_ms"] = m.timestamp()[1]
        scored[tuple(record["arrival"][0])].append(record)
        source_of.setdefault(m.key(), record["arrival"][0][0])
        for stage, (p, o) in enumerate(record["arrival"]):
            timeline.processed[(stage, p)].append((record["_written_ms"], o))
    for m in read_topic(bootstrap, topics.predictions, idle_s=5, timeout_s=900):
        if m.key() in source_of:
            timeline.predictions[source_of[m.key()]].append(m.timestamp()[1])
    for records in scored.values():
        records.sort(key=lambda r: r["_written_ms"])
        timeline.repeats += [r.pop("_written_ms") for r in records[1:]]
        records[0].pop("_written_ms")
    report.dlq, report.late, report.predictions = len(dead), len(late), len(scored)
    valid_positions = sorted(set(inputs) - dead)
    report.valid = len(valid_positions)
    lost = [pos for pos in valid_positions if pos not in scored and pos not in late]
    report.lost = len(lost)
    if lost:
        report.examples.append(("lost", len(lost), lost[:5]))
    for records in scored.values():
        first = {k: v for k, v in records[0].items() if k not in VOLATILE}
        for other in records[1:]:
            same = {k: v for k, v in other.items() if k not in VOLATILE} == first
            report.duplicates_identical += same
            report.duplicates_differing += not same
    _compare(plan, len(stage_topics), inputs, stamps, valid_positions, scored, late, report)
    return timeline


def _readable(plan, raw: bytes) -> dict | None:
    """The event, or None for a message the offline path cannot read either (a hostile one without its dead letter)."""
    try:
        row = orjson.loads(raw)
        parse_timestamp_ms(row[plan.schema.timestamp_field])
    except Exception:  # noqa: BLE001 - whatever makes it unreadable, it has no offline value to compare
        return None
    return row if isinstance(row, dict) else None


def _compare(plan, n_stages: int, inputs, stamps, valid_positions, scored, late, report: ChaosReport) -> None:
    # An unreadable message not dead-lettered (the run stopped before it was) is already counted lost.
    readable = [(pos, _readable(plan, inputs[pos])) for pos in valid_positions]
    valid_positions = [pos for pos, row in readable if row is not None]
    rows = [row for _, row in readable if row is not None]
    if not rows:
        return
    frame = pd.DataFrame(rows)
    ts_field = plan.schema.timestamp_field
    # Epoch milliseconds: valid times span years 1 to 9999, beyond pandas datetimes.
    frame[ts_field] = np.array([parse_timestamp_ms(r[ts_field]) for r in rows], dtype=np.int64)
    # Every stage's order from the events topic alone (features/arrival.py): every message moves its clock.
    every = sorted(stamps)
    index = {pos: i for i, pos in enumerate(every)}
    positions = stage_positions(
        np.array([p for p, _ in every]), np.array([o for _, o in every]), np.array([stamps[pos] for pos in every]), n_stages
    )
    at = np.array([index[pos] for pos in valid_positions])
    for stage, (partition, offset) in enumerate(positions):
        frame[partition_col(stage)] = partition[at]
        frame[offset_col(stage)] = offset[at]
    offline = compute_features(plan, frame)
    offline_late = {valid_positions[k] for k in np.flatnonzero(offline.late_stage >= 0)}
    report.late_offline = len(offline_late)
    names = [f"{v.name}__{a.name}" for v in plan.stream_views for a in v.aggs if f"{v.name}__{a.name}" in plan.vector]
    integral = {f"{v.name}__{a.name}": a.function in ("count", "count_distinct") for v in plan.stream_views for a in v.aggs}
    values = offline.frame[names].to_numpy()
    mismatches = Counter()
    for k, pos in enumerate(valid_positions):
        for record in scored.get(pos, [])[:1]:
            for j, name in enumerate(names):
                bad, _, _ = differs(record["features"][name], float(values[k, j]), integral[name])
                if bad:
                    mismatches[name] += 1
                    if len(report.examples) < 8:
                        report.examples.append((pos, name, record["features"][name], float(values[k, j])))
    report.feature_mismatches = sum(mismatches.values()) + len(offline_late ^ late)
