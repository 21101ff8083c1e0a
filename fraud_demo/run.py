"""`sluice demo`: the card-fraud use case, end to end, on one machine.

Starts the embedded broker (unless bootstrap servers are given), writes a
seeded history into the feature repo, runs `feast apply` and `feast
materialize`, trains, starts a worker, streams live transactions, and prints
a summary followed by one JSON line. It stops everything it started.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import DemoConfig, generate_transactions, make_world, write_repo_data
from stream.feast import repo
from stream.kafka.clients import ensure_topics, warmed_producer
from stream.kafka.reader import TopicReader, read_topic
from stream.kafka.topics import AppTopics
from stream.pipeline.records import read_log
from stream.tools.process import worker_process
from stream.settings import Settings
from stream.lifecycle.train import train

#: Days of history. Training validates on the newest fifth of the rows whose labels are final (those older
#: than the 7-day label delay), and the drift monitor's reference is computed on those validation rows. They,
#: and the live stream that continues the history, must see the longest window (30 days, hopping by a day)
#: whole: with less, the reference holds the 30-day counts of a window still filling up, the live counts are
#: larger, and the monitor's first alerts are a false drift. (30 + 1) / 0.8 + 7 = 45.75 days.
HISTORY_DAYS = 46
N_CARDS = 3000


def _step(text: str) -> float:
    print(f"· {text}", flush=True)
    return time.perf_counter()


def _done(started: float, extra: str = "") -> None:
    print(f"  done in {time.perf_counter() - started:.1f} s{(' — ' + extra) if extra else ''}", flush=True)


def run_demo(settings: Settings, *, events: int | None, duration_s: float | None, rate: float, seed: int) -> int:
    from stream.kafka.broker import EmbeddedBroker

    with contextlib.ExitStack() as stack:
        bootstrap = settings.bootstrap_servers
        if bootstrap is None:
            t = _step("starting the embedded Kafka-protocol broker")
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap_servers
            _done(t, bootstrap)
        settings = settings.with_(bootstrap_servers=bootstrap)
        return _run(settings, stack, events=events, duration_s=duration_s, rate=rate, seed=seed)


def _run(settings: Settings, stack: contextlib.ExitStack, *, events, duration_s, rate, seed) -> int:
    now = datetime.now(tz=UTC).replace(second=0, microsecond=0)
    cfg = DemoConfig(seed=seed, n_cards=N_CARDS, n_merchants=400)
    world, history, result = _prepare(settings, cfg, now)
    warm_path = _warm_start(settings.repo_path, history)

    n_live = events if events is not None else (None if duration_s else 20_000)
    per_day = N_CARDS * cfg.txns_per_card_per_day
    span_days = (n_live or max(rate, 1000) * (duration_s or 10)) / per_day * 1.3
    live, live_labels = generate_transactions(world, cfg, now, now + timedelta(days=span_days), id_prefix="live")
    if n_live is not None:
        live = live.iloc[:n_live]
    truth = dict(zip(live_labels["transaction_id"], live_labels["is_fraud"]))

    worker = _start_worker(settings, stack, warm_path, span_days)
    # The prediction log, read while events stream in: live progress and the summary.
    reader = TopicReader(settings.bootstrap_servers, settings.prediction_log_topic, keep=lambda m: read_log(m.value()))
    reader.start()
    stack.callback(reader.stop)
    payloads = list(event_stream(live, bad_fraction=0.002, seed=seed))
    _step(f"streaming {'%d events' % len(payloads) if n_live else '%.0f s of events' % duration_s} at {rate:,.0f}/s")
    sent, started = _stream(settings, payloads, reader, rate, duration_s)
    n_bad = sum(1 for p in payloads[:sent] if _is_bad(p))
    expected = sent - n_bad
    wait_until = time.monotonic() + 60
    while len(reader.records) < expected and time.monotonic() < wait_until:
        _progress(sent, len(reader.records), started)
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    _progress(sent, len(reader.records), started)
    print(flush=True)
    dlq = sum(1 for _ in read_topic(settings.bootstrap_servers, AppTopics.of(settings, "transactions").dlq, idle_s=1.5))
    worker.stop()
    summary = _summary(reader.records, truth, sent, dlq, elapsed, result)
    print(json.dumps(summary["json"]), flush=True)
    return 0 if summary["json"]["predictions"] + dlq >= sent else 1


def _prepare(settings: Settings, cfg: DemoConfig, now: datetime):
    """History into the repo, `feast apply` + materialize, a model trained: (world, history, training result)."""
    repo_path = settings.repo_path
    t = _step(f"generating {HISTORY_DAYS} days of history for {N_CARDS} cards")
    world = make_world(cfg)
    history, labels = generate_transactions(world, cfg, now - timedelta(days=HISTORY_DAYS), now, id_prefix="h")
    write_repo_data(repo_path, world, history, labels)
    _done(t, f"{len(history):,} transactions, {int(labels['is_fraud'].sum()):,} fraud")

    t = _step("feast apply + materialize (card profiles into the online store)")
    repo.apply(repo_path)
    repo.materialize(repo_path, datetime(2000, 1, 1, tzinfo=UTC), now, views=["card_profile"])
    _done(t)

    t = _step("training LightGBM on point-in-time-correct features")
    result = train(repo_path, settings.model_dir)
    _done(t, f"model {result.version}, validation AUC {result.validation_auc:.3f}, {result.rows:,} labelled rows")
    return world, history, result


def _warm_start(repo_path: Path, history) -> Path:
    from features.feast_repo import load_plan, open_store
    from features.warm import save, warm_state

    t = _step("warm start: window state at the end of the history, so live features continue it")
    warm_path = Path(".sluice/run/warm.parquet")
    warm_path.parent.mkdir(parents=True, exist_ok=True)
    save(warm_state(load_plan(open_store(repo_path)), history), warm_path)
    _done(t)
    return warm_path


def _start_worker(settings: Settings, stack: contextlib.ExitStack, warm_path: Path, span_days: float):
    t = _step("starting the worker")
    # One events partition, as in `sluice demo --drift`: the demo replays days of event time in seconds, and over
    # several partitions a few hundred ms between them are hours of event time at the merchant stage, whose 1-hour
    # counts then differ from training's (docs/guarantees.md, stage skew): a true skew the monitor reports
    # (L-inf 0.108 over 0.1 on merchant_txn_count_1h), but not what a first run should show.
    ensure_topics(settings.bootstrap_servers, ["transactions"], 1)
    worker = worker_process(
        settings.bootstrap_servers, settings.repo_path, settings.model_dir, Path(".sluice/run"), "worker",
        app_id=f"sluice-demo-{int(time.time())}", partitions=settings.partitions, metrics_port=settings.metrics_port,
        extra_args=["--warm-state", str(warm_path)],
        # The demo streams days of transactions in seconds: their event times
        # run ahead of the clock by up to the whole span, which the worker
        # would otherwise dead-letter as implausibly far in the future.
        env={"SLUICE_MAX_EVENT_AHEAD_MS": str(int((span_days + 1) * 86_400_000))},
    )
    stack.callback(worker.stop)
    worker.start().wait_ready()
    _done(t, f"metrics on http://127.0.0.1:{settings.metrics_port}/metrics" if settings.metrics_port else "")
    return worker


def _stream(settings: Settings, payloads: list[bytes], reader, rate: float, duration_s: float | None) -> tuple[int, float]:
    """Produce at `rate`/s (for at most `duration_s`); (events sent, start time)."""
    # Warmed up, so that its connection set-up is not counted as latency.
    producer = warmed_producer(settings.bootstrap_servers, "sluice-demo-warmup")
    sent, started = 0, time.perf_counter()
    deadline = started + duration_s if duration_s else None
    for payload in payloads:
        if deadline and time.perf_counter() > deadline:
            break
        producer.produce("transactions", payload, _card_key(payload))
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
            _progress(sent, len(reader.records), started)
        if rate:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0.002:
                time.sleep(ahead)
    producer.flush(30)
    return sent, started


def _card_key(payload: bytes) -> bytes | None:
    try:
        return str(orjson.loads(payload)["card_id"]).encode()
    except Exception:  # noqa: BLE001 - malformed on purpose; any key will do
        return None


def _is_bad(payload: bytes) -> bool:
    return b'"bad-' in payload or not payload.startswith(b"{")


def _progress(sent: int, predicted: int, started: float) -> None:
    elapsed = max(time.perf_counter() - started, 1e-9)
    sys.stdout.write(f"\r  sent {sent:>8,}  predictions {predicted:>8,}  {sent / elapsed:>8,.0f} events/s   ")
    sys.stdout.flush()


def _summary(records: list[dict], truth: dict, sent: int, dlq: int, elapsed: float, result) -> dict:
    latencies = np.array([r["latency_ms"]["total"] for r in records]) if records else np.zeros(1)
    scores = np.array([r["score"] for r in records]) if records else np.zeros(1)
    flagged = [r for r in records if r["decision"]]
    by_card: dict[str, list[float]] = {}
    for r in flagged:
        by_card.setdefault(r["entity"]["card_id"], []).append(r["score"])
    top = sorted(by_card.items(), key=lambda kv: (-len(kv[1]), -max(kv[1])))[:5]
    labels = np.array([truth.get(r["transaction_id"], 0) for r in records])
    decisions = np.array([r["decision"] for r in records])
    tp = int((labels.astype(bool) & decisions).sum())
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99))
    print("\n=== Sluice demo summary ===")
    print(f"model            {result.version} (validation AUC {result.validation_auc:.3f}, threshold {result.threshold:.3f})")
    print(f"events sent      {sent:,} in {elapsed:.1f} s  ({sent / elapsed:,.0f} events/s)")
    print(f"predictions      {len(records):,}   dead-lettered {dlq:,}")
    print(f"latency          p50 {p50:.1f} ms   p99 {p99:.1f} ms   (event produced -> prediction produced)")
    hist, edges = np.histogram(scores, bins=[0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    print("score histogram  " + "  ".join(f"[{a:.2f},{b:.2f}):{c}" for a, b, c in zip(edges[:-1], edges[1:], hist)))
    print(f"flagged          {len(flagged):,}  (true fraud among them: {tp:,}; fraud in stream: {int(labels.sum()):,})")
    for card, card_scores in top:
        print(f"  top card {card}: {len(card_scores)} flagged, max score {max(card_scores):.3f}")
    return {
        "json": {
            "events": sent,
            "predictions": len(records),
            "dlq": dlq,
            "events_per_s": round(sent / elapsed, 1),
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "model_version": result.version,
        }
    }
