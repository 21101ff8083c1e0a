"""What serving choices cost per event, and how long a deployment takes to serve.

* In-process, one run: the scoring stage (the last one: its windows, batch
  features, scoring, rules, records) over the same micro-batches, with the
  champion alone, with reason codes for positive decisions (the default),
  for every event, and with one shadow challenger. The configurations take
  turns, several rounds, and the median of each is reported, so they share
  the machine's noise; each is timed in CPU seconds of this process. Beside them, the model's own cost per row (one
  `predict` per batch) and TreeSHAP's (`pred_contrib`): the shadow's added
  cost should be the model's own, nothing more.
* Through a real worker: the time from writing a deployment record to the
  first prediction by the version it names, while events stream at a fixed
  rate; several swaps back and forth.
"""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from stream.tools.bench.compiled import measure_compiled
from stream.tools.bench.engine import stage_inputs
from stream.tools.bench.report import done, step

ROUNDS = 5
BATCH = 500


def _last_stage_inputs(engine, payloads, partitions: int):
    """The messages the scoring stage reads, per partition (earlier stages run once, here)."""
    return stage_inputs(engine, payloads, partitions)[engine.last_stage]


def _time_stage(engine, inputs) -> tuple[float, int]:
    # CPU time of this process, not wall time: other processes on the machine do not count.
    started = time.process_time()
    n = 0
    for partition, queue in enumerate(inputs):
        state: dict = {}
        for lo in range(0, len(queue), BATCH):
            outcome = engine.process(engine.last_stage, partition, queue[lo : lo + BATCH], state)
            state.update(outcome.writes)
            n += outcome.predictions
    return time.process_time() - started, n


def measure_serving_costs(plan, model_dir: Path, payloads, partitions: int = 4, rounds: int = ROUNDS) -> dict:
    """µs per event of the scoring stage under each serving configuration (same batches, same run)."""
    import dataclasses

    from stream.pipeline.engine import Engine
    from stream.serving.deployment import Deployment
    from stream.serving.model import load_model
    from stream.serving.scorer import Serving
    from stream.kafka.topics import AppTopics
    from stream.settings import Settings

    t = step(f"serving costs in-process: {len(payloads):,} events, {rounds} rounds of each configuration")
    model = load_model(model_dir, expected_features=plan.vector)
    engine = Engine(plan, AppTopics.for_plan(Settings(app_id="bench"), plan), "bench", model=model, n_sources=partitions)
    inputs = _last_stage_inputs(engine, payloads, partitions)
    twin = dataclasses.replace(model, version=model.version + "-shadow")
    configs = {
        "champion_only": Serving.alone(model, reason_k=0),
        "reasons_for_positives": Serving.alone(model, reason_k=3),
        "path_reasons_for_positives": Serving.alone(model, reason_k=3, reason_method="path"),
        "reasons_for_every_event": Serving.alone(model, reason_k=3, reason_share=1.0),
        "one_shadow": Serving(Deployment(seq=1, champion=model.version, mode="shadow", challengers=(twin.version,)),
                              {model.version: model, twin.version: twin}, reason_k=0),
    }
    runs: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, serving in configs.items():
            engine.serving = serving
            seconds, n = _time_stage(engine, inputs)
            runs[name].append(seconds / max(n, 1) * 1e6)
    scored = sum(len(q) for q in inputs)
    report = {name: round(statistics.median(v), 2) for name, v in runs.items()}
    report = {"us_per_event": report, "events": scored}
    base = report["us_per_event"]["champion_only"]
    report["added_us_per_event"] = {k: round(v - base, 2) for k, v in report["us_per_event"].items() if k != "champion_only"}
    matrix = _served_matrix(model, engine, inputs)
    report.update(_model_costs(model, matrix))
    report["compiled_scorer"] = measure_compiled(model, matrix) if len(matrix) else {}
    engine.serving = configs["reasons_for_positives"]
    report["positive_share"] = _positive_share(engine, inputs)
    done(t, json.dumps(report["us_per_event"]))
    return report


def _positive_share(engine, inputs) -> float:
    yes = total = 0
    for partition, queue in enumerate(inputs):
        state: dict = {}
        for lo in range(0, len(queue), BATCH):
            outcome = engine.process(engine.last_stage, partition, queue[lo : lo + BATCH], state)
            state.update(outcome.writes)
            for out in outcome.outputs:
                if out.topic == engine.topics["predictions"]:
                    total += 1
                    yes += b'"decision":true' in out.value
    return round(yes / max(total, 1), 5)


def _served_matrix(model, engine, inputs) -> np.ndarray:
    """The vectors of one batch as the log holds them: score the batch and read the log records back."""
    import orjson

    engine.serving = engine.serving.__class__.alone(model, reason_k=0)
    outcome = engine.process(engine.last_stage, 0, inputs[0][:BATCH], {})
    logs = [orjson.loads(o.value) for o in outcome.outputs if o.topic == engine.topics["prediction_log"]]
    return np.array([[np.nan if v is None else v for v in r["features"].values()] for r in logs], dtype=np.float64)


def _model_costs(model, matrix: np.ndarray) -> dict:
    """The model's own per-row costs on the stage's vectors: predict in batches, path attribution, TreeSHAP."""
    from stream.serving.reasons import PathAttribution

    if not len(matrix):
        return {}
    reps = max(1, 20_000 // len(matrix))
    started = time.perf_counter()
    for _ in range(reps):
        model.predict(matrix)
    predict_us = (time.perf_counter() - started) / (reps * len(matrix)) * 1e6
    attribution = PathAttribution(model.booster)
    started = time.perf_counter()
    for _ in range(max(1, reps // 4)):
        attribution.contributions(matrix)
    path_us = (time.perf_counter() - started) / (max(1, reps // 4) * len(matrix)) * 1e6
    sample = matrix[:100]
    started = time.perf_counter()
    shap = model.booster.predict(sample, pred_contrib=True, num_threads=1)[:, :-1]
    shap_us = (time.perf_counter() - started) / len(sample) * 1e6
    path = attribution.contributions(sample)
    top1 = float(np.mean(np.argmax(np.abs(path), 1) == np.argmax(np.abs(shap), 1)))
    top3 = float(np.mean([set(np.argsort(-np.abs(a))[:3]) == set(np.argsort(-np.abs(b))[:3]) for a, b in zip(path, shap)]))
    return {
        "model_predict_us_per_row": round(predict_us, 2),
        "path_attribution_us_per_row": round(path_us, 2),
        "treeshap_us_per_row": round(shap_us, 1),
        "path_vs_treeshap_top1_agreement": round(top1, 3),
        "path_vs_treeshap_top3_set_agreement": round(top3, 3),
    }


def _own_topic_copy(path: Path, dest: Path, topic: str) -> tuple[Path, str]:
    """The repo, reading a topic of its own (the bench's topic already holds every earlier run's events)."""
    from features.feast_repo import load_plan, open_store
    from stream.feast import repo

    old = load_plan(open_store(path)).schema.topic
    shutil.copytree(path, dest, ignore=shutil.ignore_patterns("registry.db"))
    for definitions in dest.glob("*.py"):
        text = definitions.read_text()
        if f'topic="{old}"' in text:
            definitions.write_text(text.replace(f'topic="{old}"', f'topic="{topic}"'))
    repo.apply(dest)
    return dest, topic


def measure_swap(bootstrap: str, work: Path, prepared, paced, partitions: int, swaps: int = 3, rate: float = 300.0) -> dict:
    """Seconds from `sluice deploy champion V` to V's first prediction, under a paced stream."""
    import orjson

    from stream.kafka.clients import ensure_topics, make_producer
    from stream.kafka.control import publish
    from stream.kafka.reader import TopicReader
    from stream.serving.deployment import Deployment
    from stream.tools.bench.latency import run_id
    from stream.tools.process import worker_process

    t = step(f"deploy to first prediction: {swaps} swaps under {rate:,.0f} events/s")
    models = Path(work) / "swap-models"
    shutil.copytree(prepared.model_dir, models, dirs_exist_ok=True)
    v1 = (models / "champion").read_text().strip()
    v2 = v1 + "-b"
    shutil.copytree(models / v1, models / v2, dirs_exist_ok=True)
    meta = json.loads((models / v2 / "model.json").read_text())
    (models / v2 / "model.json").write_text(json.dumps(dict(meta, version=v2)))
    rid = run_id()
    topics = {"SLUICE_PREDICTIONS_TOPIC": f"swap-pred-{rid}", "SLUICE_PREDICTION_LOG_TOPIC": f"swap-log-{rid}",
              "SLUICE_DEPLOYMENTS_TOPIC": f"swap-deploy-{rid}", "SLUICE_MONITORING_TOPIC": f"swap-mon-{rid}"}
    repo_path, events_topic = _own_topic_copy(prepared.path, Path(work) / f"swap-repo-{rid}", f"swap-events-{rid}")
    ensure_topics(bootstrap, [events_topic, topics["SLUICE_PREDICTIONS_TOPIC"]], partitions)
    worker = worker_process(bootstrap, repo_path, models, work, f"swap-{rid}", app_id=f"swap-{rid}",
                            partitions=partitions, env=topics)
    reader = TopicReader(bootstrap, topics["SLUICE_PREDICTIONS_TOPIC"],
                         keep=lambda m: (m.timestamp()[1] / 1000, orjson.loads(m.value())["model_version"]))
    stop = threading.Event()
    producer = make_producer(bootstrap)

    def pace() -> None:
        gap = 1.0 / rate
        next_at = time.perf_counter()
        for key, value, _ in paced:
            if stop.is_set():
                return
            producer.produce(events_topic, value, key)
            producer.poll(0)
            next_at += gap
            time.sleep(max(0.0, next_at - time.perf_counter()))
        producer.flush(10)

    seconds = []
    worker.start().wait_ready()
    reader.start()
    pacer = threading.Thread(target=pace, daemon=True)
    pacer.start()
    try:
        time.sleep(3.0)
        for i in range(swaps):
            target = v2 if i % 2 == 0 else v1
            published = time.time()
            publish(bootstrap, topics["SLUICE_DEPLOYMENTS_TOPIC"], Deployment(seq=i + 1, champion=target, reason="bench"))
            deadline = time.time() + 30
            first, seen = None, 0
            while first is None and time.time() < deadline:
                records = reader.records[seen:]
                seen += len(records)
                # The prediction's Kafka timestamp: when the worker produced it.
                first = next((at for at, version in records if version == target and at >= published), None)
                time.sleep(0.05)
            if first is not None:
                seconds.append(round(first - published, 3))
    finally:
        stop.set()
        pacer.join(10)
        reader.stop()
        worker.stop()
    report = {"seconds": seconds, "median_s": statistics.median(seconds) if seconds else None, "rate": rate}
    done(t, f"median {report['median_s']} s over {len(seconds)} swaps")
    return report
