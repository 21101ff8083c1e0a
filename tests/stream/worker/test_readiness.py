"""Readiness tells the truth about the broker; a broker that lost its log ends the worker; a stop signal is obeyed."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import urllib.error
import urllib.request
from datetime import timedelta

from fraud_demo.arrivals import event_stream
from fraud_demo.generator import generate_transactions
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.kafka.clients import ensure_topics
from stream.kafka.probe import LogView
from stream.kafka.reader import read_topic
from stream.tools.process import worker_process
from stream.worker.broker_watch import EXIT_LOG_LOST, evidence_of_loss
from stream.worker.logs import EXIT_STOP_CUT, RepeatLimit
from tests.conftest import NOW
from tests.stream.worker.test_label_join_worker import _produce_events

#: Generous bounds for waits that must end (not speed checks: `sluice bench` and the report measure those).
SETTLE_S = 60.0


def _readiness(port: int) -> tuple[int, float | None]:
    """(/readyz status, sluice_ready) from the worker's endpoint."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    gauge = next((float(line.split()[1]) for line in lines if line.startswith("sluice_ready ")), None)
    return status, gauge


def _readyz_body(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()


def _wait_for(port: int, wanted: tuple[int, float]) -> tuple[int, float | None]:
    deadline, seen = time.monotonic() + SETTLE_S, None
    while time.monotonic() < deadline:
        seen = _readiness(port)
        if seen == wanted:
            break
        time.sleep(0.2)
    return seen


def _exit_status(proc: subprocess.Popen) -> int | None:
    try:
        return proc.wait(timeout=SETTLE_S)
    except subprocess.TimeoutExpired:
        return None


def test_an_idle_worker_turns_unready_without_its_broker_and_exits_once_the_broker_lost_its_log(trained_repo, tmp_path):
    # Before, an idle worker stayed ready with its broker gone (its clients
    # only notice when they next need the broker), and after the broker came
    # back without its data it went on as if nothing happened until the next
    # event made one of its clients fail, with a traceback or after 60 s.
    topic = trained_repo["topic"]
    live, _ = generate_transactions(trained_repo["world"], trained_repo["cfg"], NOW + timedelta(days=6), NOW + timedelta(days=6, hours=1), id_prefix="R")
    payloads = list(event_stream(live, seed=3))[:100]
    port, metrics_port = free_port(), free_port()
    broker = EmbeddedBroker(port=port).start()
    worker = None
    try:
        ensure_topics(broker.bootstrap_servers, [topic], 4)
        worker = worker_process(
            broker.bootstrap_servers, trained_repo["path"], trained_repo["model_dir"], tmp_path, "worker",
            app_id="readiness", metrics_port=metrics_port,
        ).start()
        worker.wait_ready()
        _produce_events(broker.bootstrap_servers, topic, payloads)
        assert len(list(read_topic(broker.bootstrap_servers, "predictions", expect=len(payloads), timeout_s=90))) == len(payloads)
        assert _wait_for(metrics_port, (200, 1.0)) == (200, 1.0)

        broker.stop()  # idle from here on: no event will make a client notice
        assert _wait_for(metrics_port, (503, 0.0)) == (503, 0.0)
        assert "the broker does not answer" in _readyz_body(metrics_port)  # the reason, not a guess
        assert worker.proc.poll() is None  # a broker that is away is not a reason to exit

        broker = EmbeddedBroker(port=port).start()  # same address, empty memory
        assert _exit_status(worker.proc) == EXIT_LOG_LOST
        lines = (tmp_path / "worker.log").read_text(errors="replace").splitlines()
        told = [i for i, line in enumerate(lines) if "lost its log" in line]
        assert len(told) == 1, lines[-20:]
        line = lines[told[0]]
        assert "[CRITICAL]" in line and "persistent storage" in line and "data directory" in line
        assert not any(later.startswith("[") for later in lines[told[0] + 1 :])  # the last thing the worker logged
        assert not any("Traceback" in line for line in lines)
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()


def test_a_stop_signal_ends_a_worker_whose_broker_is_gone_within_the_grace(trained_repo, tmp_path):
    # Faust's stop waits on the broker (offset commits, leaving the group,
    # stopping the fetcher): with the broker gone a SIGTERM was not obeyed
    # for more than a minute.
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    worker = None
    try:
        ensure_topics(broker.bootstrap_servers, [trained_repo["topic"]], 4)
        worker = worker_process(
            broker.bootstrap_servers, trained_repo["path"], trained_repo["model_dir"], tmp_path, "worker",
            app_id="stop-without-broker", env={"SLUICE_SHUTDOWN_GRACE_S": "3"},
        ).start()
        worker.wait_ready()
        broker.stop()
        worker.proc.send_signal(signal.SIGTERM)
        status = _exit_status(worker.proc)
        lines = (tmp_path / "worker.log").read_text(errors="replace").splitlines()
        # Faust's own stop outlasts 3 s without a broker: the grace cuts it.
        assert status == EXIT_STOP_CUT, lines[-20:]
        assert sum("still stopping 3 s after the stop signal" in line for line in lines) == 1
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()


def test_a_stop_signal_ends_an_idle_worker_cleanly(broker, trained_repo, tmp_path, unique):
    ensure_topics(broker.bootstrap_servers, [trained_repo["topic"]], 4)
    worker = worker_process(
        broker.bootstrap_servers, trained_repo["path"], trained_repo["model_dir"], tmp_path, "worker", app_id=unique("stop"),
    )
    try:
        worker.start().wait_ready()
        worker.proc.send_signal(signal.SIGTERM)
        assert _exit_status(worker.proc) == 0
        assert "still stopping" not in (tmp_path / "worker.log").read_text(errors="replace")
    finally:
        worker.stop()


def test_evidence_of_loss_names_what_went_back():
    before = LogView({"events": 2}, {("events", 0): 10, ("events", 1): 4}, {("events", 0): 9})
    assert evidence_of_loss(before, before) is None
    grown = LogView({"events": 2, "new": 1}, {("events", 0): 12, ("events", 1): 4, ("new", 0): 0}, {("events", 0): 11})
    assert evidence_of_loss(before, grown) is None
    assert evidence_of_loss(before, LogView({}, {}, {})) == "topic events is gone"
    resized = LogView({"events": 4}, before.ends, before.committed)
    assert evidence_of_loss(before, resized) == "topic events has 4 partitions instead of 2"
    shorter = LogView(before.partitions, {("events", 0): 10, ("events", 1): 1}, before.committed)
    assert evidence_of_loss(before, shorter) == "the end offset of events[1] went back from 4 to 1"
    forgotten = LogView(before.partitions, before.ends, {})
    assert evidence_of_loss(before, forgotten) == "the group's committed offset 9 on events[0] is gone"
    rewound = LogView(before.partitions, before.ends, {("events", 0): 3})
    assert evidence_of_loss(before, rewound) == "the group's committed offset on events[0] went back from 9 to 3"


def test_aiokafka_repeats_are_logged_once_per_period():
    limit = RepeatLimit(every_s=3600)

    def record(name: str, msg: str, *args) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    retries = [limit.filter(record("aiokafka.conn", "Unable connect to node with id %s: %s", 111, n)) for n in range(50)]
    assert retries == [True] + [False] * 49
    assert limit.filter(record("aiokafka.cluster", "Unable to update metadata from %s", [111]))
    assert all(limit.filter(record("sluice.worker", "the same line")) for _ in range(3))
