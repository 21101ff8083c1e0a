"""`sluice monitor`'s loop on the real broker: prediction_log in, alert records on `monitoring` out.

The records are written the way the worker writes them (contract fields),
to topics of this test's own; the loop runs in a thread of the test and
is stopped by it. Windows are minutes of event time here (a thresholds
object), so a few thousand records fill them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import orjson
import pytest

from confluent_kafka import TopicPartition

from stream.health_http import ServiceHealth
from stream.kafka.clients import ensure_topics, make_consumer, make_producer
from stream.kafka.control import publish
from stream.kafka.reader import read_topic
from stream.monitor import gauges
from stream.monitor.baseline import compute_reference
from stream.monitor.thresholds import Thresholds, Windows
from stream.pipeline.outcomes import HEADER_APP, HEADER_KIND, HEADER_REASON
from stream.serving.deployment import Deployment
from stream.serving.model import save_model
from stream.settings import Settings
from stream.services.monitor import MonitorLoop, _working

NAMES = ["amount", "count", "age"]
T0 = 1_790_000_000_000
WINDOWS = Windows(
    sub_window_s=60, sub_windows=10, min_events=400, min_attribution_rows=20, clear_after=2,
    rates_sub_window_s=1, rates_sub_windows=60, min_outcomes=200,
)


def _rows(rng, n, shift=0.0):
    return np.column_stack([rng.lognormal(3 + shift, 0.5, n), rng.integers(0, 6, n), rng.integers(10, 3000, n)]).astype(float)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    x = _rows(rng, 4000)
    y = (x[:, 0] > 30).astype(int) ^ (rng.random(4000) < 0.1)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(x, y, feature_name=NAMES), 10)
    contributions = booster.predict(x[:1000], pred_contrib=True)[:, :-1]
    reference = compute_reference(x[:1000], NAMES, booster.predict(x[:1000]), contributions)
    path = tmp_path_factory.mktemp("models")
    save_model(path, "v1", booster, {"features": NAMES, "threshold": 0.5, "reference": reference})
    return path, booster


def _log_records(rng, booster, start: int, n: int, shift: float = 0.0, *, app_id: str) -> list[tuple[bytes, bytes]]:
    """Records as a worker of consumer group `app_id` writes them (stream/pipeline/records.py)."""
    x = _rows(rng, n, shift)
    scores = booster.predict(x)
    out = []
    for i in range(n):
        t = np.datetime_as_string(np.datetime64(T0 + (start + i) * 1000, "ms"), unit="ms") + "Z"
        record = {
            "transaction_id": f"t{start + i}", "entity": {"card_id": f"c{i % 50}"}, "score": float(scores[i]),
            "decision": bool(scores[i] > 0.5), "model_version": "v1", "route": "champion", "event_time": t,
            "scored_at": t, "fallback": None, "features": dict(zip(NAMES, x[i].tolist())), "scores": {"v1": float(scores[i])},
            "rule": None, "batch_missing": [], "latency_ms": {"total": 1.0}, "arrival": [[0, start + i]], "event": {},
            "app_id": app_id, "deployment": 0,
        }
        out.append((f"t{start + i}".encode(), orjson.dumps(record)))
    return out


class _Running:
    def __init__(self, loop: MonitorLoop):
        self.loop = loop
        self.thread = threading.Thread(target=loop.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.loop.stop.set()
        self.thread.join(timeout=20)


@pytest.fixture
def topics(broker, unique):
    names = {
        "events": unique("mon-events"), "log": unique("mon-log"), "monitoring": unique("monitoring"), "app": unique("mon-app"),
        "deployments": unique("mon-deploy"),
    }
    ensure_topics(broker.bootstrap_servers, [names["log"], f"{names['events']}.dlq", f"{names['events']}.late"], 2)
    return names


def _settings(broker, model_dir, topics, tmp_path) -> Settings:
    """Every name from the one Settings object, as the worker reads them (none is the default)."""
    return Settings(
        bootstrap_servers=broker.bootstrap_servers, model_dir=model_dir, repo_path=tmp_path / "no-repo",
        app_id=topics["app"], prediction_log_topic=topics["log"], partitions=2, monitoring_topic=topics["monitoring"],
        deployments_topic=topics["deployments"],
    )


def _loop(broker, model_dir, topics, tmp_path) -> MonitorLoop:
    return MonitorLoop(
        _settings(broker, model_dir, topics, tmp_path), thresholds=Thresholds(windows=WINDOWS),
        events_topic=topics["events"], core_share=1.0,
    )


def _produce(bootstrap: str, topic: str, pairs, headers=None) -> None:
    producer = make_producer(bootstrap)
    for key, value in pairs:
        producer.produce(topic, value, key, headers=headers)
    assert producer.flush(30) == 0
    producer.close()


def _wait(predicate, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _read_back(bootstrap: str, topic: str) -> list[dict]:
    return [orjson.loads(m.value()) for m in read_topic(bootstrap, topic, idle_s=1.5)]


def _open_keys(records: list[dict]) -> dict[tuple, int]:
    """(version, feature, statistic) -> level, of the alerts whose last record is not a recovery."""
    state: dict[tuple, int] = {}
    for r in records:
        key = (r["model_version"], r["feature"], r["statistic"])
        if r["kind"] == "recovery":
            state.pop(key, None)
        else:
            state[key] = r["level"]
    return state


def test_drift_alerts_once_a_restart_does_not_resend_and_recovery_is_one_record(broker, model_dir, topics, tmp_path):
    path, booster = model_dir
    bootstrap = broker.bootstrap_servers
    rng = np.random.default_rng(1)
    # 10 minutes as trained, then amounts e times larger: the monitor alerts while the drift lasts.
    first = _Running(_loop(broker, path, topics, tmp_path))
    try:
        _produce(bootstrap, topics["log"], _log_records(rng, booster, 0, 600, app_id=topics["app"]))
        _produce(bootstrap, topics["log"], _log_records(rng, booster, 600, 900, shift=1.0, app_id=topics["app"]))
        _wait(lambda: first.loop.monitor.events >= 1500)
        _wait(lambda: any(r["feature"] == "amount" and r["severity"] == "critical" for r in first.loop.sent))
        time.sleep(1.0)
    finally:
        first.stop()
    records = _read_back(bootstrap, topics["monitoring"])
    amount_psi = [r for r in records if (r["feature"], r["statistic"]) == ("amount", "psi")]
    # One record per level crossed (warning, then critical as the window fills), none repeated while open.
    assert [(r["kind"], r["severity"]) for r in amount_psi] == [("alert", "warning"), ("alert", "critical")]
    opened = amount_psi[0]
    assert opened["model_version"] == "v1" and opened["group"] == topics["app"] and opened["threshold"] == 0.1
    assert opened["window"]["events"] >= 400 and opened["first_event_time"] < opened["last_event_time"]
    assert opened["last_event_time"] >= np.datetime_as_string(np.datetime64(T0 + 600_000, "ms"), unit="ms") + "Z"
    # The features that did not move never alerted; the score moved with the amount.
    assert not [r for r in records if r["feature"] in ("count", "age") and r["statistic"] in ("psi", "js", "linf")]
    assert any(r["feature"] == "score" for r in records)
    still_open = _open_keys(records)
    assert ("v1", "amount", "psi") in still_open

    # A restarted monitor (same group) reads the monitoring topic back: the drift goes on, and what it had
    # already sent is not sent again; when the data is back to normal, each alert recovers once.
    _produce(bootstrap, topics["log"], _log_records(rng, booster, 1500, 600, shift=1.0, app_id=topics["app"]))
    _produce(bootstrap, topics["log"], _log_records(rng, booster, 2100, 1200, app_id=topics["app"]))
    second = _Running(_loop(broker, path, topics, tmp_path))
    try:
        assert _open_keys(records) == {k: h.level for k, h in second.loop.monitor.book.open.items()}
        _wait(lambda: ("v1", "amount", "psi") not in second.loop.monitor.book.open)
    finally:
        second.stop()
    again = [r for r in second.loop.sent if r["kind"] == "alert" and (r["model_version"], r["feature"], r["statistic"]) in still_open]
    assert [r for r in again if r["level"] <= still_open[(r["model_version"], r["feature"], r["statistic"])]] == []
    recoveries = [r for r in second.loop.sent if r["kind"] == "recovery"]
    assert [(r["feature"], r["statistic"]) for r in recoveries].count(("amount", "psi")) == 1
    assert {(r["model_version"], r["feature"], r["statistic"]) for r in recoveries} <= set(still_open) | {
        (r["model_version"], r["feature"], r["statistic"]) for r in second.loop.sent if r["kind"] == "alert"
    }


def test_dead_letter_rate_by_reason(broker, model_dir, topics, tmp_path):
    path, booster = model_dir
    bootstrap = broker.bootstrap_servers
    rng = np.random.default_rng(2)
    running = _Running(_loop(broker, path, topics, tmp_path))
    try:
        _produce(bootstrap, topics["log"], _log_records(rng, booster, 0, 950, app_id=topics["app"]))
        dead = [(b"k", b"not json")] * 50
        _produce(bootstrap, f"{topics['events']}.dlq", dead, headers=[(HEADER_REASON, b"not valid JSON"), (HEADER_KIND, b"invalid_json")])
        # Another consumer group reading the same events topic dead-letters its own copies: not counted here.
        theirs = [(HEADER_REASON, b"not valid JSON"), (HEADER_KIND, b"invalid_json"), (HEADER_APP, b"another-group")]
        _produce(bootstrap, f"{topics['events']}.dlq", [(b"k", b"not json")] * 200, headers=theirs)
        _wait(lambda: any(r["statistic"] == "dlq_rate" for r in running.loop.sent), limit_s=30)
    finally:
        running.stop()
    rates = {r["feature"]: r for r in running.loop.sent if r["statistic"] == "dlq_rate"}
    assert set(rates) == {"all", "invalid_json"}
    assert rates["invalid_json"]["value"] == pytest.approx(0.05, abs=0.02)
    assert rates["all"]["model_version"] is None and rates["all"]["window"]["time"] == "broker"


def test_only_its_own_app_ids_records_are_judged_and_deployments_come_from_its_topic(broker, model_dir, topics, tmp_path):
    """Two consumer groups share the prediction log: the other group's drifted records raise nothing here."""
    path, booster = model_dir
    bootstrap = broker.bootstrap_servers
    rng = np.random.default_rng(3)
    publish(bootstrap, topics["deployments"], Deployment(seq=1, champion="v1", reason="test"))
    running = _Running(_loop(broker, path, topics, tmp_path))
    loop = running.loop
    try:
        _produce(bootstrap, topics["log"], _log_records(rng, booster, 0, 1500, app_id=topics["app"]))
        _produce(bootstrap, topics["log"], _log_records(rng, booster, 600, 900, shift=1.0, app_id=topics["app"] + "-other"))
        last_complete = (T0 + 1_499_000) // WINDOWS.sub_window_ms - 1
        _wait(lambda: loop.monitor.evaluated is not None and loop.monitor.evaluated >= last_complete)
    finally:
        running.stop()
    assert loop.monitor.events == 1500 and loop.foreign == 900
    assert [r for r in loop.sent if r["statistic"] in ("psi", "js")] == []
    assert loop.monitor.deployments == {1: frozenset({"v1"})}


def _served(port: int) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return list(text_string_to_metric_families(text))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_are_the_monitors_own_and_its_lag_is_the_groups_committed_offsets(broker, model_dir, topics, tmp_path):
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    from stream import metrics

    path, _ = model_dir
    bootstrap = broker.bootstrap_servers
    events = topics["events"]
    ensure_topics(bootstrap, [events], 2)
    producer = make_producer(bootstrap)
    for i in range(30):
        producer.produce(events, b"{}", partition=i % 2)
        assert producer.flush(30) == 0  # one record a batch: the embedded broker's end offsets count batches
    producer.close()
    committer = make_consumer(bootstrap, **{"group.id": topics["app"], "enable.auto.commit": False})
    committer.commit(offsets=[TopicPartition(events, 0, 4), TopicPartition(events, 1, 11)], asynchronous=False)
    committer.close()

    loop = _loop(broker, path, topics, tmp_path)
    port = _free_port()
    health = ServiceHealth("monitor", loop._admin.list_topics, working=lambda: _working(loop))
    health.serve(port, "127.0.0.1", gauges.REGISTRY)
    try:
        loop._lags()
        families = _served(port)
    finally:
        health.close()
        loop.close()
    # What the group committed, as confluent_kafka tells it, against the partitions' end offsets.
    probe = make_consumer(bootstrap, **{"group.id": topics["app"], "enable.auto.commit": False})
    try:
        committed = probe.committed([TopicPartition(events, p) for p in (0, 1)], timeout=10)
        expected = {str(tp.partition): probe.get_watermark_offsets(tp, timeout=10)[1] - tp.offset for tp in committed}
    finally:
        probe.close()
    assert [tp.offset for tp in committed] == [4, 11]
    lag = {
        s.labels["partition"]: s.value for f in families for s in f.samples
        if f.name == "sluice_consumer_lag_messages" and s.labels["group"] == topics["app"] and s.labels["topic"] == events
    }
    assert lag == expected
    # Its own series only: none of the worker's (so no sluice_ready), and a sign that this is a monitor.
    worker = {
        family.name for made in vars(metrics).values() if isinstance(made, MetricWrapperBase | metrics.BatchHistogram)
        for family in made.collect()
    }
    assert "sluice_ready" in worker and REGISTRY.get_sample_value("sluice_ready") is not None
    names = {f.name for f in families}
    # sluice_errors_total is the one name both have: each process counts its own errors (SluiceErrors pages on both).
    assert not names & (worker - {"sluice_errors"}), sorted(names & worker)
    info = [s for f in families for s in f.samples if f.name == "sluice_monitor_info"]
    assert [(s.labels, s.value) for s in info] == [({"group": topics["app"]}, 1.0)]


def test_an_unreachable_broker_is_one_line_naming_it_and_a_failed_exit(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "monitor", "--bootstrap-servers", "127.0.0.1:1", "--repo", str(tmp_path),
         "--model-dir", str(tmp_path), "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0], lines[:5]


def test_versions_are_read_from_the_registry_the_worker_fetches_from(model_dir, tmp_path):
    """SLUICE_REGISTRY set: the worker loads versions from the store, not --model-dir, and so does the monitor."""
    from stream.services.monitor_models import ModelShelf

    path, _ = model_dir
    shelf = ModelShelf(tmp_path / "not-the-models", registry=str(path))
    names, reference = shelf.describe("v1")
    assert names == NAMES and reference is not None
    assert shelf.model("v1").version == "v1"
    with pytest.raises(FileNotFoundError, match=f"registry {path}"):
        shelf.describe("v9")


def test_experiment_gauges_are_the_report_of_the_labeled_topic_as_it_grows(broker, model_dir, topics, tmp_path, unique):
    """Records on `labeled` before it starts, after, and before a restart (its group has committed past them)."""
    from dataclasses import replace

    from stream.lifecycle.experiment_report import report
    from tests.stream.lifecycle.experiment_records import SHADOW as history, shadow_records
    from tests.stream.lifecycle.test_experiment_report import _produce as produce_labeled

    path, _ = model_dir
    bootstrap = broker.bootstrap_servers
    labeled = unique("mon-labeled")
    for deployment in history:
        publish(bootstrap, topics["deployments"], deployment)
    records = shadow_records("transaction_id", 1800, seed=5, correct_every=30)
    settings = replace(_settings(broker, path, topics, tmp_path), labeled_topic=labeled)
    value = lambda name, metric: gauges.REGISTRY.get_sample_value(  # noqa: E731
        f"sluice_experiment_{name}", {"challenger": "v2", "metric": metric})
    produce_labeled(broker, labeled, records[:900], "transaction_id")
    for sent in (len(records) - 300, len(records)):
        gauges.set_experiments(None)
        running = _Running(MonitorLoop(settings, thresholds=Thresholds(windows=WINDOWS), events_topic=topics["events"]))
        try:
            produce_labeled(broker, labeled, records[900:sent] if sent < len(records) else records[sent - 300:], "transaction_id")
            expected = report(records[:sent], history, "transaction_id")["experiments"][0]
            _wait(lambda: value("labeled", "log_loss") == expected["n"])
        finally:
            running.stop()
    assert expected["n"] == 1800 and expected["decision"] == "promote"
    for metric, m in expected["metrics"].items():
        assert value("effect", metric) == pytest.approx(m["effect"], rel=1e-12)
        assert value("interval_low", metric) == pytest.approx(m["lower"], rel=1e-12)
        assert value("interval_high", metric) == pytest.approx(m["upper"], rel=1e-12)
        assert value("p_value", metric) == pytest.approx(m["p_value"], rel=1e-12, abs=1e-300)
        assert value("labeled", metric) == m["n"]
        assert value("decision", metric) == {"promote": 1, "stop": -1, "keep running": 0}[m["decision"]]
