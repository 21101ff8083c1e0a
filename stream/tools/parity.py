"""`sluice parity`: replay a stream through real workers, crash one, compare with offline.

Events are produced in a disordered arrival order over several partitions; a
worker is killed (SIGKILL) part-way and a new one takes over from the
committed offsets and the table changelogs. Afterwards every feature in the
prediction log is compared with `features.offline` computed from the raw
events, using the arrival order read back from the topics themselves.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from features.feast_repo import load_plan, open_store
from features.arrival import stage_positions
from features.offline import compute_features, offset_col, partition_col
from features.spec import FeaturePlan
from stream.pipeline.events import EventValidator
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import TopicReader, read_topic
from stream.kafka.topics import AppTopics
from stream.lifecycle.archive_history import read_archive
from stream.pipeline.records import read_log
from stream.services.archiver import archive_topic
from stream.tools.process import WorkerProcess, run_topics, worker_process

TOLERANCE = 1e-9


@dataclass
class ParityReport:
    events: int
    compared: int  # prediction-log records compared (each with every stream feature)
    values: int
    mismatches: int
    max_abs_diff: float
    max_rel_diff: float
    late_online: int
    late_offline: int
    duplicates: int
    restarts: int
    seconds: float
    examples: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.late_online == self.late_offline and self.compared > 0


def differs(online, offline: float, integral: bool) -> tuple[bool, float, float]:
    on = math.nan if online is None else float(online)
    if math.isnan(on) or math.isnan(offline):
        return (math.isnan(on) != math.isnan(offline)), 0.0, 0.0
    diff = abs(on - offline)
    rel = diff / max(abs(offline), 1e-300) if diff else 0.0
    if integral:
        return diff != 0.0, diff, rel
    return (diff > TOLERANCE and rel > TOLERANCE), diff, rel


def arrival_columns(bootstrap: str, plan: FeaturePlan, id_field: str, repartition_topics: list[str]) -> dict[str, list]:
    """(partition, position) per stage for every event id, first occurrence, from the events topic alone.

    A later stage folds in arrival order (features/arrival.py), which the
    events topic's partitions, offsets and broker timestamps fix; what the
    repartition topics hold, in whatever order, does not enter.
    """
    messages = list(read_topic(bootstrap, plan.schema.topic, idle_s=3, timeout_s=600))
    positions = stage_positions(
        np.array([m.partition() for m in messages], dtype=np.int64),
        np.array([m.offset() for m in messages], dtype=np.int64),
        np.array([m.timestamp()[1] for m in messages], dtype=np.int64),
        max(len(repartition_topics), 1),
    )
    where: dict[str, list] = {}
    for i, msg in enumerate(messages):
        try:
            event_id = str(orjson.loads(msg.value())[id_field])
        except Exception:  # noqa: BLE001 - malformed events have no arrival to record
            continue
        where.setdefault(event_id, [(int(p[i]), int(o[i])) for p, o in positions])
    return where


def compare(plan: FeaturePlan, events: pd.DataFrame, log: list[dict], where: dict, late_ids: set[str]) -> ParityReport:
    """`compare_frame` with each stage's (partition, offset) taken from `where` (read back from the topics)."""
    id_field = plan.schema.event_id
    frame = events.copy()
    n_stages = len(plan.stages())
    for stage in range(n_stages):
        slots = [where.get(str(i), []) for i in frame[id_field]]
        frame[partition_col(stage)] = [s[stage][0] if len(s) > stage else -1 for s in slots]
        frame[offset_col(stage)] = [s[stage][1] if len(s) > stage else np.iinfo(np.int64).max for s in slots]
    return compare_frame(plan, frame, log, late_ids)


def compare_frame(plan: FeaturePlan, frame: pd.DataFrame, log: list[dict], late_ids: set[str]) -> ParityReport:
    """Every logged feature against the offline path over `frame` (events with their arrival columns), by event id."""
    id_field = plan.schema.event_id
    offline = compute_features(plan, frame)
    row_of = {str(i): k for k, i in enumerate(frame[id_field])}
    names = [f"{v.name}__{a.name}" for v in plan.stream_views for a in v.aggs if f"{v.name}__{a.name}" in plan.vector]
    integral = {f"{v.name}__{a.name}": a.function in ("count", "count_distinct") for v in plan.stream_views for a in v.aggs}
    values = offline.frame[names].to_numpy()
    mismatches, max_abs, max_rel, compared, examples = 0, 0.0, 0.0, 0, []
    for record in log:
        k = row_of[str(record[id_field])]
        compared += 1
        for j, name in enumerate(names):
            bad, diff, rel = differs(record["features"][name], float(values[k, j]), integral[name])
            max_abs, max_rel = max(max_abs, diff), max(max_rel, rel)
            if bad:
                mismatches += 1
                if len(examples) < 5:
                    examples.append((record[id_field], name, record["features"][name], float(values[k, j])))
    offline_late = {str(frame[id_field].iloc[k]) for k in np.flatnonzero(offline.late_stage >= 0)}
    ids = [str(r[id_field]) for r in log]
    report = ParityReport(
        events=len(frame),
        compared=compared,
        values=compared * len(names),
        mismatches=mismatches + len(offline_late ^ late_ids),
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        late_online=len(late_ids),
        late_offline=len(offline_late),
        duplicates=len(ids) - len(set(ids)),
        restarts=0,
        seconds=0.0,
        examples=examples,
    )
    missing = set(map(str, frame[id_field])) - set(ids) - late_ids
    if missing:
        report.mismatches += len(missing)
        report.examples.append(("missing outcomes", len(missing), sorted(missing)[:3], None))
    return report


def run_parity(
    bootstrap: str,
    repo_path: Path,
    model_dir: Path,
    payloads: list[bytes],
    work_dir: Path,
    *,
    partitions: int = 4,
    kill_at: float = 0.5,
    app_id: str | None = None,
    log=print,
    from_archive: bool = False,
) -> ParityReport:
    """Produce `payloads` (JSON events, in arrival order), run workers with one crash, compare.

    The offline side takes each stage's arrival from the topics (partition
    and offset of the events and repartition topics) or, `from_archive`,
    from an archive of the events topic alone: stage 0 in offset order,
    later stages in the arrival clock's order (stream.lifecycle.archive_history).
    """
    started = time.perf_counter()
    plan = load_plan(open_store(repo_path))
    app_id = app_id or f"parity-{int(time.time() * 1000)}"
    topics = run_topics(plan, app_id)
    records = _produce(bootstrap, plan, payloads, partitions)
    log(f"produced {len(payloads):,} events over {partitions} partitions")

    def worker(n: int) -> WorkerProcess:
        # The second worker is another machine: its own data directory.
        return worker_process(
            bootstrap, repo_path, model_dir, work_dir, f"worker-{n}", app_id=app_id, partitions=partitions, env=topics.env()
        )

    ensure_topics(bootstrap, [topics.prediction_log], partitions)
    reader = TopicReader(
        bootstrap, topics.prediction_log, partitions=partitions, keep=lambda m: read_log(m.value())
    )
    reader.start()
    try:
        late_ids = _with_one_kill(bootstrap, topics, plan.schema.event_id, worker, reader, len(records), kill_at, log)
    finally:
        reader.stop()
    log_records = list(reader.records)
    seen = {str(r[plan.schema.event_id]) for r in log_records}
    if from_archive:
        archived = archive_topic(bootstrap, plan.schema.topic, work_dir / "archive", idle_s=3.0)
        log(f"{len(seen):,} events predicted, {len(late_ids):,} late; {archived:,} messages archived, "
            "offline in the archive's arrival order")
        report = compare_frame(plan, read_archive(work_dir / "archive", plan).frame, log_records, late_ids)
    else:
        log(f"{len(seen):,} events predicted, {len(late_ids):,} late; reading arrival order back from the topics")
        where = arrival_columns(bootstrap, plan, plan.schema.event_id, topics.repartitions)
        events = pd.DataFrame(records)
        events[plan.schema.timestamp_field] = pd.to_datetime(events[plan.schema.timestamp_field], utc=True, format="ISO8601")
        report = compare(plan, events, log_records, where, late_ids)
    report.restarts = 1
    report.seconds = time.perf_counter() - started
    return report


def _produce(bootstrap: str, plan: FeaturePlan, payloads: list[bytes], partitions: int) -> list[dict]:
    """Produce the events keyed by the partition key; the valid ones, parsed."""
    ensure_topics(bootstrap, [plan.schema.topic], partitions)
    validator = EventValidator(plan.schema, (plan.partition_key,))
    records = []
    producer = make_producer(bootstrap)
    for payload in payloads:
        event = orjson.loads(payload)
        producer.produce(plan.schema.topic, payload, str(event[plan.partition_key]).encode())
        if validator.validate(dict(event)) is None:
            records.append(event)
        if len(records) % 10000 == 0:
            producer.poll(0)
    producer.flush(60)
    return records


def _with_one_kill(bootstrap: str, topics: AppTopics, id_field: str, worker, reader: TopicReader, expected: int, kill_at: float, log):
    """Worker 1 until `kill_at` of the predictions, SIGKILL, worker 2 until every event is predicted or late.

    Returns the ids of the late events.
    """

    def seen() -> set[str]:
        return {str(r[id_field]) for r in reader.records}

    first = worker(1).start()
    try:
        first.wait_ready()
        deadline = time.monotonic() + 600
        while len(reader.records) < kill_at * expected and time.monotonic() < deadline:
            time.sleep(0.2)
        first.kill()
        log(f"killed worker 1 (SIGKILL) after {len(seen()):,} of {expected:,} predictions")
        second = worker(2).start()
        try:
            second.wait_ready()
            late_ids: set[str] = set()
            last_progress, last_n = time.monotonic(), len(reader.records)
            while time.monotonic() < deadline:
                time.sleep(0.5)
                if len(reader.records) != last_n:
                    last_progress, last_n = time.monotonic(), len(reader.records)
                done, quiet_s = seen(), time.monotonic() - last_progress
                # Late events get no prediction: once predictions pause, count the late ones too.
                if len(done) >= expected or quiet_s > 2:
                    late_ids = {
                        str(orjson.loads(m.value())[id_field])
                        for m in read_topic(bootstrap, topics.late, idle_s=1)
                    }
                    if len(done | late_ids) >= expected or quiet_s > 60:
                        break
            time.sleep(1.0)
        finally:
            second.stop()
    finally:
        first.stop()
    return late_ids
