"""`sluice bench --serve`: request/response latency of `POST /score`, with the stream running beside it.

One worker with serving on holds every partition and has scored a
backlog. Each run offers requests at a fixed rate from a load generator
process (`stream.tools.bench.loadgen`, open loop: latency counts from when
a request was due) while events enter the stream at `--serve-stream-rate`;
the stream's output rate and event-to-prediction latency are read from
its predictions' Kafka timestamps, as in the other latency runs. Rate 0 is
the stream alone, the baseline. Requests and stream events are taken from
one time-ordered sequence, so neither is late against the other.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from stream.kafka.clients import ensure_topics, warmed_producer
from stream.kafka.reader import TopicReader
from stream.tools.bench import serve_breakdown as breakdown
from stream.tools.bench.latency import phase_stats, run_id
from stream.tools.bench.report import done, step
from stream.tools.bench.systems import produce_all
from stream.tools.process import worker_process
from stream.tools.workload import Workload, keyed

#: Seconds from launching a run to its first request and event: the load generator's start-up.
START_S = 5.0


def add_arguments(p) -> None:
    p.add_argument("--serve", action="store_true", help="measure only POST /score (p50/p99 at --serve-rates) beside the stream")
    p.add_argument("--serve-rates", default="100,1000", help="requests/s of the --serve runs, comma-separated (100,1000 unless given)")
    p.add_argument("--serve-stream-rate", type=int, default=1000, help="events/s entering the stream meanwhile (default 1000)")
    p.add_argument("--serve-backlog", type=int, default=20_000, help="events the worker scores before the runs (default 20000)")


def measure_serve(args, workload: Workload, bootstrap: str, work: Path) -> dict:
    rates = [0] + sorted(int(float(r)) for r in str(args.serve_rates).split(",") if r.strip())
    seconds, stream_rate = args.rate_seconds, args.serve_stream_rate
    t = step(f"preparing {workload.name}: a repo and a 200-tree model")
    prepared = workload.prepare(work, entities=max(500, args.serve_backlog // 4), seed=args.seed,
                                topic=f"bench-{run_id()}-serve", trees=200)
    from features.feast_repo import load_plan, open_store

    plan = load_plan(open_store(prepared.path))
    per_run = [int((rate + stream_rate) * seconds) for rate in rates]
    events = [keyed(plan, p) for p in workload.live_events(args.serve_backlog + sum(per_run), seed=args.seed)]
    done(t)
    topic, output = plan.schema.topic, f"bench-{run_id()}-serve-out"
    ensure_topics(bootstrap, [topic, output], args.partitions)
    produce_all(bootstrap, topic, events[: args.serve_backlog])
    ports = {"serve": free_port(), "metrics": free_port()}
    env = {"SLUICE_PREDICTIONS_TOPIC": output, "SLUICE_PREDICTION_LOG_TOPIC": f"{output}.log", "SLUICE_SERVE_PORT": str(ports["serve"])}
    worker = worker_process(bootstrap, prepared.path, prepared.model_dir, work, "serve", app_id=f"bench-{run_id()}-serve",
                            partitions=args.partitions, metrics_port=ports["metrics"], env=env)
    reader = TopicReader(bootstrap, output, partitions=args.partitions)
    reader.start()
    report: dict = {"stream_rate": stream_rate, "seconds": seconds, "backlog": args.serve_backlog, "runs": {}}
    try:
        worker.start().wait_ready(timeout_s=180)
        t = step(f"serve: the worker scores a backlog of {args.serve_backlog:,} events")
        reader.wait_for(args.serve_backlog, idle_s=60, limit_s=600)
        done(t)
        pos = args.serve_backlog
        for rate, n in zip(rates, per_run):
            chunk, pos = events[pos : pos + n], pos + n
            t = step(f"serve: {rate:,} requests/s beside {stream_rate:,} events/s for {seconds:g} s")
            before = breakdown.scrape(ports["metrics"])
            run = _one_run(bootstrap, topic, reader, work, ports["serve"], chunk, rate, stream_rate)
            run["steps"] = breakdown.steps(before, breakdown.scrape(ports["metrics"]))
            done(t, _text(run))
            report["runs"][str(rate)] = run
        report["consistency"] = _consistency(ports["metrics"])
    finally:
        reader.stop()
        worker.stop()
    return report


def _one_run(bootstrap, topic, reader, work: Path, port: int, chunk: list, rate: int, stream_rate: int) -> dict:
    """Requests and stream events interleaved from one time-ordered chunk, offered side by side."""
    every = (rate + stream_rate) / rate if rate else 0
    asked_at = {int(i * every) for i in range(int(len(chunk) / every))} if rate else set()
    requests = [value for i, (_, value, _) in enumerate(chunk) if i in asked_at]
    stream = [event for i, event in enumerate(chunk) if i not in asked_at]
    payloads = work / f"serve-{rate}.jsonl"
    payloads.write_bytes(b"\n".join(requests) + b"\n")
    mark = len(reader.records)
    sent_at: dict[bytes, int] = {}
    producer = warmed_producer(bootstrap, f"{topic}.warmup")
    # Both start in step (the generator's start-up takes a second or more): requests and stream events
    # come from one time-ordered sequence, and a stream ahead of the requests would make them late.
    start_at = time.time() + START_S
    feeder = threading.Thread(target=_feed, args=(producer, topic, stream, stream_rate, sent_at, start_at))
    generator = None
    if requests:
        command = [sys.executable, "-m", "stream.tools.bench.loadgen", "--port", str(port), "--rate", str(rate),
                   "--payloads", str(payloads), "--start-at", str(start_at)]
        generator = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    feeder.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_started = breakdown.CpuSample()  # while requests and events are offered: the start-up left out
    served = {}
    if generator is not None:
        out, err = generator.communicate(timeout=600)
        served = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {"error": err.decode()[-500:]}
    feeder.join()
    cores = breakdown.CpuSample().cores_since(cpu_started)
    if "generator" in served:
        cores["load generator"] = round(served["generator"]["cpu_s"] / max(time.time() - start_at, 1e-9), 2)
    send_s = time.time() - start_at
    reader.wait_for(mark + len(stream) + len(requests), idle_s=10, limit_s=60)
    outputs = [(sent_at[k], ts) for k, ts in reader.records[mark:] if k in sent_at]
    return {"requests": served, "stream": phase_stats(stream_rate, len(stream), send_s, outputs), "cores": cores}


def _feed(producer, topic: str, events: list, rate: int, sent_at: dict, start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))
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


def _consistency(metrics_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    found = {}
    for line in lines:
        if line.startswith("sluice_serve_consistency_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = int(float(line.rsplit(" ", 1)[1]))
    return found


def _text(run: dict) -> str:
    served, stream = run["requests"], run["stream"]
    parts = []
    if served.get("p50_ms") is not None:
        parts.append(f"requests p50 {served['p50_ms']:.1f} ms p99 {served['p99_ms']:.1f} ms {served['statuses']}")
    if stream.get("outputs"):
        parts.append(f"stream out {stream['output_events_per_s']:,.0f}/s p99 {stream['p99_ms']:.0f} ms")
    return "; ".join(parts)


def free_port() -> int:
    """A port nothing listens on now (for a child process to take)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
