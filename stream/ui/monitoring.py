"""What the drift monitor and the deployment topic say, as the status page shows them (pure: no Kafka).

The `monitoring` topic holds the monitor's alert and recovery records
(stream.monitor.alerts):

    {"kind": "alert" | "recovery", "severity", "level", "model_version", "feature", "statistic",
     "value", "threshold", "window": {"start", "end", "events", ...}, "first_event_time", "last_event_time", ...}

An alert is open from its "alert" record (an escalation replaces it) until
a "recovery" of the same (model version, feature, statistic). Drift values
over time come from the monitor's gauges instead, which hold every
statistic of the last judged window: new values, once two scrapes in a row
agree on them, add a column to a heat map (row: feature, one map per statistic), the last
`MAX_WINDOWS` columns kept; the latest data-quality shares are kept as they
are. The latest `deployments` record is the deployment state, shown as it
is (its shape belongs to the workers that act on it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

MAX_WINDOWS = 30
ALERT, RECOVERY = "alert", "recovery"
#: The monitor's gauges (stream/monitor/gauges.py), by the names they are exported under.
DRIFT_GAUGE = "sluice_drift_statistic"
QUALITY_GAUGE = "sluice_data_quality_ratio"


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
                "alerts": [dict(a) for a in alerts],
                "deployment": self.deployment,
                "deployment_records": self.deployments,
            }


class MonitorGauges:
    """Drift per feature over time and the latest data-quality shares, from scrapes of the monitor's gauges."""

    def __init__(self):
        self._lock = threading.Lock()
        self._columns: dict[str, OrderedDict[int, dict[str, float]]] = {}
        self._quality: dict[tuple, float] = {}
        self._last_seen: dict[str, dict] = {}

    def add_scrape(self, t_ms: int, scrapes: dict[str, dict]) -> None:
        drift: dict[str, dict[tuple, float]] = {}
        quality: dict[tuple, float] = {}
        for scrape in scrapes.values():
            for name, labels, value, _ in scrape.get("samples") or ():
                key = (labels.get("feature", ""), labels.get("model_version", ""))
                if name == DRIFT_GAUGE:
                    cells = drift.setdefault(labels.get("statistic", ""), {})
                    cells[key] = max(value, cells.get(key, value))  # two monitors of one group: the worse
                elif name == QUALITY_GAUGE:
                    quality[(labels.get("statistic", ""), *key)] = value
        with self._lock:
            for statistic, cells in drift.items():
                # A scrape can land while the monitor is still setting a window's gauges one by one: values
                # become a column once two scrapes in a row agree on them.
                settled, self._last_seen[statistic] = self._last_seen.get(statistic) == cells, cells
                columns = self._columns.setdefault(statistic, OrderedDict())
                if not settled or (columns and next(reversed(columns.values())) == cells):
                    continue  # still changing, or the same window as last time
                columns[t_ms] = cells
                while len(columns) > MAX_WINDOWS:
                    columns.popitem(last=False)
            if quality:
                self._quality = quality

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "heatmaps": {s: _heatmap(c) for s, c in sorted(self._columns.items())},
                "quality": [
                    {"statistic": s, "feature": f, "model_version": v, "value": x}
                    for (s, f, v), x in sorted(self._quality.items())
                ],
            }


def _heatmap(columns: OrderedDict) -> dict:
    keys = sorted({k for cells in columns.values() for k in cells})
    versions = {v for _, v in keys}
    rows = [f if len(versions) == 1 else f"{f} ({v})" for f, v in keys]
    labels = [time.strftime("%H:%M:%S", time.gmtime(t // 1000)) + f".{t % 1000:03d}" for t in columns]  # scrape time, UTC
    return {"features": rows, "windows": labels, "z": [[cells.get(k) for cells in columns.values()] for k in keys]}
