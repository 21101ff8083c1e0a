"""The label join's cost: labels/s in this process and through a worker, and what it costs the scoring path.

* In process: `LabelJoin.step` over a dict state, chunks of 2,000: the
  prediction-log records first (they enter the state), then one label each
  (each joins and emits its row). Parse and encode included.
* Through workers, on the same backlog of events, one worker at a time:
  (1) the label join off: the scoring path's events/s; (1b) the join on
  and no labels (every prediction enters the join's state: the cost when
  labels are rare, as chargebacks are); (2) the label join
  on, its labels topic already holding one label per event (each waits for
  its prediction, then joins): events/s of the same scoring path while the
  worker also joins, and joined records/s; (3) that worker, once idle, gets
  a second label per event (a correction each, the row re-emitted): the
  join alone, labels/s. Rates come from the outputs' own Kafka timestamps
  (first to last output), as everywhere in `sluice bench`; the worker's CPU
  time per event (from ready to its last output) is measured too, as it
  depends far less on what else runs on the machine than a rate does;
  (4) the join as a service (SLUICE_LABEL_JOIN=service): the scoring worker
  joins nothing and a join worker (`sluice label-join`) beside it joins the
  same preloaded labels; the scoring worker's events/s and CPU per event, the
  join worker's CPU per event and joined records/s.
"""

from __future__ import annotations

import time

import numpy as np
import orjson
import psutil

from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.lifecycle.label_join import LABELS, LOG, JoinConfig, LabelJoin, partition_for
from stream.pipeline.events import iso_ms, parse_timestamp_ms
from stream.tools.bench.latency import run_id
from stream.tools.bench.report import done, step
from stream.tools.process import label_join_process, worker_process
from stream.worker.labels import LabelSender

CHUNK = 2000


def _apply(state: dict, writes: dict) -> None:
    for key, value in writes.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value


def in_process(plan, n: int = 20_000, partitions: int = 4, seed: int = 7) -> dict:
    """µs per prediction and per label of the pure step, labels/s; the state bytes per pending prediction."""
    rng = np.random.default_rng(seed)
    config = JoinConfig.from_tags(plan.tags, plan.schema.event_id, partitions=partitions)
    join = LabelJoin(config)
    id_field, t0 = plan.schema.event_id, 1_790_000_000_000
    ids = [f"bench-{i:09d}" for i in range(n)]
    part = np.array([partition_for(i.encode(), partitions) for i in ids])
    ids0 = [i for i, p in zip(ids, part) if p == 0]
    logs, labels = [], []
    for k, event_id in enumerate(ids0):
        score = float(rng.random())
        logs.append(orjson.dumps({
            id_field: event_id, "score": score, "decision": score > 0.5, "model_version": "v1", "route": "champion",
            "scores": {"v1": score, "v2": float(rng.random())}, "event_time": iso_ms(t0 + k * 1000),
            "scored_at": iso_ms(t0 + k * 1000 + 30), "feature_service": plan.service, "threshold": 0.5,
            "features": {name: float(v) for name, v in zip(plan.vector, rng.random(len(plan.vector)))},
        }))
        labels.append(orjson.dumps({id_field: event_id, config.label_field: int(rng.random() < 0.1),
                                    config.time_field: iso_ms(t0 + k * 1000 + 3_600_000)}))
    state: dict = {}

    def run(role: str, values: list[bytes]) -> float:
        started = time.perf_counter()
        for lo in range(0, len(values), CHUNK):
            batch = [(role, ids0[lo + j].encode(), v, lo + j) for j, v in enumerate(values[lo : lo + CHUNK])]
            _apply(state, join.step(0, batch, state).writes)
        return time.perf_counter() - started

    log_s = run(LOG, logs)
    pending = [len(k) + len(v) + len(k) - 2 for k, v in state.items() if k.startswith("lj:")]
    label_s = run(LABELS, labels)
    m = max(len(ids0), 1)
    return {
        "records": len(ids0),
        "us_per_prediction": round(log_s / m * 1e6, 1),
        "us_per_label": round(label_s / m * 1e6, 1),
        "labels_per_s": round(m / label_s) if label_s else None,
        "pending_bytes_per_prediction": round(float(np.mean(pending)), 1) if pending else None,
    }


def _rate(bootstrap: str, topic: str, expect: int, kinds=None) -> tuple[float | None, int]:
    """Outputs/s from the outputs' Kafka timestamps (first to last), and how many were read."""
    stamps = []
    for msg in read_topic(bootstrap, topic, expect=expect, timeout_s=300, idle_s=10):
        if kinds is None or orjson.loads(msg.value())["kind"] in kinds:
            stamps.append(msg.timestamp()[1])
    if len(stamps) < 2:
        return None, len(stamps)
    span_s = (max(stamps) - min(stamps)) / 1000
    return (round((len(stamps) - 1) / span_s, 1) if span_s > 0 else None), len(stamps)


def _cpu_s(pid: int) -> float:
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    return times.user + times.system + sum(c.cpu_times().user + c.cpu_times().system for c in proc.children(recursive=True))


def through_worker(bootstrap: str, work, prepared, plan, backlog: list[tuple[bytes, bytes, bytes]], partitions: int) -> dict:
    """Scoring without and with the label join in one worker (events/s, worker CPU per event); the join alone."""
    config = JoinConfig.from_tags(plan.tags, plan.schema.event_id)
    n, out = len(backlog), {}
    modes = (("without_join", "off", False), ("with_join_no_labels", "inline", False), ("with_join", "inline", True),
             ("with_join_service", "service", True))
    for mode, where, labelled in modes:
        name = f"labels-{run_id()}-{mode}"
        topics = {k: f"{name}.{k}" for k in ("predictions", "prediction_log", "labels", "labeled")}
        env = {
            "SLUICE_LABEL_JOIN": where, "SLUICE_PREDICTIONS_TOPIC": topics["predictions"],
            "SLUICE_PREDICTION_LOG_TOPIC": topics["prediction_log"], "SLUICE_LABELS_TOPIC": topics["labels"],
            "SLUICE_LABELED_TOPIC": topics["labeled"], "SLUICE_MAX_EVENT_AHEAD_MS": str(400 * 86_400_000),
        }
        repo = _repo_on(prepared.path, work, name, plan.schema.topic)
        ensure_topics(bootstrap, [name, topics["prediction_log"], topics["labels"]], partitions)
        producer = make_producer(bootstrap)
        for key, value, _ in backlog:
            producer.produce(name, value, key)
        producer.flush(60)
        sender = LabelSender(bootstrap, topics["labels"], partitions, id_field=config.id_field, label_field=config.label_field)
        times = [parse_timestamp_ms(orjson.loads(value)[plan.schema.timestamp_field]) for _, value, _ in backlog]
        if labelled:  # one label per event, waiting for its prediction
            for (_, _, event_id), at in zip(backlog, times):
                sender.send(event_id.decode(), 1, at + 3_600_000)
            sender.flush()
        t = step(f"{mode.replace('_', ' ')}: one worker on {n:,} events")
        worker = worker_process(bootstrap, repo, prepared.model_dir, work, name, app_id=name, partitions=partitions, env=env)
        joiner = label_join_process(bootstrap, repo, work, f"{name}-join", app_id=name, partitions=partitions, env=env)
        try:
            if where == "service":  # the join worker holds its partitions first: the scoring worker's run is the one timed
                joiner.start().wait_ready()
                join_cpu0 = _cpu_s(joiner.pid)
            worker.start().wait_ready()
            cpu0 = _cpu_s(worker.pid)
            row = {"events_per_s": _rate(bootstrap, topics["predictions"], n)[0]}
            cpu1 = _cpu_s(worker.pid)
            if labelled:
                row["joined_per_s"] = _rate(bootstrap, topics["labeled"], n, kinds={"joined"})[0]
            elif where != "off":
                time.sleep(2.0)  # the prediction log read back and stored: not timed by an output
            # With the join in the worker, its CPU to the last joined record; alone, to its last prediction.
            row["worker_cpu_us_per_event"] = round(((cpu1 if where == "service" else _cpu_s(worker.pid)) - cpu0) / n * 1e6, 1)
            if where == "service":
                row["join_worker_cpu_us_per_event"] = round((_cpu_s(joiner.pid) - join_cpu0) / n * 1e6, 1)
            out[mode] = row
            if labelled and where == "inline":  # the join alone: a correction for every row, the worker otherwise idle
                cpu0 = _cpu_s(worker.pid)
                for (_, _, event_id), at in zip(backlog, times):
                    sender.send(event_id.decode(), 0, at + 2 * 3_600_000)
                sender.flush()
                rate = _rate(bootstrap, topics["labeled"], 2 * n, kinds={"correction"})[0]
                out["join_alone"] = {"labels_per_s": rate, "worker_cpu_us_per_label": round((_cpu_s(worker.pid) - cpu0) / n * 1e6, 1)}
        finally:
            worker.stop()
            joiner.stop()
        done(t)
    off = out["without_join"]
    for mode in ("with_join_no_labels", "with_join", "with_join_service"):
        on = out[mode]
        if off["events_per_s"] and on["events_per_s"]:
            on["scoring_throughput_cost"] = round(1 - on["events_per_s"] / off["events_per_s"], 3)
        on["cpu_cost"] = round(on["worker_cpu_us_per_event"] / off["worker_cpu_us_per_event"] - 1, 3)
    return out


def _repo_on(path, work, name: str, topic: str):
    """A copy of the prepared repo reading the events topic `name` (each run reads its own backlog)."""
    import shutil

    from stream.feast import repo

    dest = work / f"repo-{name}"
    shutil.copytree(path, dest, ignore=shutil.ignore_patterns("registry.db"))
    for definitions in dest.glob("*.py"):
        text = definitions.read_text()
        if f'topic="{topic}"' in text:
            definitions.write_text(text.replace(f'topic="{topic}"', f'topic="{name}"'))
    repo.apply(dest)
    return dest


def measure_labels(bootstrap: str, work, prepared, plan, backlog, partitions: int = 4) -> dict:
    """Both measurements, for `sluice bench` (stream/tools/bench/main.py calls this with its BenchLoad)."""
    t = step("label join in process")
    report = {"in_process": in_process(plan, partitions=partitions)}
    done(t)
    report["worker"] = through_worker(bootstrap, work, prepared, plan, backlog, partitions)
    return report
