"""`sluice chaos`: a live-rate stream through real workers while faults happen, then an audit.

While events are produced at a fixed rate (not a backlog), workers are
SIGKILLed and restarted (as a supervisor would), a second worker joins and
leaves the group (rebalances), the broker is paused (SIGSTOP / SIGCONT), and
hostile messages are mixed in. Afterwards every topic is read back and each
input message is accounted for: one prediction, one late record or one dead
letter. Features in the prediction log are compared with the offline path
over the arrival order the workers really saw (stage-0 positions from the
events topic, later stages from the repartition topics), keyed by each
message's own position, so repeated event ids are told apart.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from features.feast_repo import load_plan, open_store
from features.offline import compute_features, offset_col, partition_col
from features.spec import FeaturePlan
from stream.pipeline.engine import Engine
from stream.pipeline.outcomes import HEADER_SOURCE
from stream.pipeline.events import parse_timestamp_ms
from stream.kafka.clients import ensure_topics, warmed_producer
from stream.kafka.reader import TopicReader, read_topic
from stream.tools.parity import _differs
from stream.tools.process import WorkerProcess, worker_process

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
    examples: list = field(default_factory=list)

    def line(self) -> dict:
        keys = (
            "events", "valid", "predictions", "dlq", "late", "lost", "duplicates_identical", "duplicates_differing",
            "feature_mismatches", "worker_crashes", "max_stall_s", "restart_to_ready_s",
        )
        data = asdict(self)
        return {k: (round(data[k], 1) if isinstance(data[k], float) else data[k]) for k in keys}

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0 and self.duplicates_differing == 0 and self.feature_mismatches == 0
            and self.worker_crashes == 0 and self.late == self.late_offline and self.predictions > 0
        )


@dataclass
class Faults:
    kills: int = 3
    rebalances: int = 2  # a second worker joins, later leaves (each join and each leave moves partitions)
    broker_pauses: int = 1
    pause_s: float = 3.0


class _Slot:
    """One supervised worker: restarted when it dies, whatever killed it."""

    def __init__(self, make, name: str):
        self.make, self.name = make, name
        self.proc: WorkerProcess | None = None
        self.started = 0.0
        self.ready_s: list[float] = []
        self.crashes: list[str] = []
        self.generation = 0

    def start(self) -> None:
        self.generation += 1
        self.proc = self.make(f"{self.name}-{self.generation}", self.name).start()
        self.started = time.monotonic()
        self._waiting = True

    def poll(self) -> None:
        if self.proc is None:
            return
        if self._waiting and self.proc.ready_file.exists():
            self.ready_s.append(time.monotonic() - self.started)
            self._waiting = False
        rc = self.proc.proc.poll() if self.proc.proc else None
        if rc is not None:
            tail = self.proc.log_path.read_text(errors="replace").splitlines()[-5:]
            self.crashes.append(f"{self.name}-{self.generation} exited {rc}: {' | '.join(tail)}")
            self.start()

    @property
    def ready(self) -> bool:
        return self.proc is not None and not self._waiting

    def kill(self) -> None:
        self.proc.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def _schedule(faults: Faults, duration_s: float, rng: random.Random) -> list[tuple[float, str]]:
    """Fault moments, spread evenly (with jitter) over 10%-85% of the stream; each join before its leave."""
    kinds = ["kill"] * faults.kills + ["pause"] * faults.broker_pauses
    rng.shuffle(kinds)
    for _ in range(faults.rebalances):
        i = rng.randrange(len(kinds) + 1)
        kinds.insert(i, "join")
        kinds.insert(rng.randrange(i + 1, len(kinds) + 1), "leave")
    n = len(kinds)
    return [(duration_s * (0.1 + 0.75 * (i + rng.uniform(0.2, 0.8)) / n), kind) for i, kind in enumerate(kinds)]


def run_chaos(
    bootstrap: str,
    broker_pid: int | None,
    repo_path: Path,
    model_dir: Path,
    valid: list[bytes],
    hostile: list[tuple[bytes | None, bytes | None]],
    work_dir: Path,
    *,
    partitions: int = 4,
    rate: float = 2000.0,
    faults: Faults | None = None,
    seed: int = 7,
    app_id: str | None = None,
    worker_args: list[str] | None = None,
    log=print,
) -> ChaosReport:
    """Stream `valid` (keyed by the partition key) with `hostile` (key, value) mixed in, under faults; audit."""
    faults = faults or Faults()
    rng = random.Random(seed)
    plan = load_plan(open_store(repo_path))
    app_id = app_id or f"chaos-{int(time.time() * 1000)}"
    topics = {"SLUICE_PREDICTIONS_TOPIC": f"{app_id}.predictions", "SLUICE_PREDICTION_LOG_TOPIC": f"{app_id}.log"}
    events_topic = plan.schema.topic
    engine = Engine(plan, {}, app_id)
    ensure_topics(bootstrap, [events_topic, f"{events_topic}.dlq", f"{events_topic}.late", *topics.values(), *engine.repartition_topics], partitions)

    messages: list[tuple[bytes | None, bytes | None]] = []
    for payload in valid:
        messages.append((str(orjson.loads(payload)[plan.partition_key]).encode(), payload))
    for item in hostile:
        messages.insert(rng.randrange(len(messages) + 1), item)
    duration_s = len(messages) / rate

    def make(name: str, slot: str) -> WorkerProcess:
        # A restarted worker keeps its slot's data directory, as a pod keeps its volume.
        return worker_process(
            bootstrap, repo_path, model_dir, work_dir, name, app_id=app_id, partitions=partitions,
            env={**topics, "SLUICE_DATA_DIR": str(work_dir / f"{slot}-data")}, extra_args=worker_args,
        )

    primary = _Slot(make, "worker-a")
    extras: list[_Slot] = []  # workers that joined and have not left yet
    left: list[_Slot] = []
    report = ChaosReport(events=len(messages))
    # When each prediction appears (wall clock), for the stall figure.
    watcher = TopicReader(
        bootstrap, topics["SLUICE_PREDICTIONS_TOPIC"], partitions=partitions, keep=lambda m: (m.key(), time.monotonic()),
        one_at_a_time=True,
    )
    # Hostile producers send messages past the usual 1 MB client limit.
    producer = warmed_producer(bootstrap, f"{app_id}-warmup", **{"message.max.bytes": 10_000_000})
    try:
        primary.start()
        while not primary.ready:
            primary.poll()
            time.sleep(0.05)
        watcher.start()
        plan_faults = _schedule(faults, duration_s, rng)
        log(f"streaming {len(messages):,} messages ({len(hostile)} hostile) at {rate:,.0f}/s for {duration_s:.0f} s; faults: "
            + ", ".join(f"{kind}@{at:.0f}s" for at, kind in plan_faults))
        started = time.monotonic()
        sent = 0
        paused_until = None
        while sent < len(messages) or plan_faults or paused_until:
            now = time.monotonic() - started
            due = min(len(messages), int(now * rate) + 1)
            while sent < due:
                key, value = messages[sent]
                producer.produce(events_topic, value, key)
                sent += 1
                if sent % 500 == 0:
                    producer.poll(0)
            if paused_until and now >= paused_until:
                os.kill(broker_pid, signal.SIGCONT)
                paused_until = None
            # A fault waits until every worker holds its partitions: a kill
            # then lands while work is in flight, not during a restart.
            ready = all(slot.ready for slot in (primary, *extras))
            if plan_faults and plan_faults[0][0] <= now and not paused_until and ready:
                _, kind = plan_faults.pop(0)
                if kind == "kill":
                    primary.kill()
                    report.kills += 1
                elif kind == "join":
                    extras.append(_Slot(make, f"worker-{chr(ord('b') + len(extras) + len(left))}"))
                    extras[-1].start()
                    report.rebalances += 1
                elif kind == "leave" and extras:
                    extras[0].stop()
                    left.append(extras.pop(0))
                    report.rebalances += 1
                elif kind == "pause" and broker_pid:
                    producer.flush(30)
                    os.kill(broker_pid, signal.SIGSTOP)
                    paused_until = now + faults.pause_s
                    report.broker_pauses += 1
                log(f"  {now:6.1f} s: {kind} ({sent:,} sent, {len(watcher.records):,} predicted)")
            for slot in (primary, *extras):
                slot.poll()
            time.sleep(0.005)
        producer.flush(60)
        produced_at = time.monotonic()
        log(f"all {sent:,} messages produced in {produced_at - started:.0f} s; waiting for the workers to finish")
        last, last_n = time.monotonic(), -1
        while time.monotonic() - last < 20:
            for slot in (primary, *extras):
                slot.poll()
            if len(watcher.records) != last_n:
                last, last_n = time.monotonic(), len(watcher.records)
            time.sleep(0.5)
    finally:
        if paused_until and broker_pid:
            os.kill(broker_pid, signal.SIGCONT)
        for slot in (primary, *extras):
            slot.stop()
        watcher.stop()
    first_seen: dict[bytes, float] = {}
    for key, at in watcher.records:
        first_seen.setdefault(key, at)
    times = sorted(first_seen.values())
    # Stalls while events were still due: from the first prediction until the
    # last message was produced (the tail after it is only the drain).
    gaps = [b - a for a, b in itertools.pairwise(times) if a < produced_at]
    report.max_stall_s = max(gaps, default=0.0)
    slots = [primary, *extras, *left]
    report.restart_to_ready_s = max(primary.ready_s[1:], default=0.0)
    crashes = [c for slot in slots for c in slot.crashes]
    report.worker_crashes = len(crashes)
    report.examples += crashes[:3]
    audit(bootstrap, plan, engine, topics, report)
    return report


def _source(headers) -> tuple[str, int, int] | None:
    for name, value in headers or ():
        if name == HEADER_SOURCE:
            topic, partition, offset = value.decode().rsplit("/", 2)
            return topic, int(partition), int(offset)
    return None


def audit(bootstrap: str, plan: FeaturePlan, engine: Engine, topics: dict, report: ChaosReport) -> None:
    """Account for every input message and compare every logged feature with the offline path."""
    events_topic = plan.schema.topic
    inputs = {(m.partition(), m.offset()): m.value() for m in read_topic(bootstrap, events_topic, idle_s=5, timeout_s=900)}
    report.events = len(inputs)
    # A later stage's positions, by the stage-0 position each forwarded row carries.
    forwarded: list[dict] = [{} for _ in engine.repartition_topics]
    for stage, topic in enumerate(engine.repartition_topics[1:], start=1):
        for m in read_topic(bootstrap, topic, idle_s=5, timeout_s=900):
            origin = tuple(orjson.loads(m.value())[2][0])
            forwarded[stage].setdefault(origin, (m.partition(), m.offset()))
    dead = set()
    for m in read_topic(bootstrap, f"{events_topic}.dlq", idle_s=5, timeout_s=300):
        source = _source(m.headers())
        if source is None:
            continue
        topic, p, o = source
        if topic != events_topic:  # dead-lettered at a later stage: map back to the input message
            stage = engine.repartition_topics.index(topic)
            back = {v: k for k, v in forwarded[stage].items()}
            if (p, o) not in back:
                continue
            p, o = back[(p, o)]
        dead.add((p, o))
    late = set()
    for m in read_topic(bootstrap, f"{events_topic}.late", idle_s=5, timeout_s=300):
        source = _source(m.headers())
        if source is not None:
            late.add(source[1:])
    scored: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for m in read_topic(bootstrap, topics["SLUICE_PREDICTION_LOG_TOPIC"], idle_s=5, timeout_s=900):
        record = orjson.loads(m.value())
        scored[tuple(record["arrival"][0])].append(record)
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
    _compare(plan, engine, inputs, valid_positions, forwarded, scored, late, report)


def _compare(plan, engine, inputs, valid_positions, forwarded, scored, late, report: ChaosReport) -> None:
    rows = [orjson.loads(inputs[pos]) for pos in valid_positions]
    if not rows:
        return
    frame = pd.DataFrame(rows)
    ts_field = plan.schema.timestamp_field
    # Epoch milliseconds: valid times span years 1 to 9999, beyond pandas datetimes.
    frame[ts_field] = np.array([parse_timestamp_ms(r[ts_field]) for r in rows], dtype=np.int64)
    frame[partition_col(0)] = [p for p, _ in valid_positions]
    frame[offset_col(0)] = [o for _, o in valid_positions]
    never = np.iinfo(np.int64).max
    for stage in range(1, len(engine.repartition_topics)):
        slots = [forwarded[stage].get(pos) for pos in valid_positions]
        frame[partition_col(stage)] = [s[0] if s else -1 for s in slots]
        frame[offset_col(stage)] = [s[1] if s else never for s in slots]
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
                bad, _, _ = _differs(record["features"][name], float(values[k, j]), integral[name])
                if bad:
                    mismatches[name] += 1
                    if len(report.examples) < 8:
                        report.examples.append((pos, name, record["features"][name], float(values[k, j])))
    report.feature_mismatches = sum(mismatches.values()) + len(offline_late ^ late)
