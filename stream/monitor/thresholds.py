"""When a statistic alarms: defaults, per-statistic and per-feature overrides, and the windows.

Defaults come from the usual anchors: PSI 0.1 (moderate shift, "warning")
and 0.25 (significant, "critical"); Jensen-Shannon divergence 0.1 (bits);
L-infinity 0.1 for categorical columns; an attribution nDCG below 0.9
(SageMaker Clarify's line). Data quality alarms on absolute shares:
missing values 5 points above the reference's share, 5% of events with
defaulted batch features, 2% of values outside the training range, 5% of
events whose entity training never saw, 1% dead-lettered or late.

A file (YAML or JSON) overrides any of it:

    window: {sub_window_s: 3600, sub_windows: 24, min_events: 2000}
    statistics:
      psi: {warning: 0.15, critical: 0.3}
    features:
      card_merchant_txn__card_merchant_count_30d:
        psi: {critical: 0.4}
        missing_share: off
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from features.errors import SluiceError

ABOVE, BELOW = "above", "below"
SEVERITIES = ("warning", "critical")


class ThresholdsError(SluiceError):
    """A thresholds file Sluice cannot use."""


@dataclass(frozen=True)
class Rule:
    """Levels (severity, threshold), in the order they are reached; `relative`: compared to value - reference."""

    levels: tuple[tuple[str, float], ...]
    direction: str = ABOVE
    relative: bool = False

    def level(self, value: float) -> int:
        """0 (fine) or 1 + the index of the highest level crossed."""
        crossed = 0
        for i, (_, threshold) in enumerate(self.levels):
            if (value > threshold) if self.direction == ABOVE else (value < threshold):
                crossed = i + 1
        return crossed

    def clears(self, value: float, level: int, hysteresis: float) -> bool:
        """Whether `value` is far enough back inside level `level`'s threshold to leave it."""
        threshold = self.levels[level - 1][1]
        if self.direction == ABOVE:
            return value < threshold * (1 - hysteresis)
        return value > threshold + (1 - threshold) * hysteresis


def _rule(*levels: tuple[str, float], direction: str = ABOVE, relative: bool = False) -> Rule:
    return Rule(tuple(levels), direction, relative)


DEFAULT_RULES: dict[str, Rule] = {
    "psi": _rule(("warning", 0.1), ("critical", 0.25)),
    "js": _rule(("critical", 0.1)),
    "linf": _rule(("critical", 0.1)),
    "ndcg": _rule(("critical", 0.9), direction=BELOW),
    "missing_share": _rule(("critical", 0.05), relative=True),
    "defaulted_share": _rule(("critical", 0.05)),
    "out_of_range_share": _rule(("critical", 0.02)),
    "unseen_entity_share": _rule(("critical", 0.05)),
    "dlq_rate": _rule(("critical", 0.01)),
    "late_rate": _rule(("critical", 0.01)),
}


@dataclass(frozen=True)
class Windows:
    """Sliding windows of event time, and what a window needs before it is judged.

    A day of sub-windows by default: traffic with a daily cycle looks the
    same in every full day, where an hour's window would drift with the
    clock (see the README's false-alarm figures).
    """

    sub_window_s: float = 3600.0
    sub_windows: int = 24
    min_events: int = 2000  # events in a window before its statistics are judged
    min_attribution_rows: int = 100  # sampled rows (with contributions) before the nDCG is judged
    alpha: float = 0.01  # family-wise: chance that any statistic of an evaluation exceeds its noise floor by chance
    hysteresis: float = 0.2  # an open alert closes once its value is this far back inside the threshold
    clear_after: int = 3  # ... for this many evaluations in a row
    rates_sub_window_s: float = 60.0  # DLQ and late rates: sub-windows of broker time
    rates_sub_windows: int = 10
    min_outcomes: int = 1000  # outcomes in a rate window before it is judged

    @property
    def sub_window_ms(self) -> int:
        return int(self.sub_window_s * 1000)


@dataclass(frozen=True)
class Thresholds:
    windows: Windows = field(default_factory=Windows)
    rules: dict[str, Rule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    features: dict[str, dict[str, Rule | None]] = field(default_factory=dict)  # None: off for that feature

    def rule(self, feature: str | None, statistic: str) -> Rule | None:
        own = self.features.get(feature or "", {})
        if statistic in own:
            return own[statistic]
        return self.rules.get(statistic)

    @classmethod
    def load(cls, path: str | Path | None) -> Thresholds:
        if path is None:
            return cls()
        path = Path(path)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else _yaml(text)
        except (OSError, ValueError) as exc:
            msg = f"cannot read the thresholds file {path}: {exc}; fix it or leave --thresholds out for the defaults"
            raise ThresholdsError(msg) from exc
        return cls.from_dict(data or {}, str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str = "thresholds") -> Thresholds:
        unknown = set(data) - {"window", "statistics", "features"}
        if unknown:
            raise ThresholdsError(f"{where}: unknown sections {sorted(unknown)}; expected window, statistics, features")
        try:
            windows = replace(Windows(), **(data.get("window") or {}))
        except TypeError as exc:
            raise ThresholdsError(f"{where}: window: {exc}; see stream/monitor/thresholds.py Windows") from exc
        rules = dict(DEFAULT_RULES)
        for statistic, spec in (data.get("statistics") or {}).items():
            rules[statistic] = _override(rules.get(statistic), spec, f"{where}: statistics.{statistic}")
        features = {}
        for feature, specs in (data.get("features") or {}).items():
            features[feature] = {
                s: _override(rules.get(s), spec, f"{where}: features.{feature}.{s}") for s, spec in (specs or {}).items()
            }
        return cls(windows, rules, features)


def _override(base: Rule | None, spec, where: str) -> Rule | None:
    if spec is False or spec == "off" or spec is None:
        return None
    if base is None:
        raise ThresholdsError(f"{where}: unknown statistic; known: {sorted(DEFAULT_RULES)}")
    if not isinstance(spec, dict) or not set(spec) <= set(SEVERITIES):
        raise ThresholdsError(f"{where}: expected {{warning: x, critical: y}} (either or both), or off")
    levels = dict(base.levels)
    for severity in SEVERITIES:
        if severity in spec:
            levels[severity] = float(spec[severity])
    order = [s for s in SEVERITIES if s in levels]
    return Rule(tuple((s, levels[s]) for s in order), base.direction, base.relative)


def _yaml(text: str):
    import yaml

    return yaml.safe_load(text)
