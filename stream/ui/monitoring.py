"""The `monitoring` and `deployments` topics as the status page shows them (pure: no Kafka).

A monitoring record is one statistic of one feature (or of the score) over
one window of the prediction log:

    {"kind", "feature", "statistic", "value", "threshold", "window",
     "model_version", "first_event_time", "last_event_time", ...}

Each (kind, feature, statistic, model version) is one alert: a record past
its threshold opens it, a later record of the same alert back within it (or
one that says it recovered) closes it. Values become heat-map cells, a row
per feature and a column per window, one map per statistic; only the last
`MAX_WINDOWS` windows are kept, so memory follows features and statistics,
not time. The latest `deployments` record is the deployment state, shown as
it is (its shape belongs to the worker that acts on it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MAX_WINDOWS = 30
#: Words a record's `state` (or its `kind`) uses for an alert that is over.
RECOVERED = {"recovered", "recovery", "resolved", "ok", "closed"}
FIRING = {"firing", "open", "alert", "crossed", "crossing"}


def alert_key(record: dict) -> tuple[str, str, str, str]:
    return tuple(str(record.get(k, "")) for k in ("kind", "feature", "statistic", "model_version"))


def is_crossing(record: dict) -> bool:
    """True when the record says its alert is open, False when it says it is over."""
    state = str(record.get("state", "")).lower()
    if state in RECOVERED or str(record.get("kind", "")).lower() in RECOVERED:
        return False
    if state in FIRING:
        return True
    value, threshold = record.get("value"), record.get("threshold")
    if isinstance(value, int | float) and isinstance(threshold, int | float):
        return value > threshold
    return bool(record.get("alert", True))


def window_label(record: dict) -> str:
    window = record.get("window")
    if isinstance(window, str | int | float) and not isinstance(window, bool):
        return str(window)
    return str(record.get("last_event_time") or record.get("first_event_time") or "?")


class MonitorBoard:
    """Open alerts, heat maps of statistics per feature and window, and the deployment state."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: dict[tuple, dict] = {}
        self._maps: dict[str, OrderedDict[str, dict[str, float]]] = {}
        self._thresholds: dict[str, float] = {}
        self.records = 0
        self.deployment: dict | None = None
        self.deployments = 0

    def add(self, record: dict) -> None:
        with self._lock:
            self.records += 1
            key = alert_key(record)
            if is_crossing(record):
                self._open[key] = record
            else:
                self._open.pop(key, None)
            value, feature = record.get("value"), record.get("feature")
            if isinstance(value, int | float) and not isinstance(value, bool) and feature is not None:
                self._cell(str(record.get("statistic") or record.get("kind") or "value"), window_label(record), str(feature), float(value))
                if isinstance(record.get("threshold"), int | float):
                    self._thresholds[str(record.get("statistic") or record.get("kind") or "value")] = float(record["threshold"])

    def _cell(self, statistic: str, window: str, feature: str, value: float) -> None:
        windows = self._maps.setdefault(statistic, OrderedDict())
        if window not in windows:
            windows[window] = {}
            while len(windows) > MAX_WINDOWS:
                windows.popitem(last=False)
        windows[window][feature] = value

    def add_deployment(self, record: dict | None) -> None:
        """The latest deployments record (None for a tombstone: no state)."""
        with self._lock:
            self.deployments += 1
            self.deployment = record

    def snapshot(self) -> dict:
        with self._lock:
            alerts = sorted(self._open.values(), key=lambda r: str(r.get("last_event_time") or ""), reverse=True)
            return {
                "records": self.records,
                "alerts": [dict(a) for a in alerts],
                "heatmaps": {s: self._heatmap(s, w) for s, w in self._maps.items()},
                "deployment": self.deployment,
                "deployment_records": self.deployments,
            }

    def _heatmap(self, statistic: str, windows: OrderedDict) -> dict:
        features = sorted({f for cells in windows.values() for f in cells})
        labels = list(windows)
        z = [[windows[w].get(f) for w in labels] for f in features]
        return {"features": features, "windows": labels, "z": z, "threshold": self._thresholds.get(statistic)}
