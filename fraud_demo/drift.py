"""`sluice demo --drift`: how often the monitor cries wolf, and how fast it sees a real change.

A repo with 38 days of history is prepared and a model trained (its
model.json carries the reference). Live events follow in two parts:

1. drawn from the training distribution: consecutive periods as long as
   the history, from the same generator and world (fraud as rare as in
   training), at least `events` of them (default 200,000);
2. the concept-drift switch: from the switch on, new fraud episodes are
   card testing (domestic, 1-20 per purchase, minutes apart) instead of
   bursts abroad, in a wave: `ATTACK_SHARE` of the events after the switch.
   At the history's own fraud rate (about 0.1% of events) such a change of
   P(fraud | x) moves no input distribution measurably: the wave is what
   makes it visible without labels.

A real worker scores the events, a real `sluice monitor` reads its
prediction_log (four partitions) and writes alerts to `monitoring`; every
figure is counted from the records read back from `monitoring`. The run
ends with one JSON line.

The events topic has one partition. The replay runs days of event time
through in seconds, so a few hundred milliseconds between the first stage's
partitions are hours of event time at the repartition stage: merchants'
1-hour counts then see fewer of the events before them than training did
(measured with four partitions: 32% of the values differ, PSI of the score
0.08 against 0.0004 with the offline values). That is a real
training/serving skew, which the monitor reports, but not the "stream
drawn from the training distribution" this scenario needs.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import DemoConfig, generate_transactions
from fraud_demo.prepare import prepare
from fraud_demo.workload import HISTORY_END
from stream.kafka.clients import ensure_topics, warmed_producer
from stream.kafka.reader import read_topic
from stream.settings import Settings
from stream.tools.process import monitor_process, worker_process

N_CARDS = 2000
HISTORY_DAYS = 38.0  # > 30 days before the validation rows, so the 30-day counts are steady in the reference
TREES = 100
DRIFT_DAYS = 3.0
ATTACK_SHARE = 0.15
MEAN_EPISODE = 9.0  # purchases per fraud episode (3-15)
BAD_FRACTION = 0.002  # malformed messages, dead-lettered: DLQ rates must not alarm at this level


@dataclass
class LiveStream:
    payloads: list[bytes]  # in arrival order, malformed ones included
    event_ms: np.ndarray  # of the valid events, in arrival order
    switch_ms: int  # first event time of the drift part
    before: int  # valid events before the switch
    attack_fraction: float  # the drift part's fraud_card_fraction


def _say(text: str) -> float:
    print(f"· {text}", flush=True)
    return time.perf_counter()


def _done(started: float, extra: str = "") -> None:
    print(f"  done in {time.perf_counter() - started:.1f} s{(' — ' + extra) if extra else ''}", flush=True)


def run_drift_demo(settings: Settings, *, events: int | None, rate: float, seed: int) -> int:
    from stream.kafka.broker import EmbeddedBroker

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-drift-")))
        bootstrap = settings.bootstrap_servers
        if bootstrap is None:
            t = _say("starting the embedded Kafka-protocol broker")
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap_servers
            _done(t, bootstrap)
        return _run(settings.with_(bootstrap_servers=bootstrap), stack, work, events or 200_000, rate, seed)


def _run(settings: Settings, stack, work: Path, n_before: int, rate: float, seed: int) -> int:
    topic, app_id = f"drift-{int(time.time())}", f"sluice-drift-{int(time.time())}"
    t = _say(f"preparing a repo: {HISTORY_DAYS:.0f} days of history for {N_CARDS} cards, a {TREES}-tree model")
    cfg = DemoConfig(seed=seed, n_cards=N_CARDS, n_merchants=N_CARDS // 5, legit_label_delay=timedelta(hours=12))
    prepared = prepare(settings.repo_path, work, cfg, history_days=HISTORY_DAYS, history_end=HISTORY_END, topic=topic, trees=TREES)
    meta = json.loads((prepared.trained.path / "model.json").read_text())
    has_reference = "reference" in meta
    _done(t, f"model {prepared.trained.version}, validation AUC {prepared.trained.validation_auc:.3f}, "
             f"reference in model.json: {'yes' if has_reference else 'no (the monitor takes the first events)'}")
    t = _say(f"generating {n_before:,} events from the training distribution, then {DRIFT_DAYS:g} days after the switch")
    live = _live(prepared, n_before, seed)
    warm = _warm(prepared, work)
    _done(t, f"{len(live.event_ms) - live.before:,} events after the switch (fraud_card_fraction {live.attack_fraction:.2f})")

    span_days = (int(live.event_ms[-1]) - int(live.event_ms[0])) / 86_400_000 + 2
    # One events partition: see the module's docstring (time compression and the repartition stage).
    ensure_topics(settings.bootstrap_servers, [topic], 1)
    port = _free_port()
    t = _say("starting the worker and the monitor")
    worker = worker_process(
        settings.bootstrap_servers, prepared.path, prepared.model_dir, work, "worker", app_id=app_id,
        partitions=settings.partitions, extra_args=["--warm-state", str(warm)],
        env={"SLUICE_MAX_EVENT_AHEAD_MS": str(int(span_days * 86_400_000))},
    )
    stack.callback(worker.stop)
    monitor = monitor_process(settings.bootstrap_servers, prepared.path, prepared.model_dir, work, "monitor", app_id=app_id, metrics_port=port)
    stack.callback(monitor.stop)
    worker.start()
    monitor.start()
    worker.wait_ready()
    monitor.wait_ready()
    _done(t, f"monitor metrics on http://127.0.0.1:{port}/metrics")

    t = _say(f"streaming {len(live.payloads):,} messages at {rate:,.0f}/s" if rate else f"streaming {len(live.payloads):,} messages")
    switch_wall, elapsed = _produce(settings.bootstrap_servers, topic, live, rate, port)
    caught_up = _wait_for_monitor(port, len(live.event_ms), started=time.perf_counter())
    print(flush=True)
    _done(t, f"{len(live.event_ms) / elapsed:,.0f} events/s produced; the monitor read {caught_up:,} log records")
    time.sleep(2.0)  # the last judged window's records
    cost = _monitor_cost(port, caught_up)
    records = [orjson.loads(m.value()) for m in read_topic(settings.bootstrap_servers, "monitoring", idle_s=3.0, timeout_s=120)]
    records = [r for r in records if r.get("group") == app_id]
    line = figures(records, live, switch_wall)
    line["reference"] = "model.json" if has_reference else "first events"
    line["monitor"] = cost
    t = _say("the same prediction log replayed through the monitor's core with naive settings")
    line.update(_naive(settings, prepared, live))
    _done(t)
    _print_summary(records, live, line)
    kept = _keep_logs(work)
    print(f"worker and monitor logs: {kept}", flush=True)
    print(json.dumps(line), flush=True)
    return 0 if caught_up >= len(live.event_ms) else 1


def _keep_logs(work: Path) -> Path:
    """The worker's and the monitor's logs, copied out of the work dir (which is removed)."""
    import shutil

    kept = Path(".sluice/drift")
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("worker.log", "monitor.log"):
        if (work / name).exists():
            shutil.copy(work / name, kept / name)
    return kept


def _live(prepared, n_before: int, seed: int) -> LiveStream:
    world, cfg, end = prepared.world, prepared.cfg, prepared.history_end
    period = timedelta(days=HISTORY_DAYS)
    frames, total, k = [], 0, 0
    while total <= n_before:  # whole periods, so fraud is as frequent as in the history
        frame, _ = generate_transactions(world, cfg, end + k * period, end + (k + 1) * period, id_prefix=f"n{k}-")
        frames.append(frame)
        total, k = total + len(frame), k + 1
    calm = pd.concat(frames, ignore_index=True)
    switch = calm["event_time"].iloc[n_before].to_pydatetime()
    attack = min(1.0, ATTACK_SHARE * cfg.txns_per_card_per_day * DRIFT_DAYS / (MEAN_EPISODE * (1 - ATTACK_SHARE)))
    drifted_cfg = replace(cfg, drift_at=switch, fraud_card_fraction=attack)
    drifted, _ = generate_transactions(world, drifted_cfg, switch, switch + timedelta(days=DRIFT_DAYS), id_prefix="d-")
    live = pd.concat([calm.iloc[:n_before], drifted], ignore_index=True)
    payloads = list(event_stream(live, bad_fraction=BAD_FRACTION, seed=seed))
    event_ms = pd.DatetimeIndex(live["event_time"]).as_unit("ms").asi8
    return LiveStream(payloads, event_ms, int(event_ms[n_before]), n_before, attack)


def _warm(prepared, work: Path) -> Path:
    from features.feast_repo import load_plan, open_store
    from features.warm import save, warm_state

    history = pd.read_parquet(prepared.path / "data" / "transactions.parquet")
    path = work / "warm.parquet"
    save(warm_state(load_plan(open_store(prepared.path)), history), path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _produce(bootstrap: str, topic: str, live: LiveStream, rate: float, port: int) -> tuple[float, float]:
    """(wall time the first drifted event was sent, seconds it all took)."""
    producer = warmed_producer(bootstrap, "sluice-drift-warmup")
    started, sent_valid, switch_wall = time.perf_counter(), 0, None
    for sent, payload in enumerate(live.payloads, 1):
        valid = payload.startswith(b"{") and b'"bad-' not in payload
        if valid and sent_valid == live.before:
            switch_wall = time.time()
        producer.produce(topic, payload, _key(payload))
        sent_valid += valid
        if sent % 2000 == 0:
            producer.poll(0)
            _progress(sent, _monitor_read(port) if sent % 20_000 == 0 else None, started)
        if rate:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0.002:
                time.sleep(ahead)
    producer.flush(60)
    return switch_wall or time.time(), time.perf_counter() - started


def _key(payload: bytes) -> bytes | None:
    try:
        return str(orjson.loads(payload)["card_id"]).encode()
    except Exception:  # noqa: BLE001 - malformed on purpose; any key will do
        return None


_last_read = [0]


def _progress(sent: int, read: int | None, started: float) -> None:
    if read is not None:
        _last_read[0] = read
    elapsed = max(time.perf_counter() - started, 1e-9)
    sys.stdout.write(f"\r  sent {sent:>8,}  monitor read {_last_read[0]:>8,}  {sent / elapsed:>7,.0f} messages/s   ")
    sys.stdout.flush()


def _monitor_read(port: int) -> int:
    """Prediction-log records the monitor has read (its own /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return _last_read[0]
    for family in text_string_to_metric_families(text):
        if family.name == "sluice_monitor_messages":
            return int(sum(s.value for s in family.samples if s.name.endswith("_total") and s.labels.get("topic") == "prediction_log"))
    return 0


def _monitor_cost(port: int, records: int) -> dict:
    """What the monitor process spent, from its own /metrics: CPU, attribution, memory, records dropped."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    rows = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "sluice_monitor_attributed_rows"]
    cpu = values.get("process_cpu_seconds_total", 0.0)
    return {
        "cpu_s": round(cpu, 1),
        "cpu_us_per_record": round(cpu / max(records, 1) * 1e6, 1),
        "attribution_cpu_s": round(values.get("sluice_monitor_attribution_seconds_total", 0.0), 1),
        "attributed_rows_last_window": int(rows[0]) if rows else 0,
        "state_bytes": int(values.get("sluice_monitor_state_bytes", 0)),
        "dropped_records": int(values.get("sluice_monitor_dropped_records", 0)),
    }


def _wait_for_monitor(port: int, expected: int, started: float, stall_s: float = 90.0) -> int:
    last, last_change = -1, time.monotonic()
    while True:
        read = _monitor_read(port)
        _progress(expected, read, started)
        if read >= expected:
            return read
        if read != last:
            last, last_change = read, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            return read
        time.sleep(1.0)


def _ms(text: str) -> int:
    return int(np.datetime64(text.rstrip("Z"), "ms").astype(np.int64))


def figures(records: list[dict], live: LiveStream, switch_wall: float) -> dict:
    """The scenario's figures from the monitoring records (alerts on event-time windows and on broker-time rates)."""
    alerts = [r for r in records if r["kind"] == "alert"]

    def before_switch(r: dict) -> bool:
        if r["window"].get("time") == "broker":  # rates: broker time is wall time
            return _ms(r["window"]["end"]) < switch_wall * 1000
        return _ms(r["last_event_time"]) < live.switch_ms

    false = [r for r in alerts if before_switch(r)]
    for r in false:
        print(f"  false alarm: {r['severity']} {r['statistic']} of {r['feature']} = {r['value']:.4g} "
              f"(threshold {r['threshold']}, window {r['window']['start']}..{r['window']['end']}, {r['window']['events']:,} events)")
    after = sorted((r for r in alerts if not before_switch(r) and r["window"].get("time") == "event"), key=lambda r: _ms(r["last_event_time"]))
    line = {
        "events_no_drift": live.before,
        "false_alarms": len(false),
        "false_alarms_per_million": round(len(false) / live.before * 1e6, 2),
        "drift_switch_at_event": live.before,
        "first_alert_after_events": None,
        "first_alert_after_s": None,
        "alerted_features": [],
    }
    if after:
        first = after[0]
        line["first_alert_after_events"] = _events_until(live, first)
        line["first_alert_after_s"] = round((_ms(first["last_event_time"]) - live.switch_ms) / 1000, 1)
        firsts: dict[str, dict] = {}
        for r in after:
            firsts.setdefault(r["feature"], r)
        line["alerted_features"] = list(firsts)
        line["first_alert_per_feature"] = {
            f: {"statistic": r["statistic"], "events": _events_until(live, r), "s": round((_ms(r["last_event_time"]) - live.switch_ms) / 1000, 1)}
            for f, r in firsts.items()
        }
    line["events_after_switch"] = int(len(live.event_ms) - live.before)
    return line


def _events_until(live: LiveStream, record: dict) -> int:
    t = _ms(record["last_event_time"])
    after = live.event_ms[live.before :]
    return int(((after >= live.switch_ms) & (after <= t)).sum())


def _naive(settings: Settings, prepared, live: LiveStream) -> dict:
    from stream.tools.bench.drift import naive_alarms
    from stream.services.monitor_models import ModelShelf

    logs = [orjson.loads(m.value()) for m in read_topic(settings.bootstrap_servers, settings.prediction_log_topic, expect=len(live.event_ms), idle_s=5.0, timeout_s=300)]
    shelf = ModelShelf(prepared.model_dir)
    return naive_alarms(logs, shelf.describe, live.switch_ms)


def _print_summary(records: list[dict], live: LiveStream, line: dict) -> None:
    print("\n=== drift scenario ===")
    print(f"no drift      {line['events_no_drift']:,} events: {line['false_alarms']} alarms ({line['false_alarms_per_million']} per million)")
    for key in sorted(k for k in line if k.startswith("naive_")):
        print(f"  naive       {key.removeprefix('naive_')}: {line[key]}")
    print(f"after switch  {line['events_after_switch']:,} events, card testing {ATTACK_SHARE:.0%} of them")
    if line["first_alert_after_events"] is None:
        print("  no alert after the switch")
    for feature, first in (line.get("first_alert_per_feature") or {}).items():
        print(f"  first alert on {feature:<44} {first['statistic']:<20} after {first['events']:>7,} events, {first['s'] / 3600:5.1f} h event time")
    print(f"records on monitoring: {len(records)} ({sum(r['kind'] == 'recovery' for r in records)} recoveries)")
