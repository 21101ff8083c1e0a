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
from dataclasses import dataclass
from pathlib import Path

import orjson

from features.feast_repo import load_plan, open_store
from stream.pipeline.engine import Engine
from stream.kafka.clients import ensure_topics, warmed_producer
from stream.kafka.reader import TopicReader
from stream.tools.audit import ChaosReport, audit
from stream.tools.process import WorkerProcess, worker_process



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

    report = ChaosReport(events=len(messages))
    # When each prediction appears (wall clock), for the stall figure.
    watcher = TopicReader(
        bootstrap, topics["SLUICE_PREDICTIONS_TOPIC"], partitions=partitions, keep=lambda m: (m.key(), time.monotonic()),
        one_at_a_time=True,
    )
    # Hostile producers send messages past the usual 1 MB client limit.
    producer = warmed_producer(bootstrap, f"{app_id}-warmup", **{"message.max.bytes": 10_000_000})
    run = _Run(make, broker_pid, faults.pause_s, report, watcher, log)
    try:
        run.primary.start()
        while not run.primary.ready:
            run.primary.poll()
            time.sleep(0.05)
        watcher.start()
        schedule = _schedule(faults, duration_s, rng)
        log(f"streaming {len(messages):,} messages ({len(hostile)} hostile) at {rate:,.0f}/s for {duration_s:.0f} s; faults: "
            + ", ".join(f"{kind}@{at:.0f}s" for at, kind in schedule))
        started = time.monotonic()
        _stream(run, producer, events_topic, messages, rate, schedule)
        producer.flush(60)
        produced_at = time.monotonic()
        log(f"all {len(messages):,} messages produced in {produced_at - started:.0f} s; waiting for the workers to finish")
        run.wait_quiet(20.0)
    finally:
        run.stop()
    first_seen: dict[bytes, float] = {}
    for key, at in watcher.records:
        first_seen.setdefault(key, at)
    times = sorted(first_seen.values())
    # Stalls while events were still due: from the first prediction until the
    # last message was produced (the tail after it is only the drain).
    gaps = [b - a for a, b in itertools.pairwise(times) if a < produced_at]
    report.max_stall_s = max(gaps, default=0.0)
    report.restart_to_ready_s = max(run.primary.ready_s[1:], default=0.0)
    crashes = [c for slot in run.slots() for c in slot.crashes]
    report.worker_crashes = len(crashes)
    report.examples += crashes[:3]
    audit(bootstrap, plan, engine, topics, report)
    return report


class _Run:
    """The moving parts of one chaos run: its workers, the broker's pause, what the faults did."""

    def __init__(self, make, broker_pid: int | None, pause_s: float, report: ChaosReport, watcher, log):
        self.make, self.broker_pid, self.pause_s = make, broker_pid, pause_s
        self.report, self.watcher, self.log = report, watcher, log
        self.primary = _Slot(make, "worker-a")
        self.extras: list[_Slot] = []  # workers that joined and have not left yet
        self.left: list[_Slot] = []
        self.paused_until: float | None = None

    def running(self) -> list[_Slot]:
        return [self.primary, *self.extras]

    def slots(self) -> list[_Slot]:
        return [self.primary, *self.extras, *self.left]

    def poll(self) -> None:
        for slot in self.running():
            slot.poll()

    def ready(self) -> bool:
        return all(slot.ready for slot in self.running())

    def apply(self, kind: str, now: float, producer) -> None:
        report = self.report
        if kind == "kill":
            self.primary.kill()
            report.kills += 1
        elif kind == "join":
            self.extras.append(_Slot(self.make, f"worker-{chr(ord('b') + len(self.extras) + len(self.left))}"))
            self.extras[-1].start()
            report.rebalances += 1
        elif kind == "leave" and self.extras:
            self.extras[0].stop()
            self.left.append(self.extras.pop(0))
            report.rebalances += 1
        elif kind == "pause" and self.broker_pid:
            producer.flush(30)
            os.kill(self.broker_pid, signal.SIGSTOP)
            self.paused_until = now + self.pause_s
            report.broker_pauses += 1

    def resume_broker(self) -> None:
        if self.paused_until is not None and self.broker_pid:
            os.kill(self.broker_pid, signal.SIGCONT)
        self.paused_until = None

    def wait_quiet(self, idle_s: float) -> None:
        """Until no new prediction arrived for `idle_s`, keeping the workers supervised."""
        last, last_n = time.monotonic(), -1
        while time.monotonic() - last < idle_s:
            self.poll()
            if len(self.watcher.records) != last_n:
                last, last_n = time.monotonic(), len(self.watcher.records)
            time.sleep(0.5)

    def stop(self) -> None:
        self.resume_broker()
        for slot in self.running():
            slot.stop()
        self.watcher.stop()


def _stream(run: _Run, producer, topic: str, messages: list, rate: float, schedule: list[tuple[float, str]]) -> None:
    """Produce `messages` at `rate`/s and apply the scheduled faults on the way, one at a time."""
    started, sent = time.monotonic(), 0
    while sent < len(messages) or schedule or run.paused_until:
        now = time.monotonic() - started
        due = min(len(messages), int(now * rate) + 1)
        while sent < due:
            key, value = messages[sent]
            producer.produce(topic, value, key)
            sent += 1
            if sent % 500 == 0:
                producer.poll(0)
        if run.paused_until and now >= run.paused_until:
            run.resume_broker()
        # A fault waits until every worker holds its partitions: a kill
        # then lands while work is in flight, not during a restart.
        if schedule and schedule[0][0] <= now and not run.paused_until and run.ready():
            _, kind = schedule.pop(0)
            run.apply(kind, now, producer)
            run.log(f"  {now:6.1f} s: {kind} ({sent:,} sent, {len(run.watcher.records):,} predicted)")
        run.poll()
        time.sleep(0.005)
