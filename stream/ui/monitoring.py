"""What the drift monitor and the deployment topic say, as the status page shows them (pure: no Kafka).

The `monitoring` topic holds the monitor's alert and recovery records
(stream.monitor.alerts):

    {"kind": "alert" | "recovery", "severity", "level", "model_version", "feature", "statistic",
     "value", "threshold", "window": {"start", "end", "events", ...}, "first_event_time", "last_event_time", ...}

An alert is open from its "alert" record (an escalation replaces it) until
a "recovery" of the same (model version, feature, statistic). Drift values
over time come from the monitor's gauges instead, which hold every
statistic of the last judged window, and that window's bounds in event time
(`sluice_monitor_window_seconds`, as the alert records' `window`): values,
once two scrapes in a row agree on them, fill the column of their window in
a heat map (row: feature, one map per statistic; columns ordered and
labeled by event time, never by when they were scraped), the last
`MAX_WINDOWS` windows kept. Drift values without window bounds (a monitor
that does not export them) cannot be placed and are counted, not drawn.
The latest data-quality shares are kept as they are, one per (statistic,
feature, model version). The latest `deployments` record is the deployment state, shown as it
is (its shape belongs to the workers that act on it).
"""

from __future__ import annotations

import threading
import time

from stream.pipeline.events import parse_timestamp_ms

MAX_WINDOWS = 30
ALERT, RECOVERY = "alert", "recovery"
#: The monitor's gauges (stream/monitor/gauges.py), by the names they are exported under.
DRIFT_GAUGE = "sluice_drift_statistic"
QUALITY_GAUGE = "sluice_data_quality_ratio"
WINDOW_GAUGE = "sluice_monitor_window_seconds"


def alert_key(record: dict) -> tuple:
    return tuple(record.get(k) for k in ("model_version", "feature", "statistic"))


class MonitorBoard:
    """Open alerts and the deployment state, from their topics."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: dict[tuple, dict] = {}
        self.records = 0
        self.deployment: dict | None = None
        self.deployments = 0

    def add(self, record: dict) -> None:
        kind = record.get("kind")
        with self._lock:
            self.records += 1
            if kind == ALERT:
                self._open[alert_key(record)] = record
            elif kind == RECOVERY:
                self._open.pop(alert_key(record), None)

    def add_deployment(self, record: dict | None) -> None:
        """The latest deployments record (None for a tombstone: no state)."""
        with self._lock:
            self.deployments += 1
            self.deployment = record

    def snapshot(self) -> dict:
        with self._lock:
            alerts = sorted(self._open.values(), key=lambda r: (-int(r.get("level") or 0), str(r.get("feature"))))
            return {
                "records": self.records,
                "alerts": [{**a, "window_label": _alert_window(a)} for a in alerts],
                "deployment": self.deployment,
                "deployment_records": self.deployments,
            }


class MonitorGauges:
    """Drift per feature and event-time window, and the latest data-quality shares, from scrapes of the monitor's gauges."""

    def __init__(self):
        self._lock = threading.Lock()
        # statistic -> (start ms, end ms) -> {(feature, version): value}
        self._columns: dict[str, dict[tuple[int, int], dict[tuple, float]]] = {}
        self._quality: dict[tuple, float] = {}
        self._last_seen: dict[str, dict] = {}
        self.unplaced = 0  # drift values of the latest scrape without their window's bounds

    def add_scrape(self, t_ms: int, scrapes: dict[str, dict]) -> None:
        drift: dict[str, dict[tuple, float]] = {}
        bounds: dict[str, dict[str, float]] = {}
        quality: dict[tuple, float] = {}
        for scrape in scrapes.values():
            for name, labels, value, _ in scrape.get("samples") or ():
                version = labels.get("model_version", "")
                key = (labels.get("feature", ""), version)
                if name == DRIFT_GAUGE:
                    cells = drift.setdefault(labels.get("statistic", ""), {})
                    cells[key] = max(value, cells.get(key, value))  # two monitors of one group: the worse
                elif name == QUALITY_GAUGE:
                    quality[(labels.get("statistic", ""), *key)] = value
                elif name == WINDOW_GAUGE:
                    bounds.setdefault(version, {})[labels.get("bound", "")] = value
        windows = {v: _window_ms(b) for v, b in bounds.items()}
        with self._lock:
            self.unplaced = 0
            for statistic, cells in drift.items():
                placed: dict[tuple[int, int], dict[tuple, float]] = {}
                for key, value in cells.items():
                    window = windows.get(key[1])
                    if window is None:
                        self.unplaced += 1
                        continue
                    placed.setdefault(window, {})[key] = value
                # A scrape can land while the monitor is still setting a window's gauges one by one: values
                # count once two scrapes in a row agree on them (and on their windows).
                settled, self._last_seen[statistic] = self._last_seen.get(statistic) == placed, placed
                if not settled:
                    continue
                columns = self._columns.setdefault(statistic, {})
                for window, values in placed.items():
                    columns.setdefault(window, {}).update(values)
                for window in sorted(columns)[:-MAX_WINDOWS]:
                    del columns[window]
            if quality:
                self._quality = quality

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "heatmaps": {s: _heatmap(c) for s, c in sorted(self._columns.items())},
                "drift_unplaced": self.unplaced,
                "quality": [
                    {"statistic": s, "feature": f, "model_version": v, "value": x}
                    for (s, f, v), x in sorted(self._quality.items())
                ],
            }


def _alert_window(record: dict) -> str | None:
    """An alert's event-time window as the heat map labels its column; None if the record has no readable window."""
    window = record.get("window")
    try:
        return window_label(parse_timestamp_ms(window["start"]), parse_timestamp_ms(window["end"]))
    except (TypeError, KeyError, ValueError):  # Invalid is a ValueError: another writer's shape, shown as it is
        return None


def _window_ms(bounds: dict[str, float]) -> tuple[int, int] | None:
    if "start" not in bounds or "end" not in bounds:
        return None
    return round(bounds["start"] * 1000), round(bounds["end"] * 1000)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def window_label(start_ms: int, end_ms: int) -> str:
    """'2026-11-01 00:00:00 – 01:00:00' (UTC, event time); the end's date only when it differs, ms only when not 0."""
    def text(ms: int, with_date: bool) -> str:
        fmt = "%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S"
        return time.strftime(fmt, time.gmtime(ms // 1000)) + (f".{ms % 1000:03d}" if ms % 1000 else "")

    same_day = start_ms // 86_400_000 == (end_ms - 1) // 86_400_000
    return f"{text(start_ms, True)} – {text(end_ms, not same_day)}"


def _heatmap(columns: dict[tuple[int, int], dict[tuple, float]]) -> dict:
    windows = sorted(columns)
    keys = sorted({k for cells in columns.values() for k in cells})
    versions = {v for _, v in keys}
    rows = [f if len(versions) == 1 else f"{f} ({v})" for f, v in keys]
    return {
        "features": rows,
        "windows": [window_label(*w) for w in windows],
        "starts": [_iso(start) for start, _ in windows],
        "ends": [_iso(end) for _, end in windows],
        "z": [[columns[w].get(k) for w in windows] for k in keys],
    }
