"""The drift scenario's figures, from monitoring records: what counts as a false alarm and as the detection delay."""

from __future__ import annotations

import numpy as np

from fraud_demo.drift import LiveStream, figures

HOUR = 3_600_000


def _iso(ms: int) -> str:
    return np.datetime_as_string(np.datetime64(ms, "ms"), unit="ms") + "Z"


def _alert(feature: str, last_ms: int, kind: str = "alert", time: str = "event", statistic: str = "psi") -> dict:
    window = {"start": _iso(last_ms - 24 * HOUR), "end": _iso(last_ms), "events": 5000, "time": time}
    return {"kind": kind, "severity": "warning", "feature": feature, "statistic": statistic, "value": 0.2,
            "threshold": 0.1, "window": window, "last_event_time": _iso(last_ms)}


def test_alarms_before_the_switch_are_false_and_the_first_after_it_is_the_delay():
    t0 = 1_800_000_000_000
    event_ms = t0 + np.arange(0, 100 * HOUR, 60_000)  # one event a minute for 100 hours
    before = 60 * 60  # the switch after 60 hours
    live = LiveStream(payloads=[], event_ms=event_ms, switch_ms=int(event_ms[before]), before=before, attack_fraction=0.2)
    switch = live.switch_ms
    records = [
        _alert("amount", switch - 5 * HOUR),  # a window that ended before the switch: false
        _alert("amount", switch - 4 * HOUR, kind="recovery"),  # recoveries are not alarms
        _alert("all", 0, time="broker", statistic="dlq_rate"),  # broker time, before the switch's wall time
        _alert("score", switch + 10 * HOUR),
        _alert("amount", switch + 3 * HOUR),
        _alert("amount", switch + 20 * HOUR),
    ]
    line = figures(records, live, switch_wall=(switch + 1) / 1000)
    assert line["false_alarms"] == 2 and line["events_no_drift"] == before
    assert line["false_alarms_per_million"] == round(2 / before * 1e6, 2)
    assert line["first_alert_after_events"] == 3 * 60 + 1  # events at the switch .. 3 h after it, inclusive
    assert line["first_alert_after_s"] == 3 * 3600
    assert line["alerted_features"] == ["amount", "score"]
    assert line["first_alert_per_feature"]["score"]["events"] == 10 * 60 + 1
