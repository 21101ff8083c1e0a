"""The pure monitor on prediction-log records: windows per version, watermarks, quality, attribution."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from stream.monitor.baseline import compute_reference
from stream.monitor.monitor import Monitor, event_times_ms
from stream.monitor.quality import EntitySet
from stream.monitor.thresholds import Thresholds, Windows

NAMES = ["amount", "count", "profile__age"]
T0 = 1_790_000_000_000  # ms
STEP_MS = 20_000  # one event every 20 s of event time: 4,320 a day
WINDOWS = Windows(sub_window_s=3600, sub_windows=24, min_events=2000, min_attribution_rows=50)


def _rows(rng, n: int, shift: float = 0.0) -> np.ndarray:
    return np.column_stack([rng.lognormal(3 + shift, 0.5, n), rng.integers(0, 6, n), rng.integers(10, 3000, n)])


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    x = _rows(rng, 30_000)
    contributions = np.column_stack([x[:, 0] / 10, x[:, 1] / 20, x[:, 2] / 10_000])
    return compute_reference(x, NAMES, rng.beta(1, 20, 30_000), contributions)


def _records(rng, start: int, n: int, *, shift=0.0, version="v1", missing_age=0.0, card="c", scores=None):
    x = _rows(rng, n, shift)
    x[rng.random(n) < missing_age, 2] = np.nan
    times = np.datetime_as_string((T0 + (start + np.arange(n)) * STEP_MS).astype("datetime64[ms]"), unit="ms")
    score = rng.beta(1, 20, n) + (0.3 if shift else 0.0)
    out = []
    for i in range(n):
        features = {NAMES[0]: float(x[i, 0]), NAMES[1]: float(x[i, 1]), NAMES[2]: None if np.isnan(x[i, 2]) else float(x[i, 2])}
        record = {"event_time": times[i] + "Z", "model_version": version, "score": float(score[i]), "features": features,
                  "entity": {"card_id": f"{card}{i % 500}"}}
        if scores is not None:
            record["scores"] = {v: float(score[i]) for v in scores}
        out.append(record)
    return out


def _stream(monitor: Monitor, rng, days: float, *, shift_from: int | None = None, partitions=(0,), **kw):
    """Feed `days` of events in batches of 500; alert records as they come, with the event index of each."""
    n = int(days * 86_400_000 / STEP_MS)
    sent = []
    for start in range(0, n, 500):
        shift = 1.0 if shift_from is not None and start >= shift_from else 0.0
        batch = _records(rng, start, 500, shift=shift, **kw)
        for p in partitions:
            monitor.add_log(batch[p::len(partitions)], p, now_s=0.0)
        sent += [(start + 500, r) for r in monitor.judge(monitor.evaluate(0.0, 0), "now")]
    return sent


def _monitor(reference, **kw) -> Monitor:
    return Monitor(Thresholds(windows=WINDOWS), lambda version: (NAMES, reference), **kw)


def test_no_drift_gives_no_alerts_and_a_shift_alerts_on_the_shifted_feature_and_the_score(reference):
    rng = np.random.default_rng(1)
    monitor = _monitor(reference)
    shift_at = int(6 * 86_400_000 / STEP_MS)
    sent = _stream(monitor, rng, 9, shift_from=shift_at)
    before = [r for at, r in sent if at <= shift_at]
    assert before == []
    after = {(r["feature"], r["statistic"]) for _, r in sent}
    assert ("amount", "psi") in after and ("score", "psi") in after
    assert not {f for f, _ in after} & {"count", "profile__age"}
    first = min(at for at, r in sent) - shift_at
    assert 0 < first < 4320  # within a day's events


def test_a_sub_window_is_judged_once_the_slowest_partition_has_passed_it(reference):
    rng = np.random.default_rng(2)
    monitor = _monitor(reference)
    early = _records(rng, 0, 4000)
    monitor.add_log(early, 0, now_s=0.0)
    monitor.add_log(early[:10], 1, now_s=0.0)  # partition 1 is still in the first sub-window
    monitor.evaluate(0.0, 0)
    assert monitor.evaluated is None or monitor.evaluated < 0 or monitor.evaluated * 3_600_000 < T0
    # An idle partition stops holding the watermark back.
    monitor.add_log(early[10:20], 0, now_s=100.0)
    monitor.evaluate(100.0, 0)
    assert monitor.evaluated is not None and monitor.evaluated > T0 // 3_600_000


def test_a_model_without_reference_is_measured_against_its_first_events(caplog, reference):
    rng = np.random.default_rng(3)
    monitor = Monitor(Thresholds(windows=WINDOWS), lambda version: (NAMES, None), bootstrap_rows=3000)
    with caplog.at_level(logging.WARNING, logger="sluice.monitor"):
        sent = _stream(monitor, rng, 4, shift_from=int(2.5 * 86_400_000 / STEP_MS))
    assert "has no reference" in caplog.text
    assert monitor.windows["v1"].baseline.source == "stream"
    assert ("amount", "psi") in {(r["feature"], r["statistic"]) for _, r in sent}


def test_missing_batch_features_and_unseen_entities_are_shares_of_the_window(reference):
    rng = np.random.default_rng(4)
    known = EntitySet.from_keys([f"c{i}" for i in range(500)])
    monitor = _monitor(reference, batch_views={"profile": ["profile__age"]}, entities=lambda v: {"card_id": known})
    sent = _stream(monitor, rng, 2, missing_age=0.2)
    stats = {(r["feature"], r["statistic"]) for _, r in sent}
    # inferred from nulls (the records have no batch_missing): the view's features are all missing
    assert ("profile__age", "defaulted_share") in stats and ("profile__age", "missing_share") in stats
    assert ("card_id", "unseen_entity_share") not in stats
    sent = _stream(_monitor(reference, entities=lambda v: {"card_id": known}), rng, 2, card="new")
    assert ("card_id", "unseen_entity_share") in {(r["feature"], r["statistic"]) for _, r in sent}


def test_every_version_that_scored_a_record_gets_its_own_window(reference):
    rng = np.random.default_rng(5)
    monitor = _monitor(reference)
    _stream(monitor, rng, 0.2, scores=["v1", "v2"])
    assert set(monitor.windows) == {"v1", "v2"}
    assert monitor.windows["v2"].counts.total(monitor.windows["v2"].counts.newest).sum() > 0


def test_attribution_drift_is_the_ndcg_of_the_sampled_rows_ranking(reference):
    rng = np.random.default_rng(6)
    monitor = _monitor(reference)
    monitor.sample_rate = 0.05
    alerts = []
    for day in range(3):
        for start in range(0, 4320, 540):
            monitor.add_log(_records(rng, day * 4320 + start, 540), 0, 0.0)
            for version, buckets, rows in monitor.take_samples():
                # Training ranked amount far first; from the second day on the model leans on the count instead.
                weights = [0.001, 10.0, 0.0001] if day >= 1 else [1 / 10, 1 / 20, 1 / 10_000]
                monitor.add_contributions(version, buckets, rows * weights)
            alerts += monitor.judge(monitor.evaluate(0.0, 0), "now")
    ndcg = [r for r in alerts if r["statistic"] == "ndcg"]
    assert ndcg and ndcg[0]["value"] < 0.9 and ndcg[0]["feature"] == "attribution"


def test_memory_does_not_grow_with_events(reference):
    rng = np.random.default_rng(7)
    monitor = _monitor(reference)
    _stream(monitor, rng, 2)
    size = monitor.nbytes
    _stream(monitor, rng, 2)
    assert monitor.nbytes <= size


def test_event_times_parse_like_the_records_write_them():
    assert event_times_ms(["1970-01-01T00:00:01.500Z", "2026-11-01T00:00:00.000+00:00"]).tolist() == [1500, 1793491200000]


def test_versions_beyond_the_limit_are_dropped_least_recently_seen_first(reference):
    rng = np.random.default_rng(8)
    monitor = Monitor(Thresholds(windows=WINDOWS), lambda version: (NAMES, reference), max_versions=2)
    for version in ("v1", "v2", "v3"):
        monitor.add_log(_records(rng, 0, 100, version=version), 0, 0.0)
    assert set(monitor.windows) == {"v2", "v3"} and monitor.evicted == ["v1"]


def _judged_ends(checks, version: str) -> set[str]:
    return {c.window["end"] for c in checks if c.model_version == version}


def test_a_version_that_stops_serving_is_judged_up_to_its_last_complete_window_then_dropped(reference):
    rng = np.random.default_rng(9)
    monitor = _monitor(reference)
    monitor.deployed(1, ["v1", "v2"])  # v2 in shadow beside the champion
    monitor.deployed(2, ["v2"])  # promoted: v1 stops serving
    switch = 9000  # about two days of events; a multiple of the batch size
    checks = []
    for start in range(0, 2 * switch, 500):
        batch = _records(rng, start, 500, scores=["v1", "v2"] if start < switch else ["v2"])
        for r in batch:
            r["deployment"] = 1 if start < switch else 2
        monitor.add_log(batch, 0, now_s=0.0)
        checks += monitor.evaluate(0.0, 0)
    hour_ms = WINDOWS.sub_window_ms
    last_complete_end = (T0 + switch * STEP_MS) // hour_ms * hour_ms  # the sub-window holding the switch is not complete
    end_text = np.datetime_as_string(np.datetime64(last_complete_end, "ms"), unit="ms") + "Z"
    v1_ends = _judged_ends(checks, "v1")
    # Judged on full windows while it served, last on the one that ends where the switch's sub-window starts ...
    assert max(v1_ends) == end_text
    # Every window v1 was judged on held as many events as v2's (both scored every event until the switch).
    v2_events = {c.window["end"]: c.window["events"] for c in checks if c.model_version == "v2"}
    assert all(c.window["events"] == v2_events[c.window["end"]] for c in checks if c.model_version == "v1")
    # ... and never on a window that empties out after it; v2 goes on, v1's window (and gauges) are dropped.
    assert max(_judged_ends(checks, "v2")) > end_text
    assert "v1" not in monitor.windows and "v1" in monitor.evicted
    # A late record still scored by v1 (a partition that switched later) does not bring it back.
    late = _records(rng, switch, 10, scores=["v1", "v2"])
    for r in late:
        r["deployment"] = 1
    monitor.add_log(late, 0, now_s=0.0)
    assert "v1" not in monitor.windows


def test_without_deployment_records_every_version_seen_is_judged(reference):
    rng = np.random.default_rng(10)
    monitor = _monitor(reference)
    checks = []
    for start in range(0, int(1.5 * 86_400_000 / STEP_MS), 500):
        batch = _records(rng, start, 500, scores=["v1", "v2"])
        for r in batch:
            r["deployment"] = 0  # the worker's initial deployment: the model directory's champion, never a record
        monitor.add_log(batch, 0, now_s=0.0)
        checks += monitor.evaluate(0.0, 0)
    assert _judged_ends(checks, "v1") and _judged_ends(checks, "v1") == _judged_ends(checks, "v2")


def test_the_open_alerts_of_a_version_that_stopped_serving_close_once_with_the_reason(reference):
    rng = np.random.default_rng(11)
    monitor = _monitor(reference)
    monitor.deployed(1, ["v1", "v2"])
    monitor.deployed(2, ["v2"])
    switch = 9000
    sent = []
    for start in range(0, 2 * switch, 500):
        batch = _records(rng, start, 500, shift=1.0, scores=["v1", "v2"] if start < switch else ["v2"])
        for r in batch:
            r["deployment"] = 1 if start < switch else 2
        monitor.add_log(batch, 0, now_s=0.0)
        sent += monitor.judge(monitor.evaluate(0.0, 0), "now")
    opened = {(r["feature"], r["statistic"]) for r in sent if r["model_version"] == "v1" and r["kind"] == "alert"}
    closed = [r for r in sent if r["model_version"] == "v1" and r["kind"] == "recovery"]
    assert ("amount", "psi") in opened  # the drift was real while v1 served
    assert sorted((r["feature"], r["statistic"]) for r in closed) == sorted(opened)
    assert {r["reason"] for r in closed} == {"the version no longer serves"}
    assert not [k for k in monitor.book.open if k[0] == "v1"] and [k for k in monitor.book.open if k[0] == "v2"]
