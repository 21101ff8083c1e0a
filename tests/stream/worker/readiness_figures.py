"""Figures for the operations guide: how fast readiness and stop signals follow the broker (not a test).

    .venv/bin/python -m tests.stream.worker.readiness_figures --runs 3

Per run, on a private embedded broker and the demo repo (built once in --work):
  * broker SIGKILLed under an idle worker -> /readyz answers 503;
  * broker restarted empty on the same port -> the worker exits (status 72);
  * SIGTERM to an idle worker -> exit; SIGTERM while predictions flow at --rate -> exit;
  * SIGTERM 3 s after the broker was SIGKILLed -> exit (bounded by SLUICE_SHUTDOWN_GRACE_S).
Times are wall clock on whatever else the machine runs; each worker start costs 15-30 s.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import orjson

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import DemoConfig, generate_transactions
from fraud_demo.prepare import prepare
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.tools.process import worker_process
from tests.conftest import NOW, ROOT


def _repo(work: Path) -> dict:
    saved = work / "repo.pickle"
    if saved.exists():
        return pickle.loads(saved.read_bytes())
    cfg = DemoConfig(seed=11, n_cards=300, n_merchants=60, fraud_card_fraction=0.05, legit_label_delay=timedelta(hours=12))
    p = prepare(ROOT / "feature_repo", work / "repo", cfg, history_days=10, history_end=NOW, topic="txn-figures", trees=30)
    repo = {"path": p.path, "topic": p.topic, "model_dir": p.model_dir, "world": p.world, "cfg": cfg}
    saved.write_bytes(pickle.dumps(repo))
    return repo


def _status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _until(check, timeout_s: float = 120.0, every_s: float = 0.05) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(every_s)
    return None


def _sigkill(broker: EmbeddedBroker) -> None:
    os.kill(broker.pid, signal.SIGKILL)  # an instant loss (its SIGTERM stop takes seconds)
    broker._proc.wait()
    broker._proc = None


def _stop_time(worker) -> tuple[float | None, int | None]:
    worker.proc.send_signal(signal.SIGTERM)
    took = _until(lambda: worker.proc.poll() is not None, timeout_s=120)
    return took, worker.proc.returncode if took is not None else None


def _producer_loop(bootstrap: str, topic: str, payloads: list[bytes], rate: float, stop: threading.Event) -> None:
    producer = make_producer(bootstrap)
    started = time.monotonic()
    for i, payload in enumerate(payloads):
        if stop.is_set():
            break
        producer.produce(topic, payload, orjson.loads(payload)["card_id"].encode())
        producer.poll(0)
        time.sleep(max(0.0, started + i / rate - time.monotonic()))
    producer.flush(5)


def one_run(repo: dict, work: Path, n: int, rate: float) -> dict:
    figures = {}
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    topic = repo["topic"]
    ensure_topics(broker.bootstrap_servers, [topic], 4)
    started = []

    def worker(name: str, metrics_port: int = 0):
        w = worker_process(
            broker.bootstrap_servers, repo["path"], repo["model_dir"], work, f"{name}-{n}", app_id=f"{name}-{n}",
            metrics_port=metrics_port,
        ).start()
        started.append(w)
        w.wait_ready()
        return w

    # ~1,350 events a day: 5 days outlast the load case at 1,000/s. Event
    # times stay in the past: an event ahead of its Kafka timestamp by over
    # an hour is dead-lettered, not predicted.
    start = NOW + timedelta(days=5 * n)
    live, _ = generate_transactions(repo["world"], repo["cfg"], start, start + timedelta(days=5), id_prefix=f"F{n}")
    payloads = list(event_stream(live, seed=n))
    try:
        # Idle worker: SIGTERM.
        w = worker("idle")
        figures["sigterm_idle_s"], figures["sigterm_idle_status"] = _stop_time(w)
        # Under load: SIGTERM after 5 s of a steady stream.
        w = worker("load")
        stop = threading.Event()
        feeder = threading.Thread(target=_producer_loop, args=(broker.bootstrap_servers, topic, payloads, rate, stop))
        feeder.start()
        # Stop while predictions flow: a first one seen, then 2 s more of the stream.
        figures["first_prediction_s"] = _until(
            lambda: any(True for _ in read_topic(broker.bootstrap_servers, "predictions", expect=1, timeout_s=1, idle_s=1)),
            every_s=0.2,
        )
        time.sleep(2)
        figures["sigterm_load_s"], figures["sigterm_load_status"] = _stop_time(w)
        stop.set()
        feeder.join()
        figures["load_predictions"] = sum(1 for _ in read_topic(broker.bootstrap_servers, "predictions", idle_s=3))
        # Broker lost under an idle worker, then back empty.
        metrics_port = free_port()
        w = worker("watch", metrics_port)
        _until(lambda: _status(metrics_port) == 200)
        _sigkill(broker)
        figures["unready_after_loss_s"] = _until(lambda: _status(metrics_port) != 200)
        broker = EmbeddedBroker(port=port).start()
        figures["exit_after_restart_s"] = _until(lambda: w.proc.poll() is not None)
        figures["exit_after_restart_status"] = w.proc.returncode
        # SIGTERM with the broker gone.
        ensure_topics(broker.bootstrap_servers, [topic], 4)
        w = worker("down")
        _sigkill(broker)
        time.sleep(3)  # the worker's clients are retrying by now
        figures["sigterm_broker_down_s"], figures["sigterm_broker_down_status"] = _stop_time(w)
    finally:
        for w in started:
            w.stop()
        broker.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s of the load case")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sluice-readiness-figures"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    repo = _repo(args.work)
    for n in range(args.runs):
        print(one_run(repo, args.work, n, args.rate), flush=True)


if __name__ == "__main__":
    main()
