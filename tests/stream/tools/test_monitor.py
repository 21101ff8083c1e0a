"""`sluice monitor`'s loop on the real broker: prediction_log in, alert records on `monitoring` out.

The records are written the way the worker writes them (contract fields),
to topics of this test's own; the loop runs in a thread of the test and
is stopped by it. Windows are minutes of event time here (a thresholds
object), so a few thousand records fill them.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson
import pytest

from stream.kafka.clients import ensure_topics, make_producer
from stream.kafka.reader import read_topic
from stream.monitor.baseline import compute_reference
from stream.monitor.thresholds import Thresholds, Windows
from stream.pipeline.outcomes import HEADER_KIND, HEADER_REASON
from stream.serving.model import save_model
from stream.settings import Settings
from stream.tools.monitor import MonitorLoop

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


def _log_records(rng, booster, start: int, n: int, shift: float = 0.0) -> list[tuple[bytes, bytes]]:
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
    names = {"events": unique("mon-events"), "log": unique("mon-log"), "monitoring": unique("monitoring"), "app": unique("mon-app")}
    ensure_topics(broker.bootstrap_servers, [names["log"], f"{names['events']}.dlq", f"{names['events']}.late"], 2)
    return names


def _loop(broker, model_dir, topics, tmp_path) -> MonitorLoop:
    settings = Settings(
        bootstrap_servers=broker.bootstrap_servers, model_dir=model_dir, repo_path=tmp_path / "no-repo",
        app_id=topics["app"], prediction_log_topic=topics["log"], partitions=2,
    )
    return MonitorLoop(
        settings, thresholds=Thresholds(windows=WINDOWS), events_topic=topics["events"], core_share=1.0,
        monitoring_topic=topics["monitoring"],
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
        _produce(bootstrap, topics["log"], _log_records(rng, booster, 0, 600))
        _produce(bootstrap, topics["log"], _log_records(rng, booster, 600, 900, shift=1.0))
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
    _produce(bootstrap, topics["log"], _log_records(rng, booster, 1500, 600, shift=1.0))
    _produce(bootstrap, topics["log"], _log_records(rng, booster, 2100, 1200))
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
        _produce(bootstrap, topics["log"], _log_records(rng, booster, 0, 950))
        dead = [(b"k", b"not json")] * 50
        _produce(bootstrap, f"{topics['events']}.dlq", dead, headers=[(HEADER_REASON, b"not valid JSON"), (HEADER_KIND, b"invalid_json")])
        _wait(lambda: any(r["statistic"] == "dlq_rate" for r in running.loop.sent), limit_s=30)
    finally:
        running.stop()
    rates = {r["feature"]: r for r in running.loop.sent if r["statistic"] == "dlq_rate"}
    assert set(rates) == {"all", "invalid_json"}
    assert rates["invalid_json"]["value"] == pytest.approx(0.05, abs=0.02)
    assert rates["all"]["model_version"] is None and rates["all"]["window"]["time"] == "broker"
