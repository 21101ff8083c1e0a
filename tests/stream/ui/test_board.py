"""The status page's state without Kafka or a browser: boards against numpy, alerts, the fleet's sums and quantiles."""

from __future__ import annotations

import http.server
import math
import random
import threading

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from stream.ui.board import SAMPLES_PER_BUCKET, Board, LatencyBuckets, reason_group
from stream.ui.monitoring import MAX_WINDOWS, MonitorBoard, MonitorGauges
from stream.ui.scrape import MAX_GAUGES, Scraper, expand, histogram_quantile, parse, summarize
from tests.stream.ui import records

NOW_MS = 1_800_000_000_000


def test_board_counts_and_percentiles_match_numpy():
    board = Board(window_s=600)
    logs = records.prediction_logs(500, seed=1)
    for i, record in enumerate(logs):
        board.add_log(record, NOW_MS - 30_000 + i * 50)
    snap = board.snapshot(NOW_MS)
    p = snap["predictions"]
    assert p["total"] == 500 and p["decisions"] == sum(r["decision"] for r in logs)
    assert p["by_version"] == {"v1": 400, "v2": 100} and p["by_route"] == {"champion": 400, "canary": 100}
    latencies = [r["latency_ms"]["total"] for r in logs]
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert p["latency_ms"][name] == pytest.approx(np.percentile(latencies, q), abs=1e-12)
    assert p["latency_ms"]["samples"] == 500
    # Per second, zeros included, up to now; 20 records a second.
    assert sum(p["throughput"]["n"]) == 500 and p["throughput"]["t"][-1] == NOW_MS // 1000 * 1000
    assert max(p["throughput"]["n"]) == 20
    q = snap["quality"]
    assert q["null_share"]["profile__age_days"] == pytest.approx(0.1) and q["null_share"]["card__n_1h"] == 0
    assert q["fallback_share"] == pytest.approx(20 / 500) and q["batch_missing_share"] == pytest.approx(0.1)


def test_old_records_count_as_champion_and_old_buckets_leave_the_window():
    board = Board(window_s=60)
    board.add_log({"model_version": "v0", "decision": False, "latency_ms": {"total": 5.0}}, NOW_MS - 120_000)
    board.add_log({"model_version": "v0", "decision": True, "latency_ms": {"total": 7.0}}, NOW_MS)
    snap = board.snapshot(NOW_MS)
    assert snap["predictions"]["by_route"] == {"champion": 2} and snap["predictions"]["total"] == 2
    # The charts keep only the window; the totals keep everything read.
    assert snap["predictions"]["latency_ms"]["samples"] == 1 and snap["predictions"]["latency_ms"]["p50"] == 7.0
    assert sum(snap["predictions"]["throughput"]["n"]) == 1


def test_latency_samples_are_bounded_and_stay_uniform():
    buckets = LatencyBuckets(bucket_s=10, window_s=600, cap=SAMPLES_PER_BUCKET)
    rng = random.Random(3)
    values = [rng.expovariate(1 / 20) for _ in range(4 * SAMPLES_PER_BUCKET)]
    for v in values:
        buckets.add(NOW_MS, v)
    overall = buckets.overall()
    assert overall["samples"] == SAMPLES_PER_BUCKET
    # A uniform sample of 5,000 out of 20,000: the median within a few percent of the true one.
    assert overall["p50"] == pytest.approx(np.percentile(values, 50), rel=0.05)


def test_dead_letters_grouped_by_reason_and_late_by_stage_topic():
    board = Board()
    for reason, count in records.DEAD_LETTERS:
        for _ in range(count):
            board.add_dead_letter(reason)
    for i in range(60):
        board.add_dead_letter(f"reason {i}: detail")
    for copy in records.late_copies("txn"):
        board.add_late(dict(copy.headers)["sluice.source"].decode())
    out = board.snapshot(NOW_MS)["outcomes"]
    assert out["dlq"]["not valid JSON"] == 4 and out["dlq"]["missing field 'card_id'"] == 3
    assert len(out["dlq"]) == 51 and out["dlq"]["other"] == 12 and out["dlq_total"] == 67
    assert out["late"] == {"txn": records.LATE}
    assert reason_group(": nothing before") == "unknown"


def test_dead_letters_by_kind_when_the_copy_names_it():
    board = Board()
    board.add_dead_letter("not valid JSON: x", "invalid_json")
    board.add_dead_letter("not valid JSON: y", "invalid_json")
    board.add_dead_letter("field 'amount' is null", None)
    assert board.snapshot(NOW_MS)["outcomes"]["dlq"] == {"invalid_json": 2, "field 'amount' is null": 1}


def test_online_metrics_per_version_from_the_label_joins_records():
    board = Board()
    written, rows = records.labeled(records.prediction_logs(90, seed=2))
    for key, value in written:
        board.add_labeled(orjson.loads(value), key)
    online = board.snapshot(NOW_MS)["online"]
    assert sorted(online) == ["v1", "v2"]
    for version, metrics in online.items():
        mine = [(label, flagged) for v, label, flagged in rows.values() if v == version and label is not None]
        tp = sum(1 for label, flagged in mine if label and flagged)
        # The correction replaced its row's label, the re-sent record counted once, the unlabeled one not at all,
        # the window's default label counted, and so did the row labeled only through a correction of it.
        assert metrics["rows"] == len(mine) and metrics["positives"] == sum(label for label, _ in mine)
        assert metrics["precision"] == tp / sum(flagged for _, flagged in mine)
        assert metrics["recall"] == tp / sum(label for label, _ in mine)


def test_labeled_rows_agree_with_the_rows_of_the_labeled_topic():
    """Whatever order of kinds, the page counts `labeled.rows()` with a label: one row per event, shares in [0, 1]."""
    from stream.lifecycle.labeled import rows as labeled_rows

    board = Board()
    written, _ = records.labeled(records.prediction_logs(90, seed=4))
    for key, value in written:
        board.add_labeled(orjson.loads(value), key)
    final = labeled_rows([orjson.loads(v) for _, v in written], records.SCHEMA.event_id)
    online = board.snapshot(NOW_MS)["online"]
    for version in {r["model_version"] for r in final.values()}:
        mine = [r for r in final.values() if r["model_version"] == version and r["label"] is not None]
        assert online[version]["rows"] == len(mine)
        assert online[version]["positives"] == sum(r["label"] >= 0.5 for r in mine)
        for share in ("precision", "recall", "label_rate"):
            assert online[version][share] is None or 0 <= online[version][share] <= 1


def test_a_correction_of_a_row_the_page_never_saw_counts_the_row_once():
    """The page starts `lookback` back: a correction whose first label came before that is the row, not a take-back."""
    board = Board()
    base = {"model_version": "v1", "score": 0.9, "threshold": 0.5, "event_time": "t", "scored_at": "s"}
    board.add_labeled({**base, "kind": "correction", "revision": 2, "label": 0, "previous_label": 1}, b"e1")
    board.add_labeled({**base, "kind": "correction", "revision": 2, "label": 0, "previous_label": 1}, b"e1")  # re-sent
    (metrics,) = board.snapshot(NOW_MS)["online"].values()
    assert (metrics["rows"], metrics["positives"], metrics["precision"], metrics["recall"]) == (1, 0, 0.0, None)
    board.add_labeled({**base, "kind": "joined", "revision": 1, "label": 1}, b"e1")  # older: changes nothing
    assert board.snapshot(NOW_MS)["online"]["v1"] == metrics


def test_alerts_open_with_the_monitors_alert_and_close_with_its_recovery():
    monitor = MonitorBoard()
    for record in records.alert_records():
        monitor.add(record)
    (alert,) = monitor.snapshot()["alerts"]
    assert (alert["feature"], alert["severity"], alert["value"]) == ("card__amount_sum_1h", "critical", 0.35)
    monitor.add({**alert, "kind": "recovery", "severity": None, "value": 0.01})
    assert monitor.snapshot()["alerts"] == [] and monitor.snapshot()["records"] == 4


HOUR_S = 3600
T0_S = 1_793_491_200  # 2026-11-01T00:00:00Z


def _drift_scrape(values: dict[str, float], quality: float, window_h: int | None = 0) -> dict:
    """The monitor's gauges after judging the event-time window [T0 + window_h hours, + 1 hour) (None: no bounds)."""
    registry = CollectorRegistry()
    drift = Gauge("sluice_drift_statistic", "d", ["model_version", "feature", "statistic"], registry=registry)
    share = Gauge("sluice_data_quality_ratio", "q", ["model_version", "feature", "statistic"], registry=registry)
    bounds = Gauge("sluice_monitor_window_seconds", "w", ["model_version", "bound"], registry=registry)
    for feature, value in values.items():
        drift.labels("v1", feature, "psi").set(value)
    share.labels("v1", "age", "missing_share").set(quality)
    if window_h is not None:
        bounds.labels("v1", "start").set(T0_S + window_h * HOUR_S)
        bounds.labels("v1", "end").set(T0_S + (window_h + 1) * HOUR_S)
    return {"http://monitor/metrics": {"up": True, "samples": parse(generate_latest(registry).decode())}}


def test_drift_heat_map_gets_a_column_per_judged_window_labeled_by_event_time():
    gauges = MonitorGauges()
    gauges.add_scrape(1_000, _drift_scrape({"a": 0.1, "b": 0.2}, 0.01, 0))
    gauges.add_scrape(2_000, _drift_scrape({"a": 0.1, "b": 0.2}, 0.01, 0))  # settled: window 0's column
    gauges.add_scrape(2_500, _drift_scrape({"a": 0.1, "b": 0.2}, 0.01, 0))  # the same window, scraped again
    gauges.add_scrape(3_000, _drift_scrape({"a": 0.3, "b": 0.2}, 0.04, 1))  # caught half-way through an update
    gauges.add_scrape(3_500, _drift_scrape({"a": 0.3, "b": 0.5}, 0.04, 1))
    gauges.add_scrape(4_000, _drift_scrape({"a": 0.3, "b": 0.5}, 0.04, 1))
    gauges.add_scrape(5_000, _drift_scrape({"a": 0.3, "b": 0.5}, 0.04, 2))  # a new window with the same values
    gauges.add_scrape(6_000, _drift_scrape({"a": 0.3, "b": 0.5}, 0.04, 2))
    snap = gauges.snapshot()
    heat = snap["heatmaps"]["psi"]
    assert heat["features"] == ["a", "b"]
    # Columns are the windows the monitor judged, in event time: not the scrape times (00:00:02, 00:00:04 ...).
    assert heat["starts"] == ["2026-11-01T00:00:00.000Z", "2026-11-01T01:00:00.000Z", "2026-11-01T02:00:00.000Z"]
    assert heat["ends"] == ["2026-11-01T01:00:00.000Z", "2026-11-01T02:00:00.000Z", "2026-11-01T03:00:00.000Z"]
    assert heat["windows"] == [f"2026-11-01 0{h}:00:00 – 0{h + 1}:00:00" for h in range(3)]
    assert heat["z"] == [[0.1, 0.3, 0.3], [0.2, 0.5, 0.5]]
    assert snap["quality"] == [{"statistic": "missing_share", "feature": "age", "model_version": "v1", "value": 0.04}]
    for i in range(2 * (MAX_WINDOWS + 5)):
        gauges.add_scrape(10_000 + i, _drift_scrape({"a": float(i // 2)}, 0.0, 10 + i // 2))
    assert len(gauges.snapshot()["heatmaps"]["psi"]["windows"]) == MAX_WINDOWS


def test_the_monitors_own_gauges_place_its_values_in_their_event_time_window():
    """What `sluice monitor` serves (its registry, set by its own calls) lands in the column of the judged window."""
    from stream.monitor import gauges as monitor_gauges

    window = {"start": "2026-11-01T05:00:00.000Z", "end": "2026-11-01T06:00:00.000Z", "events": 900, "time": "event"}
    monitor_gauges.DRIFT.labels("v-ui", "amount", "psi").set(0.42)
    monitor_gauges.set_window("v-ui", window)
    try:
        scrape = {"http://monitor/metrics": {"up": True, "samples": parse(generate_latest(monitor_gauges.REGISTRY).decode())}}
        board = MonitorGauges()
        board.add_scrape(1_000, scrape)
        board.add_scrape(2_000, scrape)
        heat = board.snapshot()["heatmaps"]["psi"]
        column = heat["starts"].index(window["start"])
        assert heat["ends"][column] == window["end"]
        (row,) = [i for i, name in enumerate(heat["features"]) if name in ("amount", "amount (v-ui)")]
        assert heat["z"][row][column] == 0.42
    finally:
        monitor_gauges.forget("v-ui")
    assert "v-ui" not in generate_latest(monitor_gauges.REGISTRY).decode()


def test_drift_values_without_window_bounds_are_counted_not_drawn():
    gauges = MonitorGauges()
    for t_ms in (1_000, 2_000):
        gauges.add_scrape(t_ms, _drift_scrape({"a": 0.1}, 0.0, None))
    snap = gauges.snapshot()
    assert snap["heatmaps"].get("psi", {}).get("windows", []) == [] and snap["drift_unplaced"] == 1
    gauges.add_scrape(3_000, _drift_scrape({"a": 0.1}, 0.0, 0))
    assert gauges.snapshot()["drift_unplaced"] == 0


def test_window_labels_name_the_end_date_only_across_midnight():
    from stream.ui.monitoring import window_label

    day_ms = 86_400_000
    assert window_label(day_ms - 3_600_000, day_ms) == "1970-01-01 23:00:00 – 00:00:00"
    assert window_label(day_ms - 3_600_000, day_ms + 1_500) == "1970-01-01 23:00:00 – 1970-01-02 00:00:01.500"


def test_deployment_is_the_latest_record():
    monitor = MonitorBoard()
    for record in records.deployment_records():
        monitor.add_deployment(record)
    assert monitor.snapshot()["deployment"] == records.deployment_records()[-1]
    monitor.add_deployment(None)
    assert monitor.snapshot()["deployment"] is None


def test_histogram_quantile_follows_prometheus():
    buckets = [(0.01, 0.0), (0.1, 50.0), (1.0, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.1 + 0.9 * 0.5)
    # A rank in the +Inf bucket answers the largest finite bound; no observations, no answer.
    assert histogram_quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    # The first bucket interpolates from 0.
    assert histogram_quantile(0.5, [(0.2, 10.0), (math.inf, 10.0)]) == pytest.approx(0.1)


def _exposition(predictions: int, ready: int, latencies: list[float], worker: bool = True) -> str:
    """A worker's series; `worker=False`: the same series from a process that is not one (it does not set worker info)."""
    registry = CollectorRegistry()
    info = Gauge("sluice_worker_info", "w", ["app_id"], registry=registry)
    if worker:
        info.labels("app").set(1)
    Counter("sluice_predictions", "p", ["model_version"], registry=registry).labels("v1").inc(predictions)
    Gauge("sluice_ready", "r", registry=registry).set(ready)
    Gauge("sluice_drift_psi", "d", ["feature"], registry=registry).labels("amount").set(0.3)
    Gauge("sluice_online_auc", "a", ["version", "route"], registry=registry).labels("v1", "champion").set(predictions / 100)
    histogram = Histogram("sluice_event_to_prediction_seconds", "l", buckets=(0.01, 0.1, 1.0), registry=registry)
    for v in latencies:
        histogram.observe(v)
    return generate_latest(registry).decode()


def test_fleet_summary_sums_workers_and_their_buckets():
    scrapes = {
        "http://a/metrics": {"up": True, "samples": parse(_exposition(30, 1, [0.05] * 10))},
        "http://b/metrics": {"up": True, "samples": parse(_exposition(12, 0, [0.5] * 10))},
        "http://c/metrics": {"up": False, "error": "URLError: refused"},
        # A monitor that imports the worker's metrics serves sluice_ready and the counters too: no worker.
        "http://m/metrics": {"up": True, "samples": parse(_exposition(7, 1, [0.5] * 10, worker=False))},
    }
    fleet = summarize(scrapes)
    assert fleet["totals"]["predictions"] == 42 and fleet["by_version"] == {"v1": 42}
    assert (fleet["up"], fleet["ready"]) == (2, 1)
    assert [(t["url"], t["kind"]) for t in fleet["targets"]] == [
        ("http://a/metrics", "worker"), ("http://b/metrics", "worker"), ("http://c/metrics", "unknown"),
        ("http://m/metrics", "other"),
    ]
    # 10 observations in (0.01, 0.1], 10 in (0.1, 1]: the median is the bound between them.
    assert fleet["latency_s"]["p50"] == pytest.approx(0.1) and fleet["latency_s"]["count"] == 20
    assert [g["name"] for g in fleet["gauges"] if g["name"] == "sluice_drift_psi"] == ["sluice_drift_psi"] * 3
    assert fleet["gauges_total"] == len(fleet["gauges"])
    # Online metrics stay per worker: each one evaluates the partitions it holds.
    assert [(o["url"], o["metrics"]) for o in fleet["online"]] == [("http://a/metrics", {"auc": 0.3}), ("http://b/metrics", {"auc": 0.12})]


def test_a_worker_that_stops_answering_stays_a_worker_that_is_down():
    handler = type("H", (_Text,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    scraper = Scraper([url], timeout_s=1.0)
    try:
        handler.body = _exposition(5, 1, []).encode()
        scraper.scrape_once()
        assert (scraper.snapshot()["up"], scraper.snapshot()["ready"]) == (1, 1)
    finally:
        server.shutdown()
        server.server_close()
    scraper.scrape_once()
    fleet = scraper.snapshot()
    assert (fleet["up"], fleet["ready"]) == (0, 0)
    assert [(w["url"], w["kind"], w["up"]) for w in fleet["workers"]] == [(url, "worker", False)]


def test_raw_gauges_are_capped_and_their_total_is_told():
    registry = CollectorRegistry()
    lag = Gauge("sluice_consumer_lag_messages", "l", ["partition"], registry=registry)
    for p in range(MAX_GAUGES + 30):
        lag.labels(str(p)).set(p)
    fleet = summarize({"http://m/metrics": {"up": True, "samples": parse(generate_latest(registry).decode())}})
    assert len(fleet["gauges"]) == MAX_GAUGES and fleet["gauges_total"] == MAX_GAUGES + 30


class _Text(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args):
        pass


def test_scraper_rate_survives_a_restarted_worker():
    handler = type("H", (_Text,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        scraper = Scraper([f"http://127.0.0.1:{server.server_address[1]}/metrics"])
        for total in (100, 160, 20):  # the last one: the worker restarted and has done 20 since
            handler.body = _exposition(total, 1, []).encode()
            scraper.scrape_once()
        rates = scraper.snapshot()["rate"]["predictions_per_s"]
        # Two rates from three scrapes, both increases (a restart is not a negative rate).
        assert len(rates) == 2 and rates[0] > 0 and rates[1] > 0
    finally:
        server.shutdown()
        server.server_close()


def test_dns_urls_expand_to_every_address():
    assert "http://127.0.0.1:9464/metrics" in expand("dns+http://localhost:9464/metrics")
    assert expand("http://worker:9464/metrics") == ["http://worker:9464/metrics"]
    assert expand("dns+http://name.invalid:9464/metrics") == []
