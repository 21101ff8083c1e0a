"""One system under test at a time: start it on a backlog, then at paced rates; read its outputs back."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from stream.kafka.clients import ensure_topics, make_producer, topic_partitions, warmed_producer
from stream.kafka.reader import TopicReader
from features.errors import SluiceError
from stream.tools.bench.latency import phase_text, rate_run, run_id
from stream.tools.bench.report import done, step
from stream.tools.process import WorkerProcess, worker_process

#: Rates this far above a system's backlog throughput are not attempted
#: (nor any rate above one that saturated it). Not 1: a backlog run includes
#: cold caches, and busier micro-batches can make a worker faster.
SKIP_FACTOR = 2.0


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
        return sum(cpu_of(proc) or 0.0 for proc in self.procs)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def cpu_of(proc: psutil.Process | None) -> float | None:
    """CPU time (user + system) `proc` has used so far; None without a process or once it is gone."""
    if proc is None:
        return None
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


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

    def __init__(self, bootstrap: str, work: Path, partitions: int, load, rate_seconds: float, broker_pid: int | None = None,
                 input_linger_ms: float | None = None):
        self.bootstrap = bootstrap
        # The paced events' producer: its linger is inside every latency figure
        # (each event's latency counts from its produce call); None keeps the
        # producers' default.
        self.input_config = {} if input_linger_ms is None else {"linger.ms": input_linger_ms}
        # The embedded broker shares the machine's cores with the system: its
        # CPU during each rate run is reported beside the system's.
        self.broker = psutil.Process(broker_pid) if broker_pid else None
        self.work = work
        self.partitions = partitions
        self.load = load
        self.rate_seconds = rate_seconds
        self.run_id = run_id()
        self.filled: set[str] = set()  # input topics that already hold their backlog

    def topic(self, system: str) -> str:
        """The input topic of a system; Sluice's comes from its repo's KafkaSource."""
        if system in ("sluice", "two"):
            return self.load.plan.schema.topic
        return f"bench-{self.run_id}-{system}"

    def sluice_launcher(self, workers: int = 1):
        def launch(name: str, output: str, app_id: str) -> list[WorkerProcess]:
            env = {"SLUICE_PREDICTIONS_TOPIC": output, "SLUICE_PREDICTION_LOG_TOPIC": f"{output}.log"}
            prepared = self.load.prepared
            return [
                worker_process(
                    self.bootstrap, prepared.path, prepared.model_dir, self.work, f"{name}-{i}", app_id=app_id,
                    partitions=self.partitions, env=env,
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
                "--id-field", self.load.plan.schema.event_id,
            ]
            return [ModuleProcess("stream.tools.bench.naive", args, self.work / f"{name}.log", self.work / f"{name}.ready").start()]

        return launch

    def quix_launcher(self):
        """The Quix Streams peer, on the windows of Sluice's partition-key view it can compute (quix_peer.py)."""
        from stream.tools.bench.quix_peer import PeerSpec

        spec = PeerSpec.from_plan(self.load.plan)

        def launch(name: str, output: str, app_id: str) -> list[WorkerProcess]:
            args = [
                "--bootstrap-servers", self.bootstrap,
                "--topic", self.topic(name),
                "--output", output,
                "--app-id", app_id,
                "--data-dir", str(self.work / "data"),
                *spec.args(),
            ]
            return [ModuleProcess("stream.tools.bench.quix_peer", args, self.work / f"{name}.log", self.work / f"{name}.ready").start()]

        return launch

    def measure(self, name: str, launch, backlog: list, rates: list[int]) -> dict:
        source, output, app_id = self.topic(name), f"bench-{self.run_id}-{name}-out", f"bench-{self.run_id}-{name}"
        ensure_topics(self.bootstrap, [source, output], self.partitions)
        t = step(f"{name}: {len(backlog):,} events as a backlog, then starting the system")
        if source not in self.filled:
            produce_all(self.bootstrap, source, backlog)
            self.filled.add(source)
        with contextlib.ExitStack() as stack:
            reader = TopicReader(self.bootstrap, output, partitions=topic_partitions(self.bootstrap, output))
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
            complete = reader.wait_for(len(backlog), idle_s=60, limit_s=60 + len(backlog) / 200)
            busy = (monitor.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
            # Read again after the backlog: a worker rewrites its ready file on every rebalance.
            settled_ms = max(_ready_ms(procs))
            stamps = [ts for _, ts in reader.records[: len(backlog)]]
            result = backlog_throughput(stamps, len(backlog), ready_ms, settled_ms if len(procs) > 1 else None, complete)
            # Cores the system kept busy on the backlog: near 1 per process means
            # CPU-bound, much less means it waits (on the broker, mostly).
            result["cpu_cores_busy"] = round(busy, 2)
            done(t, f"{result['events_per_s']:,.0f} events/s" if result["events_per_s"] else "incomplete")
            result["latency"] = self.rate_runs(name, source, reader, rates, result["events_per_s"], monitor)
            stop_all(procs)
            monitor.stop()
        result["peak_rss_mb"] = round(monitor.peak_total / 2**20, 1)
        if len(procs) > 1:
            result["peak_rss_mb_each"] = [round(b / 2**20, 1) for b in monitor.peak_each]
        return result

    def rate_runs(self, name: str, source: str, reader: TopicReader, rates: list[int], max_eps: float | None,
                  monitor: RssMonitor | None = None) -> dict:
        out: dict[str, dict] = {}
        # Every system gets the same paced events, from the first one on.
        pos, ceiling, saturated = 0, max_eps or 0.0, False
        producer = self.input_producer(source)
        for rate in rates:
            if saturated or rate > SKIP_FACTOR * ceiling:
                reason = "saturated at a lower rate" if saturated else f"above {SKIP_FACTOR:g}x its backlog throughput"
                out[str(rate)] = {"saturated": True, "skipped": True, "reason": reason,
                                  "achieved_events_per_s": round(ceiling, 1)}
                continue
            n = int(rate * self.rate_seconds)
            events = self.load.paced[pos : pos + n]
            pos += n
            t = step(f"{name}: {rate:,} events/s for {self.rate_seconds:g} s")
            cpu = self._cpu_seconds(monitor)
            phase = rate_run(producer, source, reader, events, rate)
            phase.update(self._cores_busy(monitor, cpu))
            done(t, phase_text(phase))
            out[str(rate)] = phase
            if phase["saturated"]:
                saturated, ceiling = True, phase["output_events_per_s"]
        producer.flush(10)
        return out

    def input_producer(self, source: str):
        """The producer of the paced events (connected, with its producer id)."""
        return warmed_producer(self.bootstrap, f"{source}.warmup", **self.input_config)

    def _cpu_seconds(self, monitor: RssMonitor | None) -> tuple[float, float | None, float | None]:
        return time.monotonic(), monitor.cpu_seconds() if monitor else None, cpu_of(self.broker)

    def _cores_busy(self, monitor: RssMonitor | None, before: tuple[float, float | None, float | None]) -> dict:
        """Cores the system and the embedded broker kept busy since `before` (the rate run and its wait)."""
        now = self._cpu_seconds(monitor)
        wall = now[0] - before[0]
        cores = {}
        for name, a, b in (("system_cpu_cores", before[1], now[1]), ("broker_cpu_cores", before[2], now[2])):
            if a is not None and b is not None and wall > 0:
                cores[name] = round((b - a) / wall, 2)
        return cores


def measure_peers(bench: SystemBench, rates: list[int]) -> dict:
    """`--peers`: Quix Streams on the same backlog and rates, or why it was left out."""
    from stream.tools.bench import quix_peer

    if not quix_peer.installed():
        reason = f"Quix Streams is not installed: {quix_peer.INSTALL_HINT}"
        print(f"· quix: skipped. {reason}", flush=True)
        return {"quix": {"skipped": True, "reason": reason}}
    quix_peer.create_input_topic(bench.bootstrap, bench.topic("quix"), bench.partitions)
    return {"quix": bench.measure("quix", bench.quix_launcher(), bench.load.backlog, rates)}


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
