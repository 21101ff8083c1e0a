"""`sluice bench --online-push`: how soon an event's aggregates are visible through Feast.

A worker runs with the online push on (SLUICE_ONLINE_PUSH_INTERVAL_S).
Probe events, each of an entity never seen before, enter the stream at a
steady pace; two readers poll for them side by side: `get_online_features`
in this process and `feast serve` (its HTTP server, in a process of its
own). An event is visible to a reader once its entity's 24-hour count reads
1; its latency runs from when it was produced to the first poll that saw
it (the poll interval, `POLL_S`, bounds the error).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

from stream.kafka.clients import ensure_topics, warmed_producer
from stream.kafka.reader import TopicReader
from stream.tools.bench.latency import run_id
from stream.tools.bench.report import done, step
from stream.tools.bench.serve import free_port
from stream.tools.bench.systems import produce_all
from stream.tools.process import worker_process
from stream.tools.workload import Workload, keyed

POLL_S = 0.02


def add_arguments(p) -> None:
    p.add_argument("--online-push", action="store_true", help="measure only event -> visible in Feast (get_online_features, feast serve)")
    p.add_argument("--push-interval-s", type=float, default=0.25, help="SLUICE_ONLINE_PUSH_INTERVAL_S of that run (default 0.25)")
    p.add_argument("--probes", type=int, default=200, help="probe events of that run, 10 per second (default 200)")


def measure_online_push(args, workload: Workload, bootstrap: str, work: Path) -> dict:
    t = step(f"preparing {workload.name}: a repo and a model")
    prepared = workload.prepare(work, entities=2000, seed=args.seed, topic=f"bench-{run_id()}-push", trees=50)
    from features.feast_repo import load_plan, open_store

    store = open_store(prepared.path)
    plan = load_plan(store)
    view = next(v for v in plan.stream_views if v.join_keys == (plan.partition_key,))
    agg = next(a.name for a in view.aggs if a.function == "count")
    events = [keyed(plan, p) for p in workload.live_events(5000 + args.probes, seed=args.seed)]
    done(t)
    topic, output = plan.schema.topic, f"bench-{run_id()}-push-out"
    ensure_topics(bootstrap, [topic, output], args.partitions)
    produce_all(bootstrap, topic, events[:5000])
    env = {"SLUICE_PREDICTIONS_TOPIC": output, "SLUICE_PREDICTION_LOG_TOPIC": f"{output}.log",
           "SLUICE_ONLINE_PUSH_INTERVAL_S": str(args.push_interval_s)}
    worker = worker_process(bootstrap, prepared.path, prepared.model_dir, work, "push", app_id=f"bench-{run_id()}-push",
                            partitions=args.partitions, env=env)
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "feast"), "-c", str(prepared.path), "serve", "-p", str(port), "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    reader = TopicReader(bootstrap, output, partitions=args.partitions)
    reader.start()
    try:
        worker.start().wait_ready(timeout_s=180)
        reader.wait_for(5000, idle_s=60, limit_s=600)
        _wait_for_server(port)
        feature = f"{view.name}:{agg}"
        readers = {
            "get_online_features": lambda ids: _sdk_counts(store, feature, plan.partition_key, agg, ids),
            "feast_serve": lambda ids: _server_counts(port, feature, plan.partition_key, ids),
        }
        t = step(f"online push every {args.push_interval_s:g} s: {args.probes} probes at 10/s, two readers polling")
        result = _probe(bootstrap, topic, plan.partition_key, events[5000:], readers)
        done(t, "; ".join(f"{k} p50 {v.get('p50_ms')} ms p99 {v.get('p99_ms')} ms" for k, v in result.items()))
    finally:
        reader.stop()
        server.terminate()
        server.wait(timeout=20)
        worker.stop()
    return {"push_interval_s": args.push_interval_s, "probes": args.probes, "poll_s": POLL_S, **result}


def _probe(bootstrap: str, topic: str, key_field: str, events: list, readers: dict) -> dict:
    producer = warmed_producer(bootstrap, f"{topic}.warmup", **{"linger.ms": 0})
    sent: dict[str, float] = {}
    seen: dict[str, dict[str, float]] = {name: {} for name in readers}
    halt = threading.Event()

    def poll(name: str, read) -> None:
        while not halt.is_set():
            waiting = [e for e in list(sent) if e not in seen[name]]
            if waiting:
                now = time.time()
                for entity, count in zip(waiting, read(waiting)):
                    if count == 1:
                        seen[name][entity] = now
            time.sleep(POLL_S)

    threads = [threading.Thread(target=poll, args=(n, r), daemon=True) for n, r in readers.items()]
    for thread in threads:
        thread.start()
    for i, (_, value, _) in enumerate(events):
        entity = f"probe-{run_id()}-{i}"
        event = dict(orjson.loads(value), **{key_field: entity})
        producer.produce(topic, orjson.dumps(event), entity.encode())
        producer.flush(5)
        sent[entity] = time.time()
        time.sleep(0.1)
    deadline = time.time() + 30
    while time.time() < deadline and any(len(s) < len(sent) for s in seen.values()):
        time.sleep(0.2)
    halt.set()
    for thread in threads:
        thread.join(timeout=5)
    return {name: _stats([(seen[name][e] - sent[e]) * 1000 for e in seen[name]], len(sent)) for name in readers}


def _sdk_counts(store, feature: str, key_field: str, agg: str, entities: list[str]) -> list:
    rows = store.get_online_features(features=[feature], entity_rows=[{key_field: e} for e in entities]).to_dict()
    return rows[agg]


def _server_counts(port: int, feature: str, key_field: str, entities: list[str]) -> list:
    body = orjson.dumps({"features": [feature], "entities": {key_field: entities}})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/get-online-features", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = orjson.loads(response.read())
    names = answer["metadata"]["feature_names"]
    column = next(i for i, n in enumerate(names) if n != key_field)
    return answer["results"][column]["values"]


def _stats(latencies: list[float], sent: int) -> dict:
    if not latencies:
        return {"visible": 0, "sent": sent}
    p50, p99 = np.percentile(latencies, [50, 99])
    return {"visible": len(latencies), "sent": sent, "p50_ms": round(float(p50), 1), "p99_ms": round(float(p99), 1),
            "max_ms": round(float(max(latencies)), 1), "within_1s": round(float(np.mean(np.array(latencies) <= 1000)), 3)}


def _wait_for_server(port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    msg = f"feast serve did not answer on port {port} within {timeout_s:.0f} s"
    raise TimeoutError(msg)
