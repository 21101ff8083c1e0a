"""`sluice demo --rollout`: a second model taken from shadow to canary to champion, then rolled back, live.

Trains two versions, serves the first, and while events stream: puts the
second in shadow, then in a canary whose share the rollout controller ramps
(0.05, 0.25, 0.5, 1), promotes it, and finally rolls back to the first.
Every change is a deployment record. At the end every figure of the JSON
line is read back from the topics: predictions by version and by route,
shadow scores in the log, deployment records, and whether any valid event
is without an outcome (lost) or has more than one prediction (duplicates).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import DemoConfig, generate_transactions
from fraud_demo.run import N_CARDS, _card_key, _done, _prepare, _start_worker, _step, _warm_start
from stream.kafka.clients import warmed_producer
from stream.kafka.control import history, publish
from stream.kafka.reader import TopicReader, read_topic
from stream.kafka.topics import AppTopics
from stream.lifecycle.train import train
from stream.serving.deployment import Deployment
from stream.serving.rollout import now_iso
from stream.settings import Settings
from stream.services.rollout import Controller

#: When each change happens, as a share of the events sent.
SCHEDULE = (0.10, 0.25, 0.65, 0.85)
RAMP = (0.05, 0.25, 0.5, 1.0)


def run_rollout_demo(settings: Settings, *, events: int | None, rate: float, seed: int) -> int:
    from stream.kafka.broker import EmbeddedBroker

    with contextlib.ExitStack() as stack:
        if settings.bootstrap_servers is None:
            t = _step("starting the embedded Kafka-protocol broker")
            settings = settings.with_(bootstrap_servers=stack.enter_context(EmbeddedBroker()).bootstrap_servers)
            _done(t, settings.bootstrap_servers)
        return _run(settings, stack, events or 30_000, rate or 2000.0, seed)


def _run(settings: Settings, stack: contextlib.ExitStack, n_events: int, rate: float, seed: int) -> int:
    now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
    cfg = DemoConfig(seed=seed, n_cards=N_CARDS, n_merchants=400)
    world, history_frame, first = _prepare(settings, cfg, now)
    t = _step("training a second version (other seed and size: the challenger)")
    second = train(settings.repo_path, settings.model_dir, num_trees=120, seed=seed + 100)
    (Path(settings.model_dir) / "champion").write_text(first.version + "\n")  # the first one serves
    _done(t, f"model {second.version}, validation AUC {second.validation_auc:.3f}")
    v1, v2 = first.version, second.version
    warm_path = _warm_start(settings.repo_path, history_frame)

    per_day = N_CARDS * cfg.txns_per_card_per_day
    span_days = n_events / per_day * 1.3
    live, _ = generate_transactions(world, cfg, now, now + timedelta(days=span_days), id_prefix="roll")
    live = live.iloc[:n_events]
    payloads = list(event_stream(live, bad_fraction=0.002, seed=seed))
    _start_worker(settings, stack, warm_path, span_days)
    controller = stack.enter_context(Controller(settings, "card_id", v1, interval_s=0.25))
    reader = TopicReader(settings.bootstrap_servers, settings.predictions_topic)
    reader.start()
    stack.callback(reader.stop)

    step_s = max(0.5, (SCHEDULE[2] - SCHEDULE[1]) * len(payloads) / rate / (len(RAMP) + 2))
    changes = [
        lambda d: d.but(mode="shadow", challengers=(v2,), reason=f"shadow {v2}"),
        lambda d: d.but(mode="canary", challengers=(v2,), share=RAMP[0], ramp=RAMP, step=0, step_after_s=step_s,
                        reason=f"canary {v2}, ramp {RAMP} every {step_s:.1f} s"),
        lambda d: Deployment(seq=d.seq, champion=v2, reason=f"promote {v2} after its canary (ramp at share {d.share:g})"),
        lambda d: Deployment(seq=d.seq, champion=v1, reason=f"rollback to {v1}"),
    ]
    marks = [int(f * len(payloads)) for f in SCHEDULE]

    def deployer(sent_so_far) -> None:
        for mark, change in zip(marks, changes):
            while sent_so_far() < mark:
                time.sleep(0.02)
            if change is changes[2]:  # promote once the ramp is through (or after 15 s: promote what there is)
                deadline = time.monotonic() + 15
                while controller.current.mode == "canary" and controller.current.step < len(RAMP) - 1:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
            record = change(controller.current).but(seq=controller.current.seq + 1, at=now_iso(), by="sluice demo")
            publish(settings.bootstrap_servers, settings.deployments_topic, record)
            print(f"\n  deployment #{record.seq}: {record.reason}", flush=True)

    sent_box = [0]
    thread = threading.Thread(target=deployer, args=(lambda: sent_box[0],), daemon=True)
    thread.start()
    _step(f"streaming {len(payloads):,} events at {rate:,.0f}/s while the rollout runs")
    sent = _stream_counting(settings, payloads, rate, sent_box)
    thread.join(60)
    n_bad = sum(1 for p in payloads if b'"bad-' in p or not p.startswith(b"{"))
    reader.wait_for(sent - n_bad, idle_s=20, limit_s=120)
    time.sleep(2.0)
    summary = _read_back(settings, live, sent)
    print(json.dumps(summary), flush=True)
    return 0 if summary["lost"] == 0 and summary["duplicates"] == 0 else 1


def _stream_counting(settings, payloads, rate, sent_box) -> int:
    """Produce at `rate`/s, keeping the count of events sent where the deployer sees it."""
    producer = warmed_producer(settings.bootstrap_servers, "sluice-demo-warmup")
    started = time.perf_counter()
    for sent, payload in enumerate(payloads, 1):
        producer.produce("transactions", payload, _card_key(payload))
        sent_box[0] = sent
        if sent % 1000 == 0:
            producer.poll(0)
            sys.stdout.write(f"\r  sent {sent:>8,}   ")
            sys.stdout.flush()
        ahead = sent / rate - (time.perf_counter() - started)
        if ahead > 0.002:
            time.sleep(ahead)
    producer.flush(30)
    print(flush=True)
    return len(payloads)


def _read_back(settings: Settings, live, sent: int) -> dict:
    """Every figure from the topics."""
    bootstrap = settings.bootstrap_servers
    topics = AppTopics.of(settings, "transactions")
    predictions = [orjson.loads(m.value()) for m in read_topic(bootstrap, topics.predictions, idle_s=3)]
    log_shadow = 0
    for m in read_topic(bootstrap, topics.prediction_log, idle_s=3):
        record = orjson.loads(m.value())
        log_shadow += sum(1 for v in record.get("scores", {}) if v != record["model_version"])
    dlq = sum(1 for _ in read_topic(bootstrap, topics.dlq, idle_s=2))
    late_ids = {orjson.loads(m.value()).get("transaction_id") for m in read_topic(bootstrap, topics.late, idle_s=2)}
    ids = Counter(p["transaction_id"] for p in predictions)
    valid = set(live["transaction_id"])
    deploys = history(bootstrap, topics.deployments, Deployment.from_json)
    return {
        "events": sent,
        "predictions": len(predictions),
        "dlq": dlq,
        "by_version": dict(Counter(p["model_version"] or "rules" for p in predictions)),
        "by_route": dict(Counter(p["route"] for p in predictions)),
        "shadow_scores": log_shadow,
        "deploy_events": len(deploys),
        "deploy_reasons": [f"#{d.seq} {d.by}: {d.reason}" for d in deploys],
        "lost": len(valid - set(ids) - late_ids),
        "duplicates": sum(c - 1 for c in ids.values() if c > 1),
    }
