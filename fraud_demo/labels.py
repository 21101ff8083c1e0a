"""`sluice demo --labels`: transactions, then their chargebacks, minutes to weeks late, joined to what was served.

A small demo repo and model are prepared in a temporary directory; a worker
scores a stream of transactions and a join worker (`sluice label-join`,
SLUICE_LABEL_JOIN=service) joins the labels off the scoring path. The labels are the
chargebacks of the fraudulent ones (the generator's delays: 10 minutes to 45
days), some sent twice, some reversed days later (a correction to 0), and
some for transactions that never arrive. A legitimate transaction gets no
label: its window closes after 7 days with label 0 (the FeatureService's
rule). Labels are sent when their label time passes: while transactions
stream, the label clock is their event time; afterwards it runs on at
`day_s` seconds per day until the last chargeback, and a final clock record
closes every window and grace.

Everything in the closing JSON line is measured afterwards: counts from the
topics, the parquet dataset written from `labeled`, the pending state's size
from the join's changelog; `auc_online` by the online evaluation of the
`labeled` records, `auc_offline_same_rows` by recomputing those rows'
features offline (features.offline over the events as the worker read them,
Feast for the batch view) and scoring them with the same model.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from fraud_demo import exploration
from fraud_demo.arrivals import event_stream
from fraud_demo.generator import DemoConfig, generate_transactions
from fraud_demo.prepare import prepare
from fraud_demo.workload import HISTORY_END
from features.feast_repo import load_plan, open_store
from stream.kafka.clients import ensure_topics, warmed_producer
from stream.kafka.reader import read_topic
from stream.pipeline.clock import TICK_KEY
from stream.kafka.topics import AppTopics
from stream.lifecycle.evaluation import auc
from stream.lifecycle.label_join import JoinConfig
from stream.lifecycle.labeled_train import events_frame, offline_vectors, read_dataset, skew
from stream.serving.model import load_model
from stream.settings import Settings
from stream.worker.labels import LabelSender
from stream.services import labels as labeled_sink
from stream.tools import label_audit
from stream.tools.process import label_join_process, worker_process

_DAY_MS = 86_400_000


def _ms(times) -> np.ndarray:
    return pd.DatetimeIndex(times).as_unit("ms").asi8


def label_plan(live, truth, seed: int) -> list[tuple[int, str, int]]:
    """(label time ms, transaction id, label): chargebacks, duplicates, reversals, labels of unknown transactions."""
    rng = np.random.default_rng([seed, 13])
    fraud = truth[truth["is_fraud"] == 1]
    times = _ms(fraud["label_time"])
    ids = fraud["transaction_id"].to_numpy()
    plan = [(int(t), str(i), 1) for t, i in zip(times, ids)]
    for k in rng.choice(len(ids), max(1, len(ids) // 10), replace=False):
        plan.append((int(times[k]) + 3_600_000, str(ids[k]), 1))  # sent again an hour later
    for k in rng.choice(len(ids), max(1, len(ids) // 20), replace=False):
        plan.append((int(times[k]) + 3 * _DAY_MS, str(ids[k]), 0))  # the chargeback is reversed
    start, end = int(_ms(live["event_time"])[0]), int(_ms(live["event_time"])[-1])
    for g in range(max(20, len(ids) // 20)):
        plan.append((int(rng.integers(start, end + 2 * _DAY_MS)), f"ghost-{seed}-{g:05d}", 1))
    return sorted(plan)


def run_label_demo(settings: Settings, *, events: int | None, rate: float, seed: int, day_s: float = 0.5, prepared=None,
                   explore: float = 0.0) -> int:
    """The scenario; `prepared` (fraud_demo.prepare.Prepared): a repo and model to use instead of preparing one.

    `explore`: serve with that exploration share, and send no chargeback for blocked transactions (fraud_demo.exploration).
    """
    from stream.kafka.broker import EmbeddedBroker

    with contextlib.ExitStack() as stack:
        bootstrap = settings.bootstrap_servers or stack.enter_context(EmbeddedBroker()).bootstrap_servers
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-labels-")))
        line = _run(settings.with_(bootstrap_servers=bootstrap), stack, work, events or 20_000, rate, seed, day_s, prepared,
                    explore)
    accounted = line.pop("labels_accounted") and line.pop("predictions_accounted")
    print(f"  every label has one outcome and every prediction one row: {accounted}", flush=True)
    if "blocking" in line:
        exploration.describe(line["blocking"])
    print(json.dumps(line), flush=True)
    ok = line["skew_mismatches"] == 0 and line["auc_online"] == line["auc_offline_same_rows"]
    return 0 if ok and accounted else 1


def _run(settings: Settings, stack, work: Path, n: int, rate: float, seed: int, day_s: float, prepared, explore: float) -> dict:
    run = f"labels-{int(time.time() * 1000)}"
    if prepared is None:
        cards = max(300, n // 10)
        cfg = DemoConfig(seed=seed, n_cards=cards, n_merchants=max(50, cards // 20), legit_label_delay=timedelta(hours=12))
        t = _step(f"preparing a demo repo ({cards:,} cards) and a model in {work}")
        prepared = prepare(settings.repo_path, work, cfg, history_days=2.0, history_end=HISTORY_END, topic=run, trees=30)
        _done(t)
    cfg, topic, start = prepared.cfg, prepared.topic, prepared.history_end
    days = n / (cfg.n_cards * cfg.txns_per_card_per_day) * 1.2 + 0.1
    live, truth = generate_transactions(prepared.world, cfg, start, start + timedelta(days=days), id_prefix=f"d{seed}-")
    live, truth = live.iloc[:n], truth.iloc[:n]
    roles = ("predictions", "prediction_log", "labels", "labeled", *(("deployments",) if explore else ()))
    own = {f"{k}_topic": f"{run}.{k}" for k in roles}
    topics = AppTopics.of(settings.with_(app_id=run, **own), topic)
    env = {**topics.env(), "SLUICE_LABEL_JOIN": "service", "SLUICE_MAX_EVENT_AHEAD_MS": str(int((days + 400) * _DAY_MS))}
    bootstrap, partitions = settings.bootstrap_servers, settings.partitions
    ensure_topics(bootstrap, [topic, topics["prediction_log"], topics["labels"]], partitions)
    if explore:
        exploration.deploy(bootstrap, topics.deployments, prepared.trained.version, explore, seed)
    t = _step("starting a worker and a join worker (the label join off the scoring path: sluice label-join)")
    worker = worker_process(bootstrap, prepared.path, prepared.model_dir, work, "worker", app_id=run, partitions=partitions, env=env)
    joiner = label_join_process(bootstrap, prepared.path, work, "label-join", app_id=run, partitions=partitions, env=env)
    for proc in (worker, joiner):
        stack.callback(proc.stop)
        proc.start()
    worker.wait_ready()
    joiner.wait_ready()
    _done(t)
    plan = load_plan(open_store(prepared.path))
    join = JoinConfig.from_tags(plan.tags, plan.schema.event_id)
    sender = LabelSender(bootstrap, topics["labels"], partitions, id_field=join.id_field, label_field=join.label_field)
    labels = label_plan(live, truth, seed)
    t = _step(f"streaming {len(live):,} transactions at {rate:,.0f}/s with their chargebacks as they come due")
    # Exploring, a chargeback depends on the decision: all of them are sent once every transaction is scored.
    last = _stream(bootstrap, topic, live, [] if explore else labels, sender, rate, seed)
    # The label clock must not run ahead of the worker: wait until every transaction is scored.
    scored = sum(1 for _ in read_topic(bootstrap, topics["predictions"], expect=len(live), timeout_s=120, idle_s=15))
    _done(t, f"{scored:,} predictions")
    if explore:
        log = labeled_sink.log_records(bootstrap, topics["prediction_log"], join.id_field, idle_s=2.0)
        labels = exploration.let_through(labels, log, join.id_field)
    t = _step(f"the label clock runs on at {day_s:g} s a day until the last chargeback")
    _tail(sender, labels, last, day_s, join)
    labeled = _outcomes(bootstrap, topics["labeled"], join.id_field, sent=sender.sent, predictions=len(live))
    worker.stop()
    joiner.stop()
    _done(t)
    t = _step("measuring: topics, the parquet dataset, the changelog; offline features for every labeled row")
    line = _measure(bootstrap, topics, plan, prepared, join, labeled)
    if explore:
        log = labeled_sink.log_records(bootstrap, topics["prediction_log"], join.id_field, idle_s=2.0)
        line["blocking"] = exploration.report(log, truth, labeled, join.id_field, prepared.trained.version, join.window_ms)
    _done(t)
    return line


def _step(text: str) -> float:
    print(f"· {text}", flush=True)
    return time.perf_counter()


def _done(started: float, extra: str = "") -> None:
    print(f"  done in {time.perf_counter() - started:.1f} s{(' - ' + extra) if extra else ''}", flush=True)


def _stream(bootstrap: str, topic: str, live, labels: list, sender: LabelSender, rate: float, seed: int) -> int:
    """Transactions at `rate`, each label sent once the stream's event time passes its label time."""
    producer = warmed_producer(bootstrap, "sluice-demo-warmup")
    times = _ms(live["event_time"])
    cards = live["card_id"].to_numpy()
    nxt, started = 0, time.perf_counter()
    for sent, (payload, t, card) in enumerate(zip(event_stream(live, seed=seed), times, cards), start=1):
        while nxt < len(labels) and labels[nxt][0] <= t:
            sender.send(labels[nxt][1], labels[nxt][2], labels[nxt][0])
            nxt += 1
        producer.produce(topic, payload, str(card).encode())
        if sent % 1000 == 0:
            producer.poll(0)
        ahead = sent / rate - (time.perf_counter() - started) if rate else 0
        if ahead > 0.002:
            time.sleep(ahead)
    producer.flush(30)
    sender.flush()
    return nxt


def _tail(sender: LabelSender, labels: list, nxt: int, day_s: float, join: JoinConfig) -> None:
    clock = labels[nxt - 1][0] if nxt else labels[0][0]
    while nxt < len(labels):
        clock += int(_DAY_MS * 0.05 / day_s)  # what 50 ms of wall time are worth
        while nxt < len(labels) and labels[nxt][0] <= clock:
            sender.send(labels[nxt][1], labels[nxt][2], labels[nxt][0])
            nxt += 1
        sender.clock(clock)
        time.sleep(0.05)
    # Every window, every retention and every grace is over.
    sender.clock(labels[-1][0] + join.window_ms + join.grace_ms + 2 * join.bucket_ms)
    sender.flush()


def _outcomes(bootstrap: str, topic: str, id_field: str, *, sent: int, predictions: int, limit_s: float = 120.0) -> list:
    """The labeled records once every label and every prediction has its outcome (or the time is up)."""
    deadline = time.monotonic() + limit_s
    while True:
        labeled = labeled_sink.labeled_records(bootstrap, topic, id_field, idle_s=3.0)
        kinds = [r["kind"] for r in labeled]
        rows = kinds.count("joined") + kinds.count("unlabeled")
        if (len(kinds) - kinds.count("unlabeled") >= sent and rows >= predictions) or time.monotonic() > deadline:
            return labeled
        time.sleep(1.0)


def _measure(bootstrap, topics: AppTopics, plan, prepared, join, labeled: list) -> dict:
    id_field = plan.schema.event_id
    events = sum(1 for m in read_topic(bootstrap, prepared.topic, idle_s=2.0, timeout_s=300) if m.key() != TICK_KEY)
    log = labeled_sink.log_records(bootstrap, topics["prediction_log"], id_field, idle_s=2.0)
    counts = label_audit.audit(bootstrap, labels_topic=topics["labels"], labeled=labeled, predictions=len(log))
    dataset = Path(".sluice/run/labeled")
    written = labeled_sink.write_dataset(labeled, dataset, id_field)
    rows = read_dataset(dataset, id_field)
    rows = rows[rows["label"].notna()].reset_index(drop=True)
    offline = offline_vectors(prepared.path, events_frame(plan, log))
    report = skew(plan, rows, offline)
    model = load_model(prepared.model_dir, expected_features=plan.vector)
    offline_scores = model.predict(offline.loc[rows[id_field].astype(str), list(plan.vector)].to_numpy(dtype=np.float64))
    from stream.lifecycle.online_eval import OnlineEvaluation

    evaluation = OnlineEvaluation(id_field, label_window_ms=join.window_ms)
    for record in labeled:
        evaluation.add_labeled(record)
    online = evaluation.combined(model.version, "champion").metrics()
    per_prediction, seen = label_audit.pending_bytes(bootstrap, topics.label_join_changelog("service"))
    print(f"  {written:,} labeled records in {dataset} ({len(rows):,} rows with a label); "
          f"{seen:,} pending predictions in the changelog", flush=True)
    for example in report.examples:
        print(f"  skew e.g. {example}", flush=True)
    return {
        "events": events,
        "predictions": len(log),
        **{k: v for k, v in counts.items() if not k.endswith("accounted")},
        "pending_bytes_per_prediction": round(per_prediction, 1),
        "auc_online": online["auc"],
        "auc_offline_same_rows": auc(rows["label"].to_numpy() >= 0.5, offline_scores),
        "skew_values_checked": report.values,
        "skew_mismatches": report.mismatches,
        "labels_accounted": counts["accounted"],
        "predictions_accounted": counts["predictions_accounted"],
    }
