"""`sluice bench`: Sluice, a naive per-event Faust service and a parse-only Faust
agent, side by side on the same events and the same model.

What is measured, and how:

* Throughput: the system's input topic is filled first (a backlog), then the
  system starts. Events/s is N over the time between the first and the N-th
  output, both read from the outputs' own Kafka timestamps (set when the
  system produced them), so the benchmark's reading speed does not count.
  "From ready" counts from when the system held its partitions instead.
* Latency: after the backlog, events are produced at fixed rates with the
  producer's CreateTime; latency is the output's Kafka timestamp minus the
  input's, per event id. One yardstick for all three systems.
* Peak RSS of the system's processes (children included), sampled every 0.2 s.
* Two Sluice workers in one consumer group on the same backlog.
* State memory per entity and offline feature speed, in this process.

Every system runs in its own processes, started the way production starts
them (`sluice worker` through WorkerProcess), so whatever the worker does
today is what gets measured.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
import psutil

from features.errors import SluiceError
from stream.kafka.clients import ensure_topics, make_consumer, make_producer, topic_partitions, warmed_producer
from stream.tools.process import WorkerProcess

if TYPE_CHECKING:
    import pandas as pd

#: Fixed end of the generated history, so runs are reproducible.
HISTORY_END = datetime(2026, 11, 1, tzinfo=UTC)
#: A rate run is saturated when latency grew over the run by more than
#: this, and by more than SATURATED_SHARE of the run's length (a queue that
#: grows that fast means capacity below ~83% of the offered rate). Smaller
#: trends are indistinguishable from fetch-wait jitter, which on the embedded
#: broker alone spans about a second.
SATURATED_GROWTH_MS = 1500.0
SATURATED_SHARE = 0.2
#: Rates this far above a system's backlog throughput are not attempted
#: (nor any rate above one that saturated it). Not 1: a backlog run includes
#: cold caches, and busier micro-batches can make a worker faster.
SKIP_FACTOR = 2.0

QUICK = {"events": 2000, "naive_events": 300, "rates": "1000", "rate_seconds": 3.0,
         "state_entities": 20_000, "offline_events": 20_000}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="measure Sluice against a naive Faust service and a parse-only Faust agent, same events and model"
    )
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers; default: start the embedded broker")
    p.add_argument("--repo", dest="repo_path", default="feature_repo", help="Feast repo whose definitions are used")
    p.add_argument("--events", type=int, default=200_000, help="backlog events for Sluice and the parse-only agent")
    p.add_argument("--naive-events", type=int, default=5_000, help="backlog events for the naive service (it is slow)")
    p.add_argument("--rates", default="1000,5000,20000", help="input rates (events/s) for the latency runs")
    p.add_argument("--rate-seconds", type=float, default=10.0, help="seconds per latency run")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--state-entities", type=int, default=1_000_000, help="entities for the state-memory measurement")
    p.add_argument("--offline-events", type=int, default=1_000_000, help="events for the offline-speed measurement")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work-dir", help="keep repos, models and worker logs here (default: a temp dir, removed)")
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes, one short rate (well under a minute)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    rates = sorted(int(float(r)) for r in str(args.rates).split(",") if r.strip())
    if not (Path(args.repo_path) / "feature_store.yaml").exists():
        msg = f"no Feast repo at {args.repo_path}: pass --repo (the demo's is feature_repo/)"
        raise SluiceError(msg)
    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work = Path(args.work_dir).resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-bench-")))
        bootstrap, broker_kind = args.bootstrap_servers, args.bootstrap_servers
        if bootstrap is None:
            from stream.kafka.broker import EmbeddedBroker

            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap_servers
            broker_kind = "embedded tansu"
        report = {"machine": machine(broker_kind), **_bench(args, rates, bootstrap, work)}
    print_table(report)
    print(json.dumps(report), flush=True)
    return 0


def _bench(args, rates: list[int], bootstrap: str, work: Path) -> dict:
    load = Workload.build(args, rates, work)
    bench = SystemBench(bootstrap, work, args.partitions, load, args.rate_seconds)
    report = {"config": load.describe(args, rates)}
    print("· broker floor: one produce -> consume hop at 1,000 events/s", flush=True)
    report["broker_hop"] = broker_hop_latency(bootstrap, rate=1000, seconds=min(5.0, max(2.0, args.rate_seconds)))
    # Both Sluice runs read the repo's topic while it holds only the backlog
    # (separate consumer groups, so each reads all of it); the single worker's
    # rate runs append to it afterwards, so the two-worker run goes first.
    two = bench.measure("two", bench.sluice_launcher(workers=2), load.backlog, [])
    report["sluice"] = bench.measure("sluice", bench.sluice_launcher(), load.backlog, rates)
    report["naive"] = bench.measure("naive", bench.faust_launcher("naive"), load.backlog[: args.naive_events], rates)
    report["faust_parse"] = bench.measure("parse", bench.faust_launcher("parse"), load.backlog, rates)
    report["two_workers"] = two
    report["two_workers"]["ratio_to_one"] = _ratio(report["two_workers"]["events_per_s"], report["sluice"]["events_per_s"])
    print(f"· state memory: {args.state_entities:,} entities", flush=True)
    report["state"] = measure_state(load.plan, args.state_entities, args.seed)
    print(f"· offline speed: {args.offline_events:,} events", flush=True)
    report["offline"] = measure_offline(load, args.offline_events)
    report["ratios"] = {
        "sluice_vs_faust_parse": _ratio(report["sluice"]["events_per_s"], report["faust_parse"]["events_per_s"]),
        "sluice_vs_naive": _ratio(report["sluice"]["events_per_s"], report["naive"]["events_per_s"]),
        "two_vs_one": report["two_workers"]["ratio_to_one"],
        "offline_vs_pandas": report["offline"]["speedup_vs_pandas"],
    }
    return report


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# -- the workload ------------------------------------------------------------


@dataclass
class Workload:
    """One prepared repo + model, and the events every system gets.

    `backlog` comes first in event time, `paced` (for the latency runs)
    after it, so a worker that read the backlog sees the paced events as
    new ones rather than as late ones.
    """

    prepared: object  # fraud_demo.prepare.Prepared
    plan: object  # features.spec.FeaturePlan
    backlog: list[tuple[bytes, bytes, bytes]]  # (key, value, event id)
    paced: list[tuple[bytes, bytes, bytes]]
    model: dict

    @classmethod
    def build(cls, args, rates: list[int], work: Path) -> Workload:
        from features.feast_repo import load_plan, open_store
        from fraud_demo.generator import DemoConfig, event_stream, generate_transactions
        from fraud_demo.prepare import prepare

        paced_n = int(sum(r * args.rate_seconds for r in rates))
        n_cards = max(500, args.events // 4)
        cfg = DemoConfig(
            seed=args.seed, n_cards=n_cards, n_merchants=max(50, n_cards // 20), legit_label_delay=timedelta(hours=12)
        )
        t = _step(f"preparing a demo repo ({n_cards:,} cards, 2 days of history) and a 200-tree model")
        prepared = prepare(
            Path(args.repo_path), work, cfg, history_days=2, history_end=HISTORY_END, topic=f"bench-{_run_id()}-sluice",
            trees=200,
        )
        _done(t, f"model {prepared.trained.version}, validation AUC {prepared.trained.validation_auc:.3f}")
        t = _step(f"generating {args.events + paced_n:,} live events")
        total = args.events + paced_n
        days = total / (n_cards * cfg.txns_per_card_per_day) * 1.2 + 0.1
        live, _ = generate_transactions(prepared.world, cfg, HISTORY_END, HISTORY_END + timedelta(days=days), id_prefix="b")
        live = live.iloc[:total]
        events = [_keyed(p) for p in event_stream(live)]
        _done(t)
        plan = load_plan(open_store(prepared.path))
        return cls(prepared, plan, events[: args.events], events[args.events :], model_info(prepared.model_dir))

    def describe(self, args, rates: list[int]) -> dict:
        return {
            "events": len(self.backlog),
            "naive_events": min(args.naive_events, len(self.backlog)),
            "rates": rates,
            "rate_seconds": args.rate_seconds,
            "partitions": args.partitions,
            "cards": self.prepared.cfg.n_cards,
            "model": self.model,
            "quick": bool(args.quick),
        }


def _keyed(payload: bytes) -> tuple[bytes, bytes, bytes]:
    event = orjson.loads(payload)
    return str(event["card_id"]).encode(), payload, str(event["transaction_id"]).encode()


def model_info(model_dir: Path) -> dict:
    from stream.serving.model import load_model

    model = load_model(model_dir)
    trees = model.booster.dump_model()["tree_info"]
    return {
        "version": model.version,
        "trees": model.booster.num_trees(),
        "num_leaves": int(model.meta["params"]["num_leaves"]),
        "max_leaves_in_a_tree": max(t["num_leaves"] for t in trees),
        "features": len(model.features),
        "validation_auc": round(float(model.meta["validation_auc"]), 4),
    }


# -- processes, outputs, memory ---------------------------------------------


class ModuleProcess(WorkerProcess):
    """WorkerProcess for another module's command line (the Faust baselines).

    Same environment, log handling, readiness file and stopping as the
    Sluice worker, so all systems are started and waited for alike.
    """

    def __init__(self, module: str, args: list[str], log_path: Path, ready_file: Path, env: dict | None = None):
        super().__init__(args, log_path, ready_file, env)
        self.module = module

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


class OutputReader(threading.Thread):
    """Reads an output topic from the start, keeping (key, Kafka timestamp ms) only.

    Values are not parsed: reading costs the benchmark process almost no CPU
    while the system under test runs on the same machine.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        super().__init__(daemon=True)
        from confluent_kafka import TopicPartition

        self.consumer = make_consumer(
            bootstrap, **{"group.id": f"bench-reader-{uuid.uuid4().hex}", "enable.auto.commit": False, "fetch.wait.max.ms": 50}
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.records: list[tuple[bytes, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                for msg in self.consumer.consume(10_000, timeout=0.1):
                    if not msg.error():
                        self.records.append((msg.key(), msg.timestamp()[1]))
        finally:
            self.consumer.close()

    def wait_for(self, count: int, *, idle_s: float, limit_s: float) -> bool:
        """Until `count` records were read; False after `idle_s` without progress or `limit_s` overall."""
        deadline, last_n, last_t = time.monotonic() + limit_s, -1, time.monotonic()
        while len(self.records) < count:
            now = time.monotonic()
            if len(self.records) != last_n:
                last_n, last_t = len(self.records), now
            if now - last_t > idle_s or now > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


class RssMonitor(threading.Thread):
    """Peak resident memory of some processes and their children, sampled every 0.2 s."""

    def __init__(self, pids: list[int]):
        super().__init__(daemon=True)
        self.procs = [psutil.Process(pid) for pid in pids]
        self.peak_total = 0
        self.peak_each = [0] * len(pids)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            each = [_tree_rss(p) for p in self.procs]
            self.peak_each = [max(a, b) for a, b in zip(self.peak_each, each)]
            self.peak_total = max(self.peak_total, sum(each))
            self._halt.wait(0.2)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the processes have used so far."""
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    except psutil.Error:  # the process is gone
        pass
    return total


def stop_all(procs: list[WorkerProcess]) -> None:
    """Stop processes side by side: each may take seconds to shut down cleanly."""
    threads = [threading.Thread(target=p.stop) for p in procs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def produce_all(bootstrap: str, topic: str, events: list[tuple[bytes, bytes, bytes]]) -> None:
    producer = make_producer(bootstrap)
    for i, (key, value, _) in enumerate(events):
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        msg = f"could not produce the backlog to {topic}"
        raise SluiceError(msg)


# -- one system ---------------------------------------------------------------


class SystemBench:
    """Runs one system against fresh topics: backlog throughput, then rate runs."""

    def __init__(self, bootstrap: str, work: Path, partitions: int, load: Workload, rate_seconds: float):
        self.bootstrap = bootstrap
        self.work = work
        self.partitions = partitions
        self.load = load
        self.rate_seconds = rate_seconds
        self.run_id = _run_id()
        self.filled: set[str] = set()  # input topics that already hold their backlog

    def topic(self, system: str) -> str:
        """The input topic of a system; Sluice's comes from its repo's KafkaSource."""
        if system in ("sluice", "two"):
            return self.load.plan.schema.topic
        return f"bench-{self.run_id}-{system}"

    def sluice_launcher(self, workers: int = 1):
        def launch(name: str, output: str, app_id: str) -> list[WorkerProcess]:
            args = [
                "--bootstrap-servers", self.bootstrap,
                "--repo", str(self.load.prepared.path),
                "--model-dir", str(self.load.prepared.model_dir),
                "--partitions", str(self.partitions),
                "--metrics-port", "0",
                "--app-id", app_id,
            ]
            env = {
                "SLUICE_PREDICTIONS_TOPIC": output,
                "SLUICE_PREDICTION_LOG_TOPIC": f"{output}.log",
            }
            # One data directory per worker process (RocksDB locks its files).
            return [
                WorkerProcess(
                    args, self.work / f"{name}-{i}.log", self.work / f"{name}-{i}.ready",
                    {**env, "SLUICE_DATA_DIR": str(self.work / f"data-{name}-{i}")},
                ).start()
                for i in range(workers)
            ]

        return launch

    def faust_launcher(self, mode: str):
        def launch(name: str, output: str, app_id: str) -> list[WorkerProcess]:
            args = [
                "--mode", mode,
                "--bootstrap-servers", self.bootstrap,
                "--topic", self.topic(name),
                "--output", output,
                "--app-id", app_id,
                "--partitions", str(self.partitions),
                "--data-dir", str(self.work / "data"),
                "--repo", str(self.load.prepared.path),
                "--model-dir", str(self.load.prepared.model_dir),
            ]
            return [ModuleProcess("stream.tools.bench.naive", args, self.work / f"{name}.log", self.work / f"{name}.ready").start()]

        return launch

    def measure(self, name: str, launch, backlog: list, rates: list[int]) -> dict:
        source, output, app_id = self.topic(name), f"bench-{self.run_id}-{name}-out", f"bench-{self.run_id}-{name}"
        ensure_topics(self.bootstrap, [source, output], self.partitions)
        t = _step(f"{name}: {len(backlog):,} events as a backlog, then starting the system")
        if source not in self.filled:
            produce_all(self.bootstrap, source, backlog)
            self.filled.add(source)
        with contextlib.ExitStack() as stack:
            reader = OutputReader(self.bootstrap, output, topic_partitions(self.bootstrap, output))
            reader.start()
            stack.callback(reader.stop)
            procs = launch(name, output, app_id)
            for proc in procs:
                stack.callback(proc.stop)
            monitor = RssMonitor([p.pid for p in procs])
            monitor.start()
            stack.callback(monitor.stop)
            for proc in procs:
                proc.wait_ready(timeout_s=180)
            ready_ms = min(_ready_ms(procs))
            cpu_before, wall_before = monitor.cpu_seconds(), time.monotonic()
            done = reader.wait_for(len(backlog), idle_s=60, limit_s=60 + len(backlog) / 200)
            busy = (monitor.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
            # Read again after the backlog: a worker rewrites its ready file on every rebalance.
            settled_ms = max(_ready_ms(procs))
            stamps = [ts for _, ts in reader.records[: len(backlog)]]
            result = backlog_throughput(stamps, len(backlog), ready_ms, settled_ms if len(procs) > 1 else None, done)
            # Cores the system kept busy on the backlog: near 1 per process means
            # CPU-bound, much less means it waits (on the broker, mostly).
            result["cpu_cores_busy"] = round(busy, 2)
            _done(t, f"{result['events_per_s']:,.0f} events/s" if result["events_per_s"] else "incomplete")
            result["latency"] = self.rate_runs(name, source, reader, rates, result["events_per_s"])
            stop_all(procs)
            monitor.stop()
        result["peak_rss_mb"] = round(monitor.peak_total / 2**20, 1)
        if len(procs) > 1:
            result["peak_rss_mb_each"] = [round(b / 2**20, 1) for b in monitor.peak_each]
        return result

    def rate_runs(self, name: str, source: str, reader: OutputReader, rates: list[int], max_eps: float | None) -> dict:
        out: dict[str, dict] = {}
        # Every system gets the same paced events, from the first one on.
        pos, ceiling, saturated = 0, max_eps or 0.0, False
        producer = warmed_producer(self.bootstrap, f"{source}.warmup")
        for rate in rates:
            if saturated or rate > SKIP_FACTOR * ceiling:
                reason = "saturated at a lower rate" if saturated else f"above {SKIP_FACTOR:g}x its backlog throughput"
                out[str(rate)] = {"saturated": True, "skipped": True, "reason": reason,
                                  "achieved_events_per_s": round(ceiling, 1)}
                continue
            n = int(rate * self.rate_seconds)
            events = self.load.paced[pos : pos + n]
            pos += n
            t = _step(f"{name}: {rate:,} events/s for {self.rate_seconds:g} s")
            phase = rate_run(producer, source, reader, events, rate)
            _done(t, _phase_text(phase))
            out[str(rate)] = phase
            if phase["saturated"]:
                saturated, ceiling = True, phase["output_events_per_s"]
        producer.flush(10)
        return out


def _ready_ms(procs: list[WorkerProcess]) -> list[float]:
    return [p.ready_file.stat().st_mtime * 1000 for p in procs]


def backlog_throughput(stamps: list[int], n: int, ready_ms: float, settled_ms: float | None, complete: bool) -> dict:
    """Events/s from the outputs' Kafka timestamps: first to last, and from ready.

    With several workers (`settled_ms` given), the group may still have been
    rebalancing when the first worker began on the backlog: workers start at
    slightly different speeds. Then `events_per_s` is the rate from the end
    of the last rebalance (`settled_ms`) to the last output: what the workers
    manage together.
    """
    if not stamps:
        return {"events": n, "outputs": 0, "complete": False, "events_per_s": None, "events_per_s_from_ready": None}
    ts = np.asarray(stamps, dtype=np.int64)
    first, last = int(ts.min()), int(ts.max())
    span_s = max(last - first, 1) / 1000
    result = {
        "events": n,
        "outputs": len(ts),
        "complete": complete,
        "seconds": round(span_s, 3),
        "events_per_s": round(len(ts) / span_s, 1),
        "events_per_s_from_ready": round(len(ts) / max((last - ready_ms) / 1000, 1e-3), 1),
    }
    if settled_ms is not None:
        after = int((ts >= settled_ms).sum())
        result["rebalanced_during_run"] = bool(settled_ms > first)
        if settled_ms > first and after:
            result["events_per_s_first_to_last"] = result["events_per_s"]
            result["outputs_after_rebalance"] = after
            result["events_per_s"] = round(after / max((last - settled_ms) / 1000, 1e-3), 1)
    return result


def broker_hop_latency(bootstrap: str, rate: int, seconds: float) -> dict:
    """What the broker alone adds per hop: produce -> consume latency, no worker in between.

    Every system here crosses the broker at least twice (events in, outputs
    out; Sluice's two stages cross it three times), so this floor is part of
    every latency figure. Consumer fetch wait 10 ms, producer linger 0.
    """
    from confluent_kafka import TopicPartition

    topic = f"bench-{_run_id()}-hop"
    ensure_topics(bootstrap, [topic], 1)
    producer = warmed_producer(bootstrap, topic, **{"linger.ms": 0})  # the warm-up record is offset 0
    consumer = make_consumer(bootstrap, **{"group.id": topic, "fetch.wait.max.ms": 10})
    consumer.assign([TopicPartition(topic, 0, 1)])
    latencies: list[float] = []
    done = threading.Event()

    def read() -> None:
        # One message per poll: `consume(n, timeout)` would hold what arrived
        # until n messages or the timeout, and that wait would count as latency.
        while not done.is_set():
            msg = consumer.poll(0.05)
            if msg is not None and not msg.error():
                latencies.append(time.time() * 1000 - msg.timestamp()[1])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    n = int(rate * seconds)
    started = time.perf_counter()
    for i in range(n):
        ahead = started + i / rate - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)
        producer.produce(topic, b"x" * 200)
        producer.poll(0)
    producer.flush(30)
    deadline = time.monotonic() + 10
    while len(latencies) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    reader.join(timeout=5)
    consumer.close()
    if not latencies:
        return {"rate": rate, "messages": n, "received": 0}
    p50, p99, p999 = np.percentile(latencies, [50, 99, 99.9])
    return {"rate": rate, "messages": n, "received": len(latencies),
            "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1), "p999_ms": round(float(p999), 1)}


def rate_run(producer, topic: str, reader: OutputReader, events: list, rate: int) -> dict:
    """Produce `events` at `rate`/s, wait for their outputs, report latency per event id."""
    mark = len(reader.records)
    sent_at: dict[bytes, int] = {}
    started = time.perf_counter()
    for i, (key, value, event_id) in enumerate(events):
        ahead = started + i / rate - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)
        stamp = int(time.time() * 1000)
        producer.produce(topic, value, key, timestamp=stamp)
        sent_at[event_id] = stamp
        if i % 256 == 0:
            producer.poll(0)
    producer.flush(30)
    send_s = time.perf_counter() - started
    # A system that keeps up finishes within moments; one that does not is
    # given a bounded grace period, then called saturated.
    grace = max(3.0, 0.5 * len(events) / rate)
    reader.wait_for(mark + len(events), idle_s=grace, limit_s=grace)
    outputs = [(sent_at[k], ts) for k, ts in reader.records[mark:] if k in sent_at]
    return phase_stats(rate, len(events), send_s, outputs)


def phase_stats(rate: int, n: int, send_s: float, outputs: list[tuple[int, int]]) -> dict:
    """Latency percentiles of one rate run, and whether the system kept up.

    A system that keeps up has the same latency at the end of a run as at
    its start; one that does not builds a queue, and its latency grows by
    (rate / capacity - 1) ms per ms of run. The trend of latency over send
    time says which, and stays meaningful when latency itself is high: on
    brokers that hold fetches for the consumer's whole fetch wait, a system
    that keeps up can sit near a second.
    """
    if not outputs:
        return {"rate": rate, "events": n, "outputs": 0, "saturated": True, "output_events_per_s": 0.0,
                "input_events_per_s": round(n / send_s, 1)}
    sent = np.array([s for s, _ in outputs], dtype=np.int64)
    done = np.array([d for _, d in outputs], dtype=np.int64)
    latency = (done - sent).astype(np.float64)
    span_ms = float(np.ptp(sent))
    slope = float(np.polyfit((sent - sent.min()).astype(np.float64), latency, 1)[0]) if span_ms > 0 else 0.0
    growth_ms = slope * span_ms  # fitted latency at the run's end minus at its start
    return {
        "rate": rate,
        "events": n,
        "outputs": len(outputs),
        "input_events_per_s": round(n / send_s, 1),
        "output_events_per_s": round(len(outputs) / (max(int(done.max() - done.min()), 1) / 1000), 1),
        "p50_ms": round(float(np.percentile(latency, 50)), 2),
        "p99_ms": round(float(np.percentile(latency, 99)), 2),
        "p999_ms": round(float(np.percentile(latency, 99.9)), 2),
        "max_ms": round(float(latency.max()), 2),
        "latency_growth_ms": round(growth_ms, 1),
        "saturated": len(outputs) < n or growth_ms > max(SATURATED_GROWTH_MS, SATURATED_SHARE * span_ms),
    }


def _phase_text(phase: dict) -> str:
    if not phase.get("outputs"):
        return "no outputs: saturated"
    state = "SATURATED" if phase["saturated"] else "sustained"
    return f"{state}: p50 {phase['p50_ms']:.1f} ms, p99 {phase['p99_ms']:.1f} ms, out {phase['output_events_per_s']:,.0f}/s"


def _run_id() -> str:
    return f"{int(time.time()) % 10**6}{uuid.uuid4().hex[:4]}"


# -- state memory ---------------------------------------------------------------


def measure_state(plan, n_entities: int, seed: int, batch: int = 10_000) -> dict:
    """Bytes of window state per active card, fed through the worker's own aggregators.

    Every card gets two events within 12 hours, so at the end each one is
    active in every window the demo declares (the longest exact one is 24 h).
    Each stage gets its own dict, as each stage has its own Faust table.
    """
    from features.online import StageAggregator

    started = time.perf_counter()
    events = synthetic_events(n_entities, seed)
    stages = range(len(plan.stages()))
    aggregators = [StageAggregator(plan, s) for s in stages]
    # One small batch through throwaway aggregators and tables first, so lazy
    # imports and first-use allocations are not counted as state.
    feed([StageAggregator(plan, s) for s in stages], [{} for _ in stages], events.take(np.arange(min(batch, len(events)))))
    tables: list[dict[str, bytes]] = [{} for _ in stages]
    rss_before = _live_rss()
    for lo in range(0, len(events), batch):
        feed(aggregators, tables, events.take(np.arange(lo, min(lo + batch, len(events)))))
    # The aggregators' own caches are not table state; `events` stays alive,
    # as it was when measuring before.
    del aggregators
    rss_after = _live_rss()
    return state_report(tables, n_entities, rss_after - rss_before, time.perf_counter() - started)


def _live_rss() -> int:
    """Resident memory after collecting garbage and handing freed heap pages back to the OS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss


def feed(aggregators: list, tables: list[dict[str, bytes]], columns) -> None:
    """One micro-batch through every stage, storing the writes as the worker does."""
    first = aggregators[0].process(tables[0], 0, columns)
    tables[0].update(first.writes)
    # Later stages get what the first forwards: (partition, offset, watermark).
    sources = np.column_stack([np.zeros(len(columns), np.int64), columns.seq, first.watermark])
    for stage in range(1, len(aggregators)):
        result = aggregators[stage].process(tables[stage], 0, columns, sources=sources, n_sources=1)
        tables[stage].update(result.writes)


def synthetic_events(n_entities: int, seed: int, span_ms: int = 12 * 3_600_000):
    """2 events per card, cards in random order, event times in order over `span_ms`."""
    from features.columns import EventColumns

    rng = np.random.default_rng(seed)
    n = 2 * n_entities
    card_ids = np.array([f"card-{i:07d}" for i in range(n_entities)], dtype=object)
    merchant_ids = np.array([f"m-{i:05d}" for i in range(max(50, n_entities // 400))], dtype=object)
    countries = np.array(["US", "GB", "DE", "FR", "CA", "MX"], dtype=object)
    start = int(HISTORY_END.timestamp() * 1000)
    fields = {
        "card_id": card_ids[rng.permutation(np.repeat(np.arange(n_entities), 2))],
        "merchant_id": merchant_ids[rng.integers(0, len(merchant_ids), n)],
        "amount": np.round(rng.lognormal(3.5, 0.8, n), 2),
        "country": countries[rng.choice(len(countries), n, p=[0.8, 0.05, 0.05, 0.04, 0.04, 0.02])],
    }
    ts = start + np.sort(rng.integers(0, span_ms, n)).astype(np.int64)
    return EventColumns(ts, np.arange(n, dtype=np.int64), fields)


def state_report(tables: list[dict[str, bytes]], n_entities: int, rss_delta: int, seconds: float) -> dict:
    """Three views of the same state, per card: serialized bytes (what a changelog
    or a RocksDB store holds), Python objects (what Faust's in-memory table
    holds), and the process's RSS growth (the objects plus allocator slack)."""
    per_view: dict[str, dict] = {}
    payload = python = 0
    for table in tables:
        for key, value in table.items():
            if key.startswith("\x00"):  # per-partition bookkeeping, not per entity
                continue
            # The worker's Faust table holds the key as UTF-8 bytes.
            key_bytes = key.encode()
            view = per_view.setdefault(key.split("/", 1)[0], {"entries": 0, "bytes": 0})
            view["entries"] += 1
            view["bytes"] += len(key_bytes) + len(value)
            payload += len(key_bytes) + len(value)
            python += sys.getsizeof(key_bytes) + sys.getsizeof(value)
        python += sys.getsizeof(table)  # the hash table itself
    for view in per_view.values():
        view["bytes_per_entry"] = round(view["bytes"] / max(view["entries"], 1), 1)
    return {
        "entities": n_entities,
        "events": 2 * n_entities,
        "bytes_per_entity": round(payload / n_entities, 1),
        "python_bytes_per_entity": round(python / n_entities, 1),
        "rss_bytes_per_entity": round(rss_delta / n_entities, 1),
        "per_view": per_view,
        "seconds": round(seconds, 1),
    }


# -- offline speed -------------------------------------------------------------


def measure_offline(load: Workload, n_events: int) -> dict:
    """compute_features against a plain pandas rolling-window implementation."""
    from features.offline import compute_features

    history = offline_history(load, n_events)
    plan = load.plan
    view = next(v for v in plan.stream_views if v.join_keys == (plan.partition_key,) and not any(a.hopping for a in v.aggs))
    # The same single view for both sides: a like-for-like comparison.
    one_view = replace(plan, stream_views=(view,), batch_views=(), vector=tuple(f"{view.name}__{a.name}" for a in view.aggs))
    t = time.perf_counter()
    compute_features(plan, history)
    full_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = compute_features(one_view, history).frame
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    theirs = pandas_rolling_features(view, history, plan.schema.timestamp_field)
    pandas_s = time.perf_counter() - t
    n = len(history)
    return {
        "events": n,
        "view": view.name,
        "features": len(view.aggs),
        "compute_features_all_views_s": round(full_s, 2),
        "compute_features_all_views_events_per_s": round(n / full_s, 1),
        "compute_features_s": round(ours_s, 2),
        "compute_features_events_per_s": round(n / ours_s, 1),
        "pandas_s": round(pandas_s, 2),
        "pandas_events_per_s": round(n / pandas_s, 1),
        "speedup_vs_pandas": round(pandas_s / ours_s, 2),
        **compare_frames(ours, theirs),
    }


def offline_history(load: Workload, n_events: int) -> pd.DataFrame:
    from fraud_demo.generator import generate_transactions

    cfg = load.prepared.cfg
    days = n_events / (cfg.n_cards * cfg.txns_per_card_per_day) * 1.2 + 0.1
    start = HISTORY_END - timedelta(days=days)
    history, _ = generate_transactions(load.prepared.world, cfg, start, HISTORY_END, id_prefix="o")
    return history.iloc[-n_events:].reset_index(drop=True)


def pandas_rolling_features(view, events: pd.DataFrame, time_field: str) -> pd.DataFrame:
    """The obvious pandas version: per entity, time-based rolling windows.

    closed="left" makes the window [t - w, t): the event itself and events
    at the very same time are outside, as in Sluice. Empty windows are NaN in
    pandas; count, sum and count_distinct are 0 there in Sluice.
    """
    import pandas as pd

    key = view.join_keys[0]
    frame = events.sort_values([key, time_field], kind="stable")
    # Rolling windows take numbers only: distinct counts run on value codes.
    for column in {a.column for a in view.aggs if a.function == "count_distinct"}:
        frame[f"{column}__code"] = pd.factorize(frame[column])[0].astype(np.float64)
    grouped = frame.groupby(key, sort=True)
    out = {}
    for window in sorted({a.window_ms for a in view.aggs}):
        rolling = grouped.rolling(pd.Timedelta(milliseconds=window), on=time_field, closed="left")
        for agg in (a for a in view.aggs if a.window_ms == window):
            if agg.function == "count_distinct":
                values = rolling[f"{agg.column}__code"].apply(_count_distinct, raw=True)
            else:
                values = getattr(rolling[agg.column], agg.function)()
            if agg.function in ("count", "sum", "count_distinct"):
                values = values.fillna(0.0)
            # Groups come out in sorted key order, rows in frame order: the
            # order `frame` already has, so positions line up.
            out[f"{view.name}__{agg.name}"] = values.to_numpy()
    return pd.DataFrame(out, index=frame.index).reindex(events.index)


def _count_distinct(window: np.ndarray) -> float:
    return float(len(np.unique(window)))


def compare_frames(ours: pd.DataFrame, theirs: pd.DataFrame) -> dict:
    max_abs = max_rel = 0.0
    worst, nan_mismatch = None, 0
    for name in ours.columns:
        a, b = ours[name].to_numpy(np.float64), theirs[name].to_numpy(np.float64)
        both = ~np.isnan(a) & ~np.isnan(b)
        nan_mismatch += int((np.isnan(a) != np.isnan(b)).sum())
        diff = np.abs(a[both] - b[both])
        if len(diff):
            max_abs = max(max_abs, float(diff.max()))
            rel = float((diff / np.maximum(np.abs(a[both]), 1e-12)).max())
            if rel > max_rel:
                max_rel, worst = rel, name
    return {"compared_rows": len(ours), "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "max_rel_diff_feature": worst, "nan_mismatches": nan_mismatch}


# -- report --------------------------------------------------------------------


def machine(broker: str) -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "broker": broker,
    }


SYSTEMS = (("sluice", "sluice"), ("two_workers", "sluice x2 workers"), ("faust_parse", "faust parse-only"),
           ("naive", "naive per-event"))


def print_table(r: dict) -> None:
    m, cfg = r["machine"], r["config"]
    print("\n=== sluice bench ===")
    print(f"machine  {m['platform']}, {m['cpus']} CPUs, {m['memory_gb']} GB, Python {m['python']}, broker {m['broker']}")
    mod = cfg["model"]
    print(f"model    {mod['version']}: {mod['trees']} trees, {mod['num_leaves']} leaves, {mod['features']} features "
          f"(AUC {mod['validation_auc']}); {cfg['cards']:,} cards, {cfg['partitions']} partitions")
    print("\nthroughput: a backlog read at full speed (first to last output)")
    print(f"  {'system':<20}{'events':>9}{'events/s':>11}{'from ready':>12}{'peak RSS MB':>13}{'CPU cores':>11}")
    for key, label in SYSTEMS:
        s = r[key]
        print(f"  {label:<20}{s['events']:>9,}{_num(s['events_per_s']):>11}{_num(s['events_per_s_from_ready']):>12}"
              f"{s['peak_rss_mb']:>13,.0f}{s.get('cpu_cores_busy', 0):>11.2f}")
        if "events_per_s_first_to_last" in s:
            print(f"  {'':<20}(the group rebalanced mid-run: rate after it, over {s['outputs_after_rebalance']:,} "
                  f"outputs; first to last {_num(s['events_per_s_first_to_last'])}/s)")
    print("\nlatency: event produced -> output produced (Kafka timestamps), ms")
    print(f"  {'system':<20}{'rate/s':>8}{'p50':>9}{'p99':>9}{'p99.9':>9}{'in/s':>9}{'out/s':>9}  verdict")
    hop = r.get("broker_hop", {})
    if "p50_ms" in hop:
        print(f"  {'broker, one hop':<20}{hop['rate']:>8,}{_ms(hop['p50_ms']):>9}{_ms(hop['p99_ms']):>9}{_ms(hop['p999_ms']):>9}"
              f"  (produce -> consume, nothing in between: paid once per hop)")
    for key, label in SYSTEMS:
        for rate, ph in r[key].get("latency", {}).items():
            if ph.get("skipped"):
                print(f"  {label:<20}{int(rate):>8,}{'-':>9}{'-':>9}{'-':>9}{'-':>9}{_num(ph['achieved_events_per_s']):>9}"
                      f"  saturated (not attempted: {ph['reason']})")
                continue
            verdict = "SATURATED" if ph["saturated"] else "sustained"
            print(f"  {label:<20}{int(rate):>8,}{_ms(ph.get('p50_ms')):>9}{_ms(ph.get('p99_ms')):>9}"
                  f"{_ms(ph.get('p999_ms')):>9}{_num(ph['input_events_per_s']):>9}{_num(ph['output_events_per_s']):>9}"
                  f"  {verdict}")
    st = r["state"]
    print(f"\nstate    {st['entities']:,} cards x 2 events: {st['bytes_per_entity']:,.0f} bytes/card serialized, "
          f"{st['python_bytes_per_entity']:,.0f} as Python objects, {st['rss_bytes_per_entity']:,.0f} RSS delta")
    for name, view in st["per_view"].items():
        print(f"         {name:<20} {view['entries']:>10,} entries, {view['bytes_per_entry']:,.0f} bytes each")
    off = r["offline"]
    print(f"offline  {off['events']:,} events, {off['view']} ({off['features']} features): compute_features "
          f"{_num(off['compute_features_events_per_s'])}/s, pandas rolling {_num(off['pandas_events_per_s'])}/s "
          f"-> {off['speedup_vs_pandas']}x; all views {_num(off['compute_features_all_views_events_per_s'])}/s")
    print(f"         agreement: max abs diff {off['max_abs_diff']:.3g}, max rel diff {off['max_rel_diff']:.3g} "
          f"({off['max_rel_diff_feature']}), {off['nan_mismatches']} NaN mismatches over {off['compared_rows']:,} rows")
    ratios = ", ".join(f"{k} {v}" for k, v in r["ratios"].items())
    print(f"ratios   {ratios}\n", flush=True)


def _num(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(value) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _step(text: str) -> float:
    print(f"· {text}", flush=True)
    return time.perf_counter()


def _done(started: float, extra: str = "") -> None:
    print(f"  done in {time.perf_counter() - started:.1f} s{(' — ' + extra) if extra else ''}", flush=True)
