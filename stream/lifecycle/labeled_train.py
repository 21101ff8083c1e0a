"""Training from what was served: the labeled dataset's rows, and the check that they are what offline computes.

`sluice train --from-labeled PATH` trains on the vectors the worker served
(every row of the `labeled` parquet dataset written by `sluice labeled-sink`),
so training and serving cannot disagree: zero skew by construction. The
same fit, threshold rule and metadata as `sluice train` (train.train, given
the frame). A row is used once its label is final: its label window closed
(the dataset's label clock, its latest label time, is past event time +
window), as `train.mature_rows` does for the history.
Rows served by a deployment that explored weigh 1/propensity (LightGBM
sample weights), blocks that were not let through nothing, so that the
blocks exploration let through stand for all of them (stream/lifecycle/ipw.py).

`skew` recomputes a sample of the rows with the offline path: the windowed
features with `features.offline` over the events the worker read, in the
order it read them (each prediction-log record carries its event and where
it was read), the batch features with Feast's point-in-time join; and counts
every value that differs from what was served (counts exactly, others
within 1e-9).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import SluiceError
from features.feast_repo import load_plan, open_store
from features.offline import compute_features, offset_col, partition_col
from stream.lifecycle.ipw import training_weights
from stream.lifecycle.label_join import JoinConfig
from stream.lifecycle.labeled import ROW_KINDS
from stream.lifecycle.train import TrainingFrame, batch_features, categorical_features, train

TOLERANCE = 1e-9


def read_dataset(path: str | Path, id_field: str) -> pd.DataFrame:
    """Each event's row (latest revision that carries the prediction) from a labeled parquet dataset."""
    path = Path(path)
    if not path.exists():
        msg = f"no labeled dataset at {path}; write one with `sluice labeled-sink --output {path}`"
        raise SluiceError(msg)
    frame = pd.read_parquet(path)
    # A correction of a label still waiting for its prediction carries no vector: not a row.
    frame = frame[frame["kind"].isin(ROW_KINDS) & frame["event_time"].notna()].copy()
    rank = frame["kind"].map({"unlabeled": 0, "joined": 1, "correction": 2}).astype(int)
    frame["_rank"] = frame["revision"].astype(np.int64) * 4 + rank
    frame = frame.sort_values([id_field, "_rank"], kind="stable").drop_duplicates(id_field, keep="last")
    return frame.drop(columns=["_rank"]).reset_index(drop=True)


def labeled_training_frame(repo_path: Path, service: str | None, path: str | Path) -> TrainingFrame:
    store = open_store(repo_path)
    plan = load_plan(store, service)
    rows = read_dataset(path, plan.schema.event_id)
    window = pd.Timedelta(milliseconds=JoinConfig.from_tags(plan.tags, plan.schema.event_id).window_ms)
    missing = [n for n in plan.vector if n not in rows]
    if missing:
        msg = f"labeled dataset {path} lacks features {missing[:3]} of {plan.service}; was it written for another FeatureService?"
        raise SluiceError(msg)
    cutoff = rows["label_time"].max()
    usable = rows["label"].notna() & (rows["event_time"] + window <= cutoff)
    rows = rows[usable]
    weight = None
    if "propensity" in rows and rows["propensity"].notna().any():
        weight = training_weights(
            rows["would_block"].fillna(False).to_numpy(bool), rows["explored"].fillna(False).to_numpy(bool),
            rows["propensity"].to_numpy(np.float64),
        )
        rows, weight = rows[weight > 0], weight[weight > 0]
    return TrainingFrame(
        rows[list(plan.vector)].astype("float64"), (rows["label"].to_numpy() >= 0.5).astype(int), rows["event_time"],
        plan, cutoff, window, categorical_features(store, plan), weight, order="served: the prediction log's vectors",
    )


def train_from_labeled(repo_path: str | Path, registry, path: str | Path, *, service: str | None = None, **kw):
    """Train on the served vectors of a labeled dataset (see the module docstring); train.train's keywords."""
    repo_path = Path(repo_path)
    frame = labeled_training_frame(repo_path, service, path)
    definition = (
        f"labels joined to the served vectors (labeled dataset {path}): the latest label of each event, rows whose "
        "label window had closed by the dataset's latest label time"
    )
    return train(repo_path, registry, service=service, frame=frame, label_definition=definition, **kw)


@dataclass
class SkewReport:
    rows: int
    values: int
    mismatches: int
    max_abs_diff: float
    examples: list = field(default_factory=list)


def events_frame(plan, log_records: list[dict]) -> pd.DataFrame:
    """The events of prediction-log records with where each stage read them (arrival columns)."""
    events = pd.DataFrame([r["event"] for r in log_records])
    events[plan.schema.timestamp_field] = pd.to_datetime(events[plan.schema.timestamp_field], utc=True, format="ISO8601")
    partition = np.array([r["arrival"][0][0] for r in log_records], dtype=np.int64)
    offset = np.array([r["arrival"][0][1] for r in log_records], dtype=np.int64)
    events[partition_col(0)], events[offset_col(0)] = partition, offset
    if len(plan.stages()) > 1:
        # Later stages fold in arrival order (features/arrival.py): (clock, partition, offset), the clock logged.
        clock = np.array([r.get("clock", 0) for r in log_records], dtype=np.int64)
        rank = np.empty(len(log_records), dtype=np.int64)
        rank[np.lexsort((offset, partition, clock))] = np.arange(len(log_records))
        for stage in range(1, len(plan.stages())):
            events[partition_col(stage)], events[offset_col(stage)] = 0, rank
    return events


def offline_vectors(repo_path: str | Path, events: pd.DataFrame, service: str | None = None) -> pd.DataFrame:
    """The vector of every event as the offline path computes it, indexed by event id, in FeatureService order."""
    store = open_store(Path(repo_path))
    plan = load_plan(store, service)
    offline = compute_features(plan, events)
    frame = pd.concat([offline.frame, batch_features(store, plan, events)], axis=1)
    frame.index = events[plan.schema.event_id].astype(str).to_numpy()
    return frame[list(plan.vector)]


def skew(plan, rows: pd.DataFrame, offline: pd.DataFrame, sample: int | None = None, seed: int = 0) -> SkewReport:
    """Compare served vectors (`rows`) with offline ones, on all rows or a seeded sample."""
    id_field = plan.schema.event_id
    if sample is not None and sample < len(rows):
        rows = rows.iloc[np.sort(np.random.default_rng(seed).choice(len(rows), sample, replace=False))]
    names = list(plan.vector)
    known = rows[id_field].astype(str).isin(offline.index).to_numpy()
    served = rows.loc[known, names].to_numpy(dtype=np.float64)
    computed = offline.loc[rows.loc[known, id_field].astype(str), names].to_numpy(dtype=np.float64)
    integral = np.array([_integral(plan, n) for n in names])
    both_nan = np.isnan(served) & np.isnan(computed)
    diff = np.abs(served - computed)
    bad = ~both_nan & (np.isnan(served) | np.isnan(computed) | np.where(integral, diff > 0, diff > TOLERANCE * np.maximum(1.0, np.abs(computed))))
    examples = [(str(rows.loc[known, id_field].iloc[i]), names[j], served[i, j], computed[i, j]) for i, j in zip(*np.nonzero(bad))][:5]
    missing = int((~known).sum())
    return SkewReport(
        rows=len(rows), values=int(bad.size), mismatches=int(bad.sum()) + missing * len(names),
        max_abs_diff=float(np.nanmax(np.where(both_nan, 0.0, diff))) if diff.size else 0.0, examples=examples,
    )


def _integral(plan, name: str) -> bool:
    return any(f"{v.name}__{a.name}" == name and a.function in ("count", "count_distinct") for v in plan.stream_views for a in v.aggs)
