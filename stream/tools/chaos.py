"""`sluice chaos`: a live-rate stream through real workers while faults happen, then an audit.

While events are produced at a fixed rate (not a backlog), workers are
SIGKILLed and restarted (as a supervisor would), a second worker joins and
leaves the group (rebalances), the broker is paused (SIGSTOP / SIGCONT), and
hostile messages are mixed in. Every fault lands while the stream still
flows: faults are spread over the stream minus a margin at its end, and
while faults are still due (a fault waits until every worker holds its
partitions) the producer keeps a reserve of messages that it sends at a
tenth of the rate, so a late fault never meets an idle pipeline. Afterwards every topic is read back and each
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
from stream.kafka.clients import ensure_topics, warmed_producer
from stream.tools import fault_figures
from stream.tools.audit import ChaosReport, audit
from stream.tools.fault_figures import Fault
from stream.tools.group_watch import GroupWatch
from stream.tools.process import WorkerProcess, run_topics, worker_process


@dataclass
class Faults:
    kills: int = 3
    rebalances: int = 2  # a second worker joins, later leaves (each join and each leave moves partitions)
    broker_pauses: int = 1
    pause_s: float = 3.0


#: After a fault, the commit sample taken this much later is what every events partition must move past (see _Run.recovered).
MARK_AFTER_S = 1.5


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


def _schedule(faults: Faults, duration_s: float, margin_s: float, rng: random.Random) -> list[tuple[float, str]]:
    """Fault moments, spread evenly (with jitter) from 10% of the stream to `margin_s` before its end; each join before its leave."""
    kinds = ["kill"] * faults.kills + ["broker_pause"] * faults.broker_pauses
    rng.shuffle(kinds)
    for _ in range(faults.rebalances):
        i = rng.randrange(len(kinds) + 1)
        kinds.insert(i, "join")
        kinds.insert(rng.randrange(i + 1, len(kinds) + 1), "leave")
    n = len(kinds)
    first, span = 0.1 * duration_s, max(duration_s - margin_s - 0.1 * duration_s, 0.0)
    return [(first + span * (i + rng.uniform(0.2, 0.8)) / n, kind) for i, kind in enumerate(kinds)]


def run_chaos(
    bootstrap: str,
    broker_pid: int | None,
    repo_path: Path,
    model_dir: Path,
    valid: list[bytes],
    hostile: list[tuple[int, bytes | None, bytes | None]],
    work_dir: Path,
    *,
    partitions: int = 4,
    rate: float = 2000.0,
    faults: Faults | None = None,
    seed: int = 7,
    app_id: str | None = None,
    worker_args: list[str] | None = None,
    margin_s: float | None = None,
    log=print,
) -> ChaosReport:
    """Stream `valid` (keyed by the partition key) with `hostile` mixed in, under faults; audit.

    `hostile` holds (index in `valid` to go before, key, value), in index
    order (`stream.tools.hostile.spread_corpus` places a corpus).

    The stream lasts len(messages) / rate seconds, longer if faults are late;
    no fault is scheduled in its last `margin_s` (default: 15%, at least 10 s
    and at most half the stream), so that the stall after each one is seen
    while events still flow.
    """
    faults = faults or Faults()
    rng = random.Random(seed)
    plan = load_plan(open_store(repo_path))
    app_id = app_id or f"chaos-{int(time.time() * 1000)}"
    topics = run_topics(plan, app_id)
    outputs = [topics.predictions, topics.prediction_log, topics.dlq, topics.late]
    ensure_topics(bootstrap, [*topics.repartitions, *outputs], partitions)

    messages: list[tuple[bytes | None, bytes | None]] = []
    pending = iter(hostile)
    upcoming = next(pending, None)
    for i, payload in enumerate([*valid, None]):
        while upcoming is not None and upcoming[0] <= i:
            messages.append(upcoming[1:])
            upcoming = next(pending, None)
        if payload is not None:
            messages.append((str(orjson.loads(payload)[plan.partition_key]).encode(), payload))
    duration_s = len(messages) / rate
    if margin_s is None:
        margin_s = min(max(10.0, 0.15 * duration_s), 0.5 * duration_s)

    def make(name: str, slot: str) -> WorkerProcess:
        # A restarted worker keeps its slot's data directory, as a pod keeps its volume.
        return worker_process(
            bootstrap, repo_path, model_dir, work_dir, name, app_id=app_id, partitions=partitions,
            env={**topics.env(), "SLUICE_DATA_DIR": str(work_dir / f"{slot}-data")}, extra_args=worker_args,
        )

    report = ChaosReport(events=len(messages))
    # Hostile producers send messages past the usual 1 MB client limit.
    producer = warmed_producer(bootstrap, f"{app_id}-warmup", **{"message.max.bytes": 10_000_000})
    watch = GroupWatch(bootstrap, app_id, topics.repartitions, outputs)
    run = _Run(make, broker_pid, faults.pause_s, report, watch, log)
    try:
        run.primary.start()
        while not run.primary.ready:
            run.primary.poll()
            time.sleep(0.05)
        watch.start()
        schedule = _schedule(faults, duration_s, margin_s, rng)
        log(f"streaming {len(messages):,} messages ({len(hostile)} hostile) at {rate:,.0f}/s for {duration_s:.0f} s; faults: "
            + ", ".join(f"{kind}@{at:.0f}s" for at, kind in schedule))
        started = time.monotonic()
        produced_ends = _stream(run, producer, topics.events, messages, rate, schedule, margin_s)
        producer.flush(60)
        produced_at = time.monotonic()
        flowing_until_ms = int(time.time() * 1000)
        log(f"all {len(messages):,} messages produced in {produced_at - started:.0f} s; waiting for the workers to finish")
        run.wait_done(produced_ends)
    finally:
        watch.stop()
        run.stop()
    report.restart_to_ready_s = max(run.primary.ready_s[1:], default=0.0)
    crashes = [c for slot in run.slots() for c in slot.crashes]
    report.worker_crashes = len(crashes)
    report.examples += crashes[:3]
    timeline = audit(bootstrap, plan, topics, report)
    _figures(report, run.faults, watch.samples, timeline, flowing_until_ms)
    return report


def _figures(report: ChaosReport, faults: list[Fault], samples: list, timeline, flowing_until_ms: int) -> None:
    # Stalls while events were still due: the tail after the last one was produced is only the drain.
    merged = sorted(t for times in timeline.predictions.values() for t in times)
    report.max_stall_s = max((b - a for a, b in itertools.pairwise(merged) if a < flowing_until_ms), default=0) / 1000
    fault_figures.stalls(faults, timeline, flowing_until_ms)
    fault_figures.replays(faults, samples, timeline)
    report.stall_s = fault_figures.stall_by_kind(faults)
    report.longest_gap_s = fault_figures.longest_gap_s(timeline, flowing_until_ms)
    report.commit_lag_max = max(fault_figures.commit_lags(samples, timeline), default=0)
    report.replayed_per_kill = [{"reread": f.reread, "duplicates": f.duplicates} for f in faults if f.kind == "kill"]
    report.faults = [f.line() for f in faults]


class _Run:
    """The moving parts of one chaos run: its workers, the broker's pause, what the faults did."""

    def __init__(self, make, broker_pid: int | None, pause_s: float, report: ChaosReport, watch: GroupWatch, log):
        self.make, self.broker_pid, self.pause_s = make, broker_pid, pause_s
        self.report, self.watch, self.log = report, watch, log
        self.primary = _Slot(make, "worker-a")
        self.extras: list[_Slot] = []  # workers that joined and have not left yet
        self.left: list[_Slot] = []
        self.paused_until: float | None = None
        self.faults: list[Fault] = []
        self.mark: dict[int, int] | None = {}  # committed offsets on the events topic once the last fault settled
        self.mark_after_ms = 0.0  # the mark is the first commit sample taken after this moment

    def running(self) -> list[_Slot]:
        return [self.primary, *self.extras]

    def slots(self) -> list[_Slot]:
        return [self.primary, *self.extras, *self.left]

    def poll(self) -> None:
        for slot in self.running():
            slot.poll()

    def ready(self) -> bool:
        return all(slot.ready for slot in self.running())

    def recovered(self) -> bool:
        """Every worker holds its partitions and every events partition moved on since the last fault,
        so that the next fault's stall is its own.

        The mark is the first sample of the committed offsets taken
        `MARK_AFTER_S` after the fault, not the last one before it: a killed
        worker's last commits (every 0.5 s) land after a sample up to a second
        old, and counted as the group moving on, they let a second kill hit
        its restarted process the moment it was assigned, before it predicted
        anything (one 23 s gap made of two kills).
        """
        if self.mark is None:
            self.mark = self.watch.committed_events_after(self.mark_after_ms)
            if self.mark is None:
                return False
        return self.ready() and self.watch.advanced_past(self.mark)

    def apply(self, kind: str, now: float, producer, sent: int) -> None:
        report = self.report
        at_ms = int(time.time() * 1000)
        if kind == "kill":
            self.primary.kill()
            report.kills += 1
        elif kind == "join":
            self.extras.append(_Slot(self.make, f"worker-{chr(ord('b') + len(self.extras) + len(self.left))}"))
            self.extras[-1].start()
            report.rebalances += 1
        elif kind == "leave" and self.extras:
            # Not waited for: the stream keeps flowing while the worker stops (reaped in `stop`).
            self.extras[0].proc.terminate()
            self.left.append(self.extras.pop(0))
            report.rebalances += 1
        elif kind == "broker_pause" and self.broker_pid:
            producer.flush(30)
            at_ms = int(time.time() * 1000)
            os.kill(self.broker_pid, signal.SIGSTOP)
            self.paused_until = now + self.pause_s
            report.broker_pauses += 1
        else:
            return
        self.faults.append(Fault(kind, at_ms, sent))
        self.settle_from(at_ms)

    def settle_from(self, at_ms: float) -> None:
        """The next fault waits for every events partition to move past the commits sampled after this one (at_ms)."""
        self.mark, self.mark_after_ms = None, at_ms + MARK_AFTER_S * 1000

    def resume_broker(self) -> None:
        if self.paused_until is not None and self.broker_pid:
            os.kill(self.broker_pid, signal.SIGCONT)
        self.paused_until = None

    def wait_done(self, produced_ends: dict[int, int], idle_s: float = 60.0, settled_s: float = 10.0) -> None:
        """Until the group has committed every produced message and nothing moved for `settled_s`, keeping the
        workers supervised; or, whatever was committed, until nothing moved for `idle_s` while every worker
        held its partitions (a stuck pipeline then shows as lost messages in the audit, not as a hang)."""
        busy_at = time.monotonic()  # the last moment a worker was still starting
        while True:
            self.poll()
            if not self.ready():
                busy_at = time.monotonic()
            quiet_s = time.monotonic() - max(self.watch.moved_at, busy_at)
            if quiet_s > idle_s or (self.watch.all_committed(produced_ends) and quiet_s > settled_s):
                return
            time.sleep(0.5)

    def stop(self) -> None:
        self.resume_broker()
        for slot in self.slots():
            slot.stop()


def _stream(
    run: _Run, producer, topic: str, messages: list, rate: float, schedule: list[tuple[float, str]], margin_s: float,
) -> dict[int, int]:
    """Produce `messages` at `rate`/s and apply the scheduled faults on the way, one at a time.

    While faults are due, a reserve of messages is kept (a tenth of the rate
    for the fault spacing, at least 15 s, per fault still due plus
    `margin_s`) and sent ever slower, down to 4/s, if the faults are late;
    after the last fault the stream flows at least `margin_s` more. Faults that the stream's end overtakes anyway are
    skipped (and counted), never applied to an idle pipeline. Returns, per
    partition, the offset after the last message delivered (filled in until
    the producer is flushed).
    """
    ends: dict[int, int] = {}

    def delivered(err, msg) -> None:
        if err is None:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    trickle = max(rate / 10, 20.0)
    spacing_s = (schedule[-1][0] / len(schedule)) if schedule else 0.0
    started, sent, credit, last_fault = time.monotonic(), 0, 1.0, None
    last = started
    while sent < len(messages) or run.paused_until:
        clock = time.monotonic()
        now = clock - started
        horizon_s = len(schedule) * max(spacing_s, 15.0) + margin_s if schedule else 0.0
        if not schedule and last_fault is not None:
            horizon_s = max(0.0, last_fault + margin_s - now)
        # Full rate while the reserve lasts; then what is left spread over the
        # time the due faults may still need (at least 15 s each: a restart
        # under load takes that long), so a late fault still meets a stream.
        left = len(messages) - sent
        speed = rate if left > trickle * horizon_s else max(left / horizon_s if horizon_s else rate, 4.0)
        # At most 0.1 s of credit at once: a fault that blocked the loop (a
        # kill waits for the process) must not turn into a burst.
        credit += speed * min(clock - last, 0.1)
        last = clock
        while sent < len(messages) and credit >= 1.0:
            key, value = messages[sent]
            producer.produce(topic, value, key, on_delivery=delivered)
            sent += 1
            credit -= 1.0
            if sent % 500 == 0:
                producer.poll(0)
        if run.paused_until and now >= run.paused_until:
            run.resume_broker()
        # A fault waits until every worker holds its partitions and the
        # stream moved on after the last one: a kill then lands while work
        # is in flight, not during a restart, and stalls do not overlap.
        if schedule and schedule[0][0] <= now and not run.paused_until and run.recovered() and sent < len(messages):
            _, kind = schedule.pop(0)
            run.apply(kind, now, producer, sent)
            last_fault = now
            run.log(f"  {now:6.1f} s: {kind} ({sent:,} sent)")
        run.poll()
        time.sleep(0.005)
    if schedule:
        run.report.faults_skipped = len(schedule)
        run.log(f"  the stream ended before {len(schedule)} fault(s): skipped ({', '.join(k for _, k in schedule)})")
    return ends
