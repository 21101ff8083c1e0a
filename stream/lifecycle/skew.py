"""Training/serving skew: served feature values against the offline values of the same events.

Each prediction-log record names where its event arrived (`arrival[0]`:
events partition and offset); the events archive holds the same message
at the same place. For every served event and windowed feature, the value
served is compared with the offline value computed from the archive two
ways:

* in **arrival order** (stream.lifecycle.archive_history): what serving
  did, so any difference is a bug or an event the archive lacks;
* in **event-time order** (the archive's events as a plain history): what
  training on a history without arrival times would have used. Its
  differences are the skew such a model was trained with.

A value differs as `sluice parity` judges it: counts exactly, other values
beyond 1e-9 both absolute and relative; missing against present differs.
The size of the differences (mean and 99th percentile of |served -
offline|) is taken over the values that differ and are both present.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from features.offline import compute_features, offset_col, partition_col
from features.spec import FeaturePlan

TOLERANCE = 1e-9


@dataclass(frozen=True)
class Differences:
    """How one feature's served values differ from one offline computation."""

    differing: int
    share: float  # differing / compared
    mean_abs: float | None  # over differing values that are both present; None if none
    p99_abs: float | None


@dataclass(frozen=True)
class FeatureSkew:
    feature: str
    stage: int
    compared: int
    arrival: Differences
    event_time: Differences


@dataclass
class SkewReport:
    records: int  # prediction-log records given
    compared: int  # of them, found in the archive
    missing: int  # records whose event is not in the archive (archive behind the log, or another topic)
    features: list[FeatureSkew]

    def as_dict(self) -> dict:
        return {"records": self.records, "compared": self.compared, "missing": self.missing,
                "features": [asdict(f) for f in self.features]}


def stream_features(plan: FeaturePlan) -> list[tuple[str, int]]:
    """(name, stage) of every windowed feature the vector holds, in vector order."""
    stage = {f"{v.name}__{a.name}": plan.stage_of(v) for v in plan.stream_views for a in v.aggs}
    return [(name, stage[name]) for name in plan.vector if name in stage]


def differences(served: np.ndarray, offline: np.ndarray, integral: bool) -> Differences:
    """Compare two float arrays (NaN: missing)."""
    n = len(served)
    s_nan, o_nan = np.isnan(served), np.isnan(offline)
    both = ~s_nan & ~o_nan
    diff = np.abs(np.where(both, served, 0.0) - np.where(both, offline, 0.0))
    if integral:
        value_differs = diff != 0.0
    else:
        rel = diff / np.maximum(np.abs(np.where(both, offline, 0.0)), 1e-300)
        value_differs = (diff > TOLERANCE) & (rel > TOLERANCE)
    differs = (s_nan != o_nan) | (both & value_differs)
    sizes = diff[both & value_differs]
    return Differences(
        differing=int(differs.sum()),
        share=float(differs.sum() / n) if n else 0.0,
        mean_abs=float(sizes.mean()) if len(sizes) else None,
        p99_abs=float(np.percentile(sizes, 99)) if len(sizes) else None,
    )


def served_rows(history: pd.DataFrame, records: list[dict]) -> np.ndarray:
    """Row position in `history` of each record's event, by (partition, offset) of its arrival; -1 if absent."""
    if not records:
        return np.zeros(0, dtype=np.int64)
    place = pd.MultiIndex.from_arrays([history["partition"].to_numpy(), history["offset"].to_numpy()])
    rows = pd.Series(np.arange(len(history)), index=place)
    rows = rows[~rows.index.duplicated()]
    wanted = pd.MultiIndex.from_tuples([tuple(r["arrival"][0]) for r in records])
    return rows.reindex(wanted).fillna(-1).to_numpy(dtype=np.int64)


def event_time_history(plan: FeaturePlan, history: pd.DataFrame) -> pd.DataFrame:
    """The same events as a plain history: no arrival columns, so they arrive in event-time order."""
    arrival = [c for s in range(len(plan.stages())) for c in (partition_col(s), offset_col(s))]
    return history.drop(columns=[c for c in arrival if c in history])


def skew(plan: FeaturePlan, history: pd.DataFrame, records: list[dict]) -> SkewReport:
    """Per windowed feature: served values in `records` against the archive `history` in arrival and event-time order."""
    rows = served_rows(history, records)
    found = rows >= 0
    rows = rows[found]
    kept = [r for r, ok in zip(records, found.tolist()) if ok]
    arrival = compute_features(plan, history).frame
    event_time = compute_features(plan, event_time_history(plan, history)).frame
    integral = {f"{v.name}__{a.name}": a.function in ("count", "count_distinct") for v in plan.stream_views for a in v.aggs}
    out = []
    for name, stage in stream_features(plan):
        served = np.array([_number(r["features"].get(name)) for r in kept], dtype=np.float64)
        out.append(FeatureSkew(
            name, stage, len(kept),
            differences(served, arrival[name].to_numpy(dtype=np.float64)[rows], integral[name]),
            differences(served, event_time[name].to_numpy(dtype=np.float64)[rows], integral[name]),
        ))
    return SkewReport(records=len(records), compared=len(kept), missing=int((~found).sum()), features=out)


def _number(value) -> float:
    return np.nan if value is None else float(value)


def table(report: SkewReport) -> list[str]:
    """The report as text lines: one per feature, shares differing and sizes for both orders."""
    head = f"{'feature':<34} {'stage':>5}  {'arrival: differ':>15} {'mean|d|':>9} {'p99|d|':>9}  {'event time: differ':>18} {'mean|d|':>9} {'p99|d|':>9}"
    lines = [head]
    for f in report.features:
        a, e = f.arrival, f.event_time
        lines.append(
            f"{f.feature:<34} {f.stage:>5}  {a.share:>15.2%} {_size(a.mean_abs):>9} {_size(a.p99_abs):>9}  "
            f"{e.share:>18.2%} {_size(e.mean_abs):>9} {_size(e.p99_abs):>9}"
        )
    return lines


def _size(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
