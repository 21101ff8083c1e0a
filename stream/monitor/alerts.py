"""Alerts that open once, stay open while the condition holds, and close once with a recovery.

Each evaluated statistic (`Check`) goes through `AlertBook.observe`. A
crossing into a level (warning, critical) emits one "alert" record; the
same level crossed again in the next window emits nothing (a repeat of an
open alert is not news); a higher level emits an "alert" record for the
escalation. An alert closes only after the value has been back inside its
threshold by a margin (hysteresis) for `clear_after` evaluations in a row,
and then emits one "recovery" record: a value that hovers around the line
does not flap.

Records are plain dicts (JSON for the `monitoring` topic); `restore` reads
the open alerts back from them, so a restarted monitor does not re-send
what it had already sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.monitor.thresholds import ABOVE, Rule

ALERT, RECOVERY = "alert", "recovery"


@dataclass(frozen=True)
class Check:
    """One statistic of one window."""

    model_version: str | None
    feature: str
    statistic: str
    value: float
    reference: float | None  # the reference's value, for statistics compared to it (shares)
    window: dict  # {"start", "end", "events", "sub_windows"}
    first_event_time: str | None
    last_event_time: str | None
    floor: float = 0.0  # below this the value is sampling noise (stream.monitor.drift.noise_floor)

    @property
    def key(self) -> tuple:
        return (self.model_version, self.feature, self.statistic)


@dataclass
class _Open:
    level: int
    opened: dict  # the record that opened (or last escalated) it
    inside: int = 0  # evaluations in a row back inside, by the hysteresis margin


class AlertBook:
    def __init__(self, hysteresis: float = 0.2, clear_after: int = 3):
        self.hysteresis = hysteresis
        self.clear_after = clear_after
        self.open: dict[tuple, _Open] = {}

    def observe(self, check: Check, rule: Rule, emitted_at: str) -> dict | None:
        """The record to send for this check (an alert or a recovery), or None."""
        compared = check.value - (check.reference or 0.0) if rule.relative else check.value
        if rule.direction == ABOVE and check.value <= check.floor:
            compared = min(compared, 0.0)  # as large as noise makes it: no evidence of a shift
        level = rule.level(compared)
        held = self.open.get(check.key)
        if held is None:
            if level == 0:
                return None
            record = _record(ALERT, check, rule, level, emitted_at)
            self.open[check.key] = _Open(level, record)
            return record
        if level > held.level:
            record = _record(ALERT, check, rule, level, emitted_at, opened=held.opened)
            held.level, held.opened, held.inside = level, record, 0
            return record
        if not rule.clears(compared, held.level, self.hysteresis):
            held.inside = 0
            return None
        held.inside += 1
        lower = rule.level(compared)
        if lower > 0:
            # Back under this level but still over a lower one: stays open, quietly, at the lower level.
            if held.inside >= self.clear_after:
                held.level, held.inside = lower, 0
            return None
        if held.inside < self.clear_after:
            return None
        del self.open[check.key]
        return _record(RECOVERY, check, rule, 0, emitted_at, opened=held.opened)

    def close_version(self, version: str, emitted_at: str, reason: str) -> list[dict]:
        """One recovery record per open alert of `version`, which is no longer judged (it stopped serving)."""
        records = []
        for key in [k for k in self.open if k[0] == version]:
            opened = self.open.pop(key).opened
            record = {**opened, "kind": RECOVERY, "severity": None, "level": 0, "reason": reason, "emitted_at": emitted_at}
            record["opened"] = {k: opened[k] for k in ("severity", "value", "last_event_time", "emitted_at")}
            records.append(record)
        return records

    def restore(self, records) -> None:
        """Open alerts as the given records (oldest first, e.g. the `monitoring` topic) left them."""
        for record in records:
            if record.get("kind") not in (ALERT, RECOVERY):
                continue
            key = (record.get("model_version"), record.get("feature"), record.get("statistic"))
            if record["kind"] == RECOVERY:
                self.open.pop(key, None)
            else:
                self.open[key] = _Open(int(record.get("level", 1)), record)


def _record(kind: str, check: Check, rule: Rule, level: int, emitted_at: str, opened: dict | None = None) -> dict:
    severity, threshold = rule.levels[level - 1] if level else (None, rule.levels[0][1])
    if kind == RECOVERY and opened is not None:
        threshold = opened["threshold"]
    record = {
        "kind": kind,
        "severity": severity,
        "level": level,
        "model_version": check.model_version,
        "feature": check.feature,
        "statistic": check.statistic,
        "value": round(check.value, 6),
        "threshold": threshold,
        "direction": rule.direction,
        "reference": None if check.reference is None else round(check.reference, 6),
        "noise_floor": round(check.floor, 6),
        "window": check.window,
        "first_event_time": check.first_event_time,
        "last_event_time": check.last_event_time,
        "emitted_at": emitted_at,
    }
    if rule.relative:
        record["compared_to"] = "reference + threshold"
    if opened is not None:
        record["opened"] = {k: opened[k] for k in ("severity", "value", "last_event_time", "emitted_at")}
    return record
