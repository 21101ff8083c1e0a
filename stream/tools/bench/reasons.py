"""`sluice bench --reasons`: what reason codes cost the scoring worker, and how soon they arrive off its path.

* In-process, as stream/tools/bench/serving.py measures serving choices: the
  scoring stage's CPU µs per event with TreeSHAP reason codes for positive
  decisions inline (SLUICE_REASONS=inline) and with none (`service`, the
  default), the two taking turns over the same micro-batches, median of the
  rounds; beside them, the reasons service's own step per prediction-log
  record (parse, then stream.serving.explain.explain_log).
* Through real processes: a worker (service mode) and `sluice reasons` on one
  broker, events produced at `--reasons-rate` for `--rate-seconds`; per
  explained event, the delay from its prediction-log record's Kafka
  timestamp (when the worker produced it) to its reason record's (when the
  service produced it): p50, p99, max; and how many positive decisions got
  their record. Event -> prediction latency of the same run is given beside.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

from stream.kafka.clients import ensure_topics, warmed_producer
from stream.kafka.reader import TopicReader
from stream.tools.bench.latency import rate_run, run_id
from stream.tools.bench.report import done, step
from stream.tools.bench.serve import free_port
from stream.tools.bench.serving import BATCH, _last_stage_inputs, _own_topic_copy, _time_stage
from stream.tools.process import reasons_process, worker_process
from stream.tools.workload import Workload, keyed

#: Events of the in-process measurement.
IN_PROCESS_EVENTS = 20_000


def add_arguments(p) -> None:
    p.add_argument(
        "--reasons", action="store_true",
        help="measure only reason codes: the worker's cost with them inline vs in `sluice reasons`, and their delay after the prediction",
    )
    p.add_argument("--reasons-rate", type=int, default=500, help="events/s of the --reasons delay run (default 500)")


def measure_reasons(args, workload: Workload, bootstrap: str, work: Path) -> dict:
    from features.feast_repo import load_plan, open_store

    t = step(f"preparing {workload.name}: a repo and a 200-tree model")
    prepared = workload.prepare(work, entities=5000, seed=args.seed, topic=f"bench-{run_id()}-reasons", trees=200)
    plan = load_plan(open_store(prepared.path))
    n = int(args.reasons_rate * args.rate_seconds)
    events = [keyed(plan, p) for p in workload.live_events(IN_PROCESS_EVENTS + n, seed=args.seed)]
    done(t)
    rounds = 2 if args.quick else 5
    return {
        "in_process": measure_costs(plan, prepared.model_dir, events[:IN_PROCESS_EVENTS], args.partitions, rounds),
        "delay": measure_delay(bootstrap, work, prepared, events[IN_PROCESS_EVENTS:], args.reasons_rate, args.partitions),
    }


def measure_costs(plan, model_dir: Path, payloads, partitions: int, rounds: int) -> dict:
    """CPU µs per event of the scoring stage, reasons inline vs none; and of the reasons step per log record."""
    from stream.kafka.topics import AppTopics
    from stream.pipeline.engine import Engine
    from stream.serving.explain import Explainer
    from stream.serving.model import load_model
    from stream.serving.scorer import Serving
    from stream.settings import Settings

    t = step(f"reason codes in-process: {len(payloads):,} events, {rounds} rounds of each configuration")
    model = load_model(model_dir, expected_features=plan.vector)
    engine = Engine(plan, AppTopics.for_plan(Settings(app_id="bench"), plan), "bench", model=model, n_sources=partitions)
    inputs = _last_stage_inputs(engine, payloads, partitions)
    configs = {"service": Serving.alone(model, reason_k=0), "inline": Serving.alone(model, reason_k=3)}
    runs: dict[str, list[float]] = {name: [] for name in (*configs, "reasons_step")}
    engine.serving = configs["service"]
    logs = _log_values(engine, inputs)
    for _ in range(rounds):
        for name, serving in configs.items():
            engine.serving = serving
            seconds, scored = _time_stage(engine, inputs)
            runs[name].append(seconds / max(scored, 1) * 1e6)
        runs["reasons_step"].append(_time_step(logs, plan.schema.event_id, model, Explainer(3)) / len(logs) * 1e6)
    us = {name: round(statistics.median(v), 2) for name, v in runs.items()}
    positives = sum(b'"decision":true' in v for v in logs)
    report = {
        "us_per_event": us, "events": len(logs), "positive_share": round(positives / max(len(logs), 1), 5),
        "inline_adds_us_per_event": round(us["inline"] - us["service"], 2),
        "reasons_step_us_per_positive": round(us["reasons_step"] * len(logs) / max(positives, 1), 1),
    }
    done(t, orjson.dumps(us).decode())
    return report


def _log_values(engine, inputs) -> list[bytes]:
    """The prediction-log records the scoring stage writes for `inputs`."""
    values = []
    for partition, queue in enumerate(inputs):
        state: dict = {}
        for lo in range(0, len(queue), BATCH):
            outcome = engine.process(engine.last_stage, partition, queue[lo : lo + BATCH], state)
            state.update(outcome.writes)
            values += [o.value for o in outcome.outputs if o.topic == engine.topics["prediction_log"]]
    return values


def _time_step(values: list[bytes], id_field: str, model, explainer) -> float:
    """CPU seconds of the reasons service's step over `values`, in its micro-batches (parse included)."""
    from stream.serving.explain import explain_log

    started = time.process_time()
    for lo in range(0, len(values), 5000):
        explain_log([orjson.loads(v) for v in values[lo : lo + 5000]], id_field, {model.version: model}, explainer)
    return time.process_time() - started


def measure_delay(bootstrap: str, work: Path, prepared, events: list, rate: int, partitions: int) -> dict:
    """Prediction-log record -> reason record, per explained event, through a worker and `sluice reasons`."""
    rid = run_id()
    topics = {f"SLUICE_{role}_TOPIC": f"reasons-{role.lower()}-{rid}"
              for role in ("PREDICTIONS", "PREDICTION_LOG", "REASONS", "DEPLOYMENTS")}
    repo_path, topic = _own_topic_copy(prepared.path, Path(work) / f"reasons-repo-{rid}", f"reasons-events-{rid}")
    ensure_topics(bootstrap, [topic, *topics.values()], partitions)
    app_id = f"bench-reasons-{rid}"
    worker = worker_process(bootstrap, repo_path, prepared.model_dir, work, f"reasons-worker-{rid}", app_id=app_id,
                            partitions=partitions, env=topics)
    port = free_port()
    service = reasons_process(bootstrap, repo_path, prepared.model_dir, work, f"reasons-{rid}", app_id=app_id,
                              metrics_port=port, env=topics)
    predictions = TopicReader(bootstrap, topics["SLUICE_PREDICTIONS_TOPIC"], partitions=partitions)
    logged = TopicReader(bootstrap, topics["SLUICE_PREDICTION_LOG_TOPIC"], partitions=partitions,
                         keep=lambda m: (m.key(), m.timestamp()[1], b'"decision":true' in m.value()))
    explained = TopicReader(bootstrap, topics["SLUICE_REASONS_TOPIC"], partitions=partitions)
    t = step(f"reason codes off the scoring path: {rate:,} events/s for {len(events) / rate:g} s")
    try:
        worker.start().wait_ready(timeout_s=180)
        service.start().wait_ready(timeout_s=120)
        for reader in (predictions, logged, explained):
            reader.start()
        phase = rate_run(warmed_producer(bootstrap, f"{topic}.warmup"), topic, predictions, events, rate)
        logged.wait_for(len(events), idle_s=10, limit_s=60)
        positives = {key: at for key, at, positive in logged.records if positive}
        explained.wait_for(len(positives), idle_s=10, limit_s=60)
        steps = _step_ms(port)
    finally:
        for reader in (predictions, logged, explained):
            reader.stop()
        service.stop()
        worker.stop()
    arrived = dict(explained.records)
    delays = np.array([arrived[k] - at for k, at in positives.items() if k in arrived], dtype=np.float64)
    report = {"rate": rate, "events": len(events), "positives": len(positives), "explained": len(arrived),
              "event_to_prediction": phase, "service_step_mean_ms": steps}
    if len(delays):
        p50, p99 = np.percentile(delays, [50, 99])
        report.update(delay_p50_ms=round(float(p50), 1), delay_p99_ms=round(float(p99), 1), delay_max_ms=round(float(delays.max()), 1))
    done(t, f"{len(arrived):,} of {len(positives):,} positives explained; p50 {report.get('delay_p50_ms')} ms, "
            f"p99 {report.get('delay_p99_ms')} ms after the prediction log")
    return report


def _step_ms(port: int) -> dict:
    """Mean ms per micro-batch of each step of the service (its sluice_reasons_step_seconds histogram)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    sums, counts = {}, {}
    for line in lines:
        for suffix, into in (("_sum{", sums), ("_count{", counts)):
            if line.startswith("sluice_reasons_step_seconds" + suffix):
                into[line.split('step="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return {name: round(1000 * sums[name] / counts[name], 2) for name in sums if counts.get(name)}
